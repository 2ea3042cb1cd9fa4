"""YAML config files with ``--set key.sub=value`` overrides: shared by the build's and the trainer's configs.

Every problem in them is a :class:`ConfigError` (a ``ValueError``) of one line, which the command lines print as
``error: ...``: a YAML syntax error, a key given twice in one mapping (YAML loaders keep the last one silently, so
``balance: {t: 50}`` followed by a second ``balance:`` section would drop the cap), or a setting pydantic rejects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config that cannot be read or is not valid; the message is one line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key: the base loader's own error, as YAML's
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key].line + 1}); "
                    "only one would be kept", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML, duplicate keys refused; a :class:`ConfigError` naming ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = " ".join(str(exc.problem or exc).split())
        what = "" if isinstance(exc, yaml.constructor.ConstructorError) else "invalid YAML "
        return f"{what}at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return "invalid YAML: " + " ".join(str(exc).split())


def first_error(exc: ValidationError) -> str:
    """pydantic's first complaint on one line: ``where: what`` (and how many more there are)."""
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    msg = e["msg"].removeprefix("Value error, ")  # a validator's own words
    return f"{where + ': ' if where else ''}{msg}{more}"


def validate(model: type[BaseModel], raw: dict[str, Any], where: str = "config") -> Any:
    """``model.model_validate(raw)``, a :class:`ConfigError` of one line when it fails."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {first_error(exc)}") from None


#: A section whose keys are Spark's own dotted names: what follows it in a ``--set`` key is one key, since one Spark
#: setting's name can begin another's (``spark.locality.wait`` and ``spark.locality.wait.node``).
FLAT_KEYED = ("spark", "conf")


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    n = len(FLAT_KEYED)
    for i in range(len(keys) - n):
        if tuple(keys[i:i + n]) == FLAT_KEYED:
            keys = [*keys[:i + n], ".".join(keys[i + n:])]
            break
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def read_raw_config(path: str | Path | None, sets: list[str] | None = None,
                    drop: tuple[str, ...] = ("witbuild_version",)) -> dict[str, Any]:
    """A YAML mapping (optional) with ``--set key.sub=value`` overrides (values parsed as YAML) applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        if not p.is_file():
            raise ConfigError(f"{p}: not a config file (a folder?)")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot be read: {exc}") from None
        loaded = load_yaml(text, str(p)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the config must be a mapping")
        for key in drop:
            loaded.pop(key, None)
        raw = loaded
    apply_sets(raw, sets)
    return raw


def apply_sets(raw: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), load_yaml(value, f"--set {key.strip()}"))
    return raw
