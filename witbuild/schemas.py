"""Table schemas, loaded from ``schemas/*.json`` so that Arrow and Spark never disagree.

The JSON files are the single source of truth; both the pyarrow schema and the Spark
``StructType`` are generated from them here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

SCHEMA_DIR = Path(__file__).resolve().parent / "schema_files"
if not SCHEMA_DIR.is_dir():  # running from a source checkout: schemas/ at the repository root
    SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _arrow_type(spec: str) -> pa.DataType:
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(_arrow_type(spec[5:-1]))
    try:
        return _SCALARS[spec]
    except KeyError:
        raise ValueError(f"unknown field type {spec!r}; known: {sorted(_SCALARS)} and list<T>") from None


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    nullable: bool
    description: str


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    description: str
    fields: tuple[Field, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def arrow(self) -> pa.Schema:
        return pa.schema(
            [pa.field(f.name, _arrow_type(f.type), nullable=f.nullable) for f in self.fields],
            metadata={"witbuild.table": self.name, "witbuild.version": str(self.version)},
        )

    def spark(self) -> Any:
        """The Spark ``StructType`` (imported lazily: pure code must not need pyspark)."""
        from pyspark.sql.pandas.types import from_arrow_schema

        return from_arrow_schema(self.arrow())

    def empty_table(self) -> pa.Table:
        return self.arrow().empty_table()

    def table(self, columns: dict[str, list]) -> pa.Table:
        """Build a table from python lists, in schema order, with the schema's types."""
        missing = set(self.names) - set(columns)
        if missing:
            raise ValueError(f"{self.name}: missing columns {sorted(missing)}")
        return pa.table({n: columns[n] for n in self.names}, schema=self.arrow())


@cache
def load(name: str) -> TableSchema:
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no schema named {name!r} in {SCHEMA_DIR}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    own = tuple(
        Field(f["name"], f["type"], bool(f.get("nullable", True)), f.get("description", ""))
        for f in raw["fields"]
    )
    # "extends": a table that is another one plus columns (each stage adds its own)
    fields = (load(raw["extends"]).fields if raw.get("extends") else ()) + own
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate field names")
    for f in fields:
        _arrow_type(f.type)
    return TableSchema(raw["name"], int(raw["version"]), raw.get("description", ""), fields)


def available() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))
