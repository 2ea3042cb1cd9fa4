"""The head of a downloaded image: the bytes before its pixels, where a file says how to show them.

The download reads orientation, colour profile and bit depth from there (witbuild/orientation.py,
witbuild/colour_profile.py, witbuild/bit_depth.py) to pass over, cheaply, the many images that hold none. A
fixed window is not enough: a JPEG's metadata segments may run far past 64 kB before its ICC profile or its EXIF
(Photoshop's XMP, with its document history, and its resource block with a thumbnail come first, each up to
64 kB, and XMP may be extended over several segments), and browsers read them wherever they are before the image
data. For a JPEG the head runs to its first scan (SOS), for a PNG to its first IDAT chunk, found by walking the
segment and chunk lengths (a few reads); for any other format it is the first ``HEAD_BYTES``, where WebP's and
AVIF's metadata chunks and boxes sit.
"""

from __future__ import annotations

import re
import struct
from typing import IO

HEAD_BYTES = 1 << 16
MAX_HEAD_BYTES = 1 << 24  # a head is never read past this (a damaged length chain, a 16 MB XMP)
JPEG_START = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SCAN = 0xDA
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length follows


MAX_STEPS = 4096  # segments or chunks walked at most (real files have tens; a hostile one, millions)
_MARKER = re.compile(rb"\xff[^\x00\xff]")  # a JPEG marker: 0xFF, then a code (0x00 stuffs a data byte, 0xFF fills)
_SCAN_CHUNK = 1 << 20


def read_head(stream: IO[bytes]) -> bytes:
    """The head of the image in ``stream`` (see the module docstring), which is left at its start. Where the walk
    cannot reach the image data (damage, a hostile chain of lengths), at least the first ``HEAD_BYTES``."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    walked = _jpeg_head_end(stream, head) if head.startswith(JPEG_START) else (
        _png_head_end(stream, head) if head.startswith(PNG_SIGNATURE) else None)
    if walked is not None:
        end, clean = walked
        if end > len(head):
            stream.seek(0)
            head = stream.read(min(end, MAX_HEAD_BYTES))
        elif clean:
            head = head[:end]
    stream.seek(0)
    return head


def _read_at(stream: IO[bytes], head: bytes, at: int, n: int) -> bytes:
    if at + n <= len(head):
        return head[at:at + n]
    stream.seek(at)
    return stream.read(n)


def _next_marker(stream: IO[bytes], head: bytes, at: int) -> int | None:
    """Where the next JPEG marker at or after ``at`` starts (its last 0xFF), skipping what libjpeg skips: bytes
    that are no marker between segments, and fill bytes; None when there is none before ``MAX_HEAD_BYTES``."""
    while at < MAX_HEAD_BYTES:
        window = _read_at(stream, head, at, min(_SCAN_CHUNK, MAX_HEAD_BYTES - at) + 1)
        found = _MARKER.search(window)
        if found is not None:
            return at + found.start()
        if len(window) <= _SCAN_CHUNK:
            return None
        at += _SCAN_CHUNK
    return None


def _jpeg_head_end(stream: IO[bytes], head: bytes) -> tuple[int, bool]:
    """Where a JPEG's first scan starts, and whether the walk got there."""
    at = 2
    for _ in range(MAX_STEPS):
        marker = _read_at(stream, head, at, 4)
        if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0x00, 0xFF):
            found = _next_marker(stream, head, at)
            if found is None:
                return at, False
            at, marker = found, _read_at(stream, head, found, 4)
        if marker[1] == JPEG_SCAN:
            return at, True
        if marker[1] in JPEG_STANDALONE:
            at += 2
        elif len(marker) < 4:
            return at, False
        else:
            at += 2 + struct.unpack(">H", marker[2:4])[0]
        if at >= MAX_HEAD_BYTES:
            return MAX_HEAD_BYTES, False
    return at, False


def _png_head_end(stream: IO[bytes], head: bytes) -> tuple[int, bool]:
    """Where a PNG's first IDAT chunk starts, and whether the walk got there."""
    at = len(PNG_SIGNATURE)
    for _ in range(MAX_STEPS):
        chunk = _read_at(stream, head, at, 8)
        if len(chunk) < 8:
            return at, False
        if chunk[4:8] == b"IDAT":
            return at, True
        at += 12 + struct.unpack(">I", chunk[:4])[0]  # length, type, data, CRC
        if at >= MAX_HEAD_BYTES:
            return MAX_HEAD_BYTES, False
    return at, False


JPEG_FRAMES = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})  # SOFn


def jpeg_components(head: bytes) -> int | None:
    """The number of colour components of a JPEG (1 grey, 3 colour, 4 CMYK or YCCK) from its frame header in
    ``head`` (:func:`read_head`); None for anything else."""
    if not head.startswith(JPEG_START):
        return None
    at = 2
    for _ in range(MAX_STEPS):
        if at + 4 > len(head):
            return None
        if head[at] != 0xFF or head[at + 1] in (0x00, 0xFF):  # skipped, as in the walk
            found = _MARKER.search(head, at)
            if found is None:
                return None
            at = found.start()
            continue
        marker = head[at + 1]
        if marker in JPEG_STANDALONE:
            at += 2
        elif marker in JPEG_FRAMES:
            return head[at + 9] if at + 9 < len(head) else None
        else:
            at += 2 + struct.unpack(">H", head[at + 2:at + 4])[0]
    return None


def grey_file(head: bytes) -> bool:
    """Whether the image whose head is ``head`` stores grey levels (with or without alpha): a JPEG of one component,
    a PNG of colour type 0 or 4, an AVIF whose ``av1C`` says monochrome. A colour profile applies only to the
    colour space the file stores: browsers ignore a grey profile on a colour image, and an RGB one on a grey image."""
    if head.startswith(PNG_SIGNATURE):
        return len(head) > 25 and head[12:16] == b"IHDR" and head[25] in (0, 4)
    if head[4:8] == b"ftyp":
        at = head.find(b"av1C")
        return at >= 0 and len(head) > at + 6 and bool(head[at + 6] & 0x10)
    return jpeg_components(head) == 1
