"""The evaluation images of ``dedup.decontaminate``, and which samples they contaminate.

A sample is contaminated by an evaluation image on finalize's own near-duplicate rule: its pHash within
``dedup.phash_threshold`` bits of the image's AND, with ``dedup.colour_check`` on, their 16×16 thumbnails passing
the colour check (:class:`~witbuild.dedup.near.ColourLimits`). pHash alone sees grey levels: a blue star is not a
copy of a red star of the same outline, and removing it would remove a distinct image.

Web images are hashed as the download stored them, resized and re-encoded; an evaluation image hashed at full
size lands a few bits from its own stored copy (exact copies missed at threshold 2), so each one goes first
through the resize the download applies (:func:`stored_as_downloaded`).

The folder is read by :func:`read_eval_set`, a pure function that finalize calls; :func:`check_eval_folder` runs
the same check before Spark starts: a folder with no readable image is an input error then, not a failure after
the downloads.
Files that are not readable images are skipped, named in a warning and counted. Symlinked subfolders are walked
(:func:`walk_files`), each once per path, a link back to one of its own ancestors not at all.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from witbuild.dedup.near import ColourLimits, colour_diffs, image_signature
from witbuild.dedup.phash import as_uint64, hamming_array, near_any
from witbuild.sources.inputs import InputError

if TYPE_CHECKING:
    from witbuild.download import DownloadConfig

log = logging.getLogger(__name__)

NAMED_SKIPS = 20  # skipped files named in the warning (the count covers all)
VERIFY_CHUNK = 1 << 22  # (sample, evaluation image) distances computed at once


@dataclass(frozen=True)
class EvalSet:
    """The readable images of an evaluation folder: pHashes (uint64), thumbnails and relative names, in name
    order; ``skipped``, the files that are not readable images."""

    hashes: np.ndarray
    thumbs: list[bytes]
    names: list[str]
    skipped: list[str]


def walk_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under folder ``root``, sorted, symlinked folders followed: ``Path.rglob`` does not follow them,
    so a folder linked into the evaluation set would be left out without a word. A link to one of its own
    ancestors (a cycle) is not entered."""
    out: list[Path] = []
    _walk(Path(root), frozenset(), out)
    return sorted(out)


def _walk(folder: Path, ancestors: frozenset[str], out: list[Path]) -> None:
    real = os.path.realpath(folder)
    if real in ancestors:
        log.warning("%s: a link back to a folder that holds it: not followed", folder)
        return
    inside = ancestors | {real}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = folder / entry.name
        if entry.is_dir(follow_symlinks=True):
            _walk(path, inside, out)
        elif entry.is_file(follow_symlinks=True):
            out.append(path)


def stored_as_downloaded(cfg: DownloadConfig) -> Callable[[bytes], bytes]:
    """The function giving an image's bytes as the download would store them: img2dataset's resizer with the
    build's size, mode and encoding, after the same 8-bit, CMYK, orientation and colour-profile handling.

    The size filters (``min_image_size``, ``max_aspect_ratio``, the memory budget) are left out: they decide
    whether a web image is kept, not how it looks, and an evaluation image is never dropped. An image the
    resizer cannot handle is hashed as it is (logged)."""
    from img2dataset.resizer import Resizer

    from witbuild.as_shown import AsShownResizer
    from witbuild.bit_depth import EightBitResizer
    from witbuild.colour_profile import CmykResizer

    resizer: Any = EightBitResizer(Resizer(image_size=cfg.image_size, resize_mode=cfg.resize_mode,
                                           resize_only_if_bigger=cfg.resize_only_if_bigger,
                                           encode_quality=cfg.encode_quality, encode_format=cfg.encode_format))
    if cfg.srgb:
        resizer = CmykResizer(resizer)
    if cfg.upright or cfg.srgb:
        resizer = AsShownResizer(resizer, cfg.encode_format, cfg.encode_quality, upright=cfg.upright, srgb=cfg.srgb)

    def store(data: bytes) -> bytes:
        try:
            stored, *_, error = resizer(io.BytesIO(data))
        except Exception as exc:  # img2dataset catches its own; a wrapper's surprise must not lose the image
            stored, error = None, f"{type(exc).__name__}: {exc}"
        if stored is None or error is not None:
            log.debug("evaluation image not resized as the download would (%s): hashed as it is", error)
            return data
        return stored

    return store


