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
VERSIONS = {"open_clip_torch": "3.3.0", "clip_benchmark": "1.6.1"}  # as the Makefile pins them


def wheel(dist: str) -> Path:
    """The downloaded wheel of ``dist`` (its file-name spelling, e.g. ``open_clip_torch``) at its pinned version."""
    found = sorted(REFERENCE.glob(f"{dist}-{VERSIONS[dist]}-*.whl"))
    if not found:
        pytest.fail(f"no {dist} {VERSIONS[dist]} wheel in {REFERENCE}: run `make install` (it downloads the "
                    "reference wheels)")
    return found[0]


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


def open_clip_models(dest: Path) -> ModuleType:
    """open_clip's ``model`` module (its ``CLIP`` class, the real one) from the wheel, imported as a package
    ``open_clip_reference`` without running the package's ``__init__`` (which imports torchvision's transforms).
    Its ``utils`` imports torchvision's ``FrozenBatchNorm2d``, used only to freeze ResNet towers: while it is
    imported, a placeholder class stands in under that name, and no ``torchvision`` stays in ``sys.modules``."""
    name = "open_clip_reference"
    if f"{name}.model" in sys.modules:
        return sys.modules[f"{name}.model"]
    with zipfile.ZipFile(wheel("open_clip_torch")) as zf:
        zf.extractall(dest, [m for m in zf.namelist()
                             if m.startswith("open_clip/") and m.endswith((".py", ".json", ".gz"))])
    package = ModuleType(name)
    package.__path__ = [str(dest / "open_clip")]
    sys.modules[name] = package
    placeholder = {n: ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    placeholder["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    saved = {n: sys.modules.get(n) for n in placeholder}
    sys.modules.update(placeholder)
    try:
        return importlib.import_module(f"{name}.model")
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module
