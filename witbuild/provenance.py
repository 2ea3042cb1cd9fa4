"""Which code made an output: witbuild's version and, run from a git checkout of witbuild itself, its commit and
whether tracked files were changed since. A version number alone names every commit of a development tree, so
two experiments, builds or training runs could not be told apart by the code that made them."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from witbuild import __version__

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def code_revision() -> dict[str, str | bool]:
    """``{"version": …}``, with ``commit`` and ``modified`` when witbuild runs from its own git checkout (an
    installed copy inside some other repository must not take that repository's commit)."""
    out: dict[str, str | bool] = {"version": __version__}
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE_ROOT:
        return out
    commit = _git("rev-parse", "HEAD")
    if commit:
        out["commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        out["modified"] = bool(status)
    return out


def describe(revision: dict[str, str | bool]) -> str:
    """``0.1.0 (c8e7c50)``, ``0.1.0 (c8e7c50, modified)`` or ``0.1.0``, for reports."""
    commit = revision.get("commit")
    if not commit:
        return str(revision.get("version", "unknown"))
    return f"{revision['version']} ({str(commit)[:7]}{', modified' if revision.get('modified') else ''})"
