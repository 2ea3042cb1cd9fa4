"""Outputs name the code that made them: a version number alone names every commit of a development tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from witbuild import provenance
from witbuild.provenance import code_revision, describe


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_checkout_names_its_commit() -> None:
    rev = code_revision()
    root = Path(provenance.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("witbuild does not run from a git checkout here")
    assert rev["commit"] == _git(root, "rev-parse", "HEAD")
    assert rev["modified"] is bool(_git(root, "status", "--porcelain", "--untracked-files=no"))


def test_an_installed_copy_inside_another_repository_takes_no_commit(tmp_path: Path, monkeypatch) -> None:
    """witbuild installed into a virtual environment inside a user's own project: that project's commit is not
    witbuild's."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-q", "--allow-empty", "-m", "x")
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(provenance, "SOURCE_ROOT", site)
    code_revision.cache_clear()
    try:
        assert code_revision() == {"version": provenance.__version__}
    finally:
        code_revision.cache_clear()


def test_describe() -> None:
    assert describe({"version": "0.1.0"}) == "0.1.0"
    assert describe({"version": "0.1.0", "commit": "0123456789ab", "modified": False}) == "0.1.0 (0123456)"
    assert describe({"version": "0.1.0", "commit": "0123456789ab", "modified": True}) == "0.1.0 (0123456, modified)"