def read_eval_set(folder: str, stored: Callable[[bytes], bytes] | None = None) -> EvalSet:
    """The evaluation images of ``folder`` (:class:`EvalSet`), each passed through ``stored`` (how the download
    stores an image, :func:`stored_as_downloaded`; None: as they are) and signed as the downloads are.

    Raises :class:`~witbuild.sources.inputs.InputError` with a one-line message when ``folder`` is not a folder
    or holds no readable image; other unreadable files are skipped with a warning naming them."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"dedup.decontaminate: not a folder of images: {folder}")
    names, hashes, thumbs, skipped = [], [], [], []
    for path in walk_files(root):
        name = str(path.relative_to(root))
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.debug("%s: %s", path, exc)
            skipped.append(name)
            continue
        signature = image_signature(stored(data) if stored is not None else data)
        if signature is None:
            skipped.append(name)
            continue
        names.append(name)
        hashes.append(signature[0])
        thumbs.append(signature[1])
    if skipped:
        shown = ", ".join(skipped[:NAMED_SKIPS]) + (", …" if len(skipped) > NAMED_SKIPS else "")
        log.warning("dedup.decontaminate: %d file(s) in %s are not readable images, skipped: %s", len(skipped),
                    folder, shown)
    if not hashes:
        raise InputError(f"dedup.decontaminate: no readable image in {folder} ({len(skipped)} files skipped)")
    return EvalSet(np.array(hashes, dtype=np.uint64), thumbs, names, skipped)


def check_eval_folder(folder: str) -> None:
    """Raise :class:`~witbuild.sources.inputs.InputError` (one line) unless ``folder`` is a folder with a readable
    image, before Spark starts: finalize reads it after the downloads, too late for a wrong folder. Stops at the
    first readable image (a large evaluation set is read whole once, by finalize)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"dedup.decontaminate: not a folder of images: {folder}")
    files = walk_files(root)
    for path in files:
        try:
            if image_signature(path.read_bytes()) is not None:
                return
        except OSError as exc:
            log.debug("%s: %s", path, exc)
    raise InputError(f"dedup.decontaminate: no readable image in {folder} ({len(files)} files skipped)")


def contaminated(hashes: Any, thumbs: Sequence[bytes | None], ref: EvalSet, threshold: int, bands: int,
                 limits: ColourLimits | None) -> np.ndarray:
    """Boolean mask over the samples (pHashes of either sign, thumbnails): within ``threshold`` bits of an
    evaluation image that also passes the colour check (``limits``; None: pHash alone), the rule by which
    finalize removes a near duplicate. A sample without a thumbnail is colour-checked as infinitely different."""
    h = as_uint64(hashes).ravel()
    near = near_any(h, ref.hashes, threshold, bands)
    if limits is None:
        return near
    out = np.zeros(h.size, dtype=bool)
    rows = [i for i in np.flatnonzero(near).tolist() if thumbs[i]]
    chunk = max(1, VERIFY_CHUNK // max(1, ref.hashes.size))
    for start in range(0, len(rows), chunk):
        part = np.array(rows[start : start + chunk], dtype=np.int64)
        within = hamming_array(h[part][:, None], ref.hashes[None, :]) <= threshold
        pairs = np.argwhere(within)  # (row in part, evaluation image)
        diffs = colour_diffs([thumbs[part[i]] for i in pairs[:, 0]], [ref.thumbs[j] for j in pairs[:, 1]])
        for (i, _), diff in zip(pairs.tolist(), diffs, strict=True):
            if limits.allows(diff):
                out[part[i]] = True
    return out
