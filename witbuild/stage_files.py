"""What a finished stage wrote, so that a re-run notices when its output changed on disk since.

A fingerprint says what a stage was made from; it cannot say that a part file was deleted, a tar truncated or a
file added by hand since, and Spark would read such a folder without a word (fewer or more rows, from then on in
every later stage). So a stage's folder keeps ``_files.json``: every file in it, with its size, written when the
stage has finished. Sizes, not contents: hashing a dataset on every start would cost more than building it, and
what goes wrong by hand (a deleted, truncated, added or replaced-by-another-size file) changes the listing.
"""

from __future__ import annotations

import json

from witbuild import layout
from witbuild.fingerprint import listed_names, size_differences
from witbuild.spark import fs_and_path

#: Files a run may rewrite in a finished stage (an adopted stage's fingerprint, this listing itself).
UNLISTED = (layout.FINGERPRINT_FILE, layout.FILES_FILE)


def output_files(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (relative path → size in bytes) but those in :data:`UNLISTED`."""
    fs, root = fs_and_path(folder)
    root = root.rstrip("/")
    found: dict[str, int] = {}
    for path, info in fs.find(root, detail=True).items():
        rel = path.rstrip("/")[len(root) + 1:]
        if rel and rel not in UNLISTED:
            found[rel] = int(info.get("size") or 0)
    return dict(sorted(found.items()))


def write_listing(folder: str) -> None:
    fs, root = fs_and_path(folder)
    with fs.open(f"{root.rstrip('/')}/{layout.FILES_FILE}", "w") as fh:
        json.dump(output_files(folder), fh, indent=0)


def read_listing(folder: str) -> dict[str, int] | None:
    """The listing written when the stage finished; None when it has none (made before listings, or unreadable)."""
    fs, root = fs_and_path(folder)
    try:
        with fs.open(f"{root.rstrip('/')}/{layout.FILES_FILE}", "r") as fh:
            listed = json.load(fh)
    except (OSError, ValueError):
        return None
    return {str(k): int(v) for k, v in listed.items()} if isinstance(listed, dict) else None


def listing_changes(listed: dict[str, int], now: dict[str, int]) -> list[str]:
    """How the files on disk differ from the listing, for people: ``2 files missing since it finished: a, b``."""
    added, missing, resized = size_differences(listed, now)
    return [f"{len(names):,} file{'s' if len(names) > 1 else ''} {what} since it finished: {listed_names(names)}"
            for what, names in (("missing", missing), ("added", added), ("of another size", resized)) if names]
