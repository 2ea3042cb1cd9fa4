"""Modules of reference packages read from their wheels as published, not installed.

``make install`` downloads the wheels (``pip download --no-deps``) into the environment's ``reference/`` folder.
They are loaded one file at a time: open_clip's package imports torchvision at import time, and installing that
would pull another torch build; the files used here need only what the environment has.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REFERENCE = Path(sys.prefix) / "reference"


def wheel(dist: str) -> Path:
    """The one downloaded wheel of ``dist`` (its file-name spelling, e.g. ``open_clip_torch``)."""
    found = sorted(REFERENCE.glob(f"{dist}-*.whl"))
    if not found:
        pytest.fail(f"no {dist} wheel in {REFERENCE}: run `make install` (it downloads the reference wheels)")
    return found[-1]


def extract(dist: str, members: list[str], dest: Path) -> dict[str, Path]:
    """Write ``members`` (paths inside the wheel) under ``dest``; their paths by member."""
    out = {}
    with zipfile.ZipFile(wheel(dist)) as zf:
        for name in members:
            out[name] = Path(zf.extract(name, dest))
    return out


def load_module(path: Path, name: str) -> ModuleType:
    """Import one source file as module ``name`` (registered, so relative imports of its package resolve)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
