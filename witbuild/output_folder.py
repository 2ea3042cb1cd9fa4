"""Whether a local folder can be made or written where a command is told to write: checked before any work, so
that a path that is a file, or under one, is an error naming it rather than a failure after hours."""

from __future__ import annotations

import os
from pathlib import Path


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """What stops ``path`` being used as an output folder (``"<path> is a file, which is not a folder"``, ...), or
    None. The nearest folder that exists is the one checked: the rest of the path is made later."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            return f"{folder} is a file, which is not a folder"
        return f"{folder} cannot be made: {existing} is a file, which is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{folder} cannot be written: no write permission in {existing}"
    return None
