"""YAML config files with ``--set key.sub=value`` overrides: shared by the build's and the trainer's configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def read_raw_config(path: str | Path | None, sets: list[str] | None = None,
                    drop: tuple[str, ...] = ("witbuild_version",)) -> dict[str, Any]:
    """A YAML mapping (optional) with ``--set key.sub=value`` overrides (values parsed as YAML) applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: the config must be a mapping")
        for key in drop:
            loaded.pop(key, None)
        raw = loaded
    apply_sets(raw, sets)
    return raw


def apply_sets(raw: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return raw
