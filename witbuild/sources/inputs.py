"""Input files of a build: globs and folders expanded, missing paths reported before Spark starts."""

from __future__ import annotations

import glob as _glob
import logging
import os

import fsspec

from witbuild.config import WARC_SUFFIXES
from witbuild.layout import local_path

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input the user named does not exist (raised before any Spark work starts)."""


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(WARC_SUFFIXES)


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by paths, globs or folders (WARC/WAT files inside), in a stable order.

    Local paths come back as plain paths, remote ones with their protocol. Every missing
    path or empty glob is reported together in one :class:`InputError`.
    """
    files: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        if pattern.startswith(("http://", "https://")):
            files.append(pattern)  # HTTP has no listing; a missing file is counted at read time
            continue
        path = local_path(pattern)  # a local file named with "::" is a name, not a chain of URLs
        fs, path = (fsspec.filesystem("file"), path) if path is not None else fsspec.core.url_to_fs(pattern)
        local = fs.protocol in ("file", "local") or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else ())
        unstrip = (lambda p: p) if local else fs.unstrip_protocol
        plain = local and pattern == path  # a local path as the user spelt it (not file:…)
        if plain:
            path = os.path.normpath(path)  # "web/./a", "web//a" and "web/a/" are one name, in every fingerprint
        if _has_magic(path):
            found = sorted(_glob.glob(path)) if local else sorted(fs.glob(path))
            found = [f for f in found if fs.isfile(f)]
            if not found:
                missing.append(f"{pattern} (the glob matches no file)")
            files.extend(unstrip(f) for f in found)
        elif fs.isdir(path):
            found = sorted(f for f in fs.find(path) if _is_archive(f))
            if not found:
                missing.append(f"{pattern} (a folder without .warc/.warc.gz/.wat.gz files)")
            if plain:  # under the folder as it was named: a relative folder stays relative (a fresh clone elsewhere)
                found = [os.path.join(path, os.path.relpath(f, os.path.abspath(path))) for f in found]
            files.extend(unstrip(f) for f in found)
        elif fs.exists(path):
            files.append(path if plain else pattern if local else unstrip(path))
        else:
            missing.append(pattern)
    if missing:
        raise InputError("input not found: " + "; ".join(missing))
    return _once_each(files)


def _identity(name: str) -> object:
    """What makes two names one file: a local file's device and inode (a symlinked folder, a hard link, ``a/../a``,
    ``file://`` and a relative and an absolute path all name it), else the name."""
    path = local_path(name)  # file:///x and file:/x are the local /x
    if path is None:
        return name
    try:
        st = os.stat(path)
    except OSError:
        return name
    return (st.st_dev, st.st_ino)


def _once_each(files: list[str]) -> list[str]:
    """Each file once, under the first name it was given by: read twice, its pairs would count twice in every
    stage's funnel (dedup would hide the copies, not the inflated counts)."""
    seen: dict[object, str] = {}
    unique = []
    for f in files:
        key = _identity(f)
        if key in seen:
            if seen[key] != f:
                log.warning("input %s is the same file as %s: read once", f, seen[key])
            continue
        seen[key] = f
        unique.append(f)
    return unique
