"""Whether a local folder can be made or written where a command is told to write: checked before any work, so
that a path that is a file, or under one, is an error naming it rather than a failure after hours."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO


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


#: errnos of a filesystem without POSIX locks (NFS without lockd, some FUSE mounts)
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class LockHeld(Exception):
    """Another process holds the lock; ``holder``: the pid it wrote, when it wrote one."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder if holder.isdigit() else ""


def take_lock(fh: IO[str]) -> bool:
    """An exclusive POSIX lock (``lockf``) on the open lock file ``fh``, this process's pid written in it: True;
    False where the filesystem has no locks; LockHeld where another process holds it; OSError otherwise. The
    kernel drops the lock when its holder ends, however it ends (kill -9 too), so no stale lock is left."""
    import fcntl

    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in NO_LOCKS:
            return False
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        fh.seek(0)
        raise LockHeld(fh.read().strip()) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return True
