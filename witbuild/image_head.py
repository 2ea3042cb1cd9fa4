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

import struct
from typing import IO

HEAD_BYTES = 1 << 16
MAX_HEAD_BYTES = 1 << 24  # a head is never read past this (a damaged length chain, a 16 MB XMP)
JPEG_START = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SCAN = 0xDA
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length follows


def read_head(stream: IO[bytes]) -> bytes:
    """The head of the image in ``stream`` (see the module docstring), which is left at its start."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    end = _jpeg_head_end(stream, head) if head.startswith(JPEG_START) else (
        _png_head_end(stream, head) if head.startswith(PNG_SIGNATURE) else None)
    if end is not None and end > len(head):
        stream.seek(0)
        head = stream.read(min(end, MAX_HEAD_BYTES))
    elif end is not None:
        head = head[:end]
    stream.seek(0)
    return head


def _read_at(stream: IO[bytes], head: bytes, at: int, n: int) -> bytes:
    if at + n <= len(head):
        return head[at:at + n]
    stream.seek(at)
    return stream.read(n)


def _jpeg_head_end(stream: IO[bytes], head: bytes) -> int:
    """Where a JPEG's first scan starts (or its segments stop making sense)."""
    at = 2
    while at < MAX_HEAD_BYTES:
        marker = _read_at(stream, head, at, 4)
        if len(marker) < 2 or marker[0] != 0xFF:
            return at
        if marker[1] == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker[1] == JPEG_SCAN or len(marker) < 4:
            return at
        if marker[1] in JPEG_STANDALONE:
            at += 2
            continue
        at += 2 + struct.unpack(">H", marker[2:4])[0]
    return MAX_HEAD_BYTES


def _png_head_end(stream: IO[bytes], head: bytes) -> int:
    """Where a PNG's first IDAT chunk starts (or its chunks stop making sense)."""
    at = len(PNG_SIGNATURE)
    while at < MAX_HEAD_BYTES:
        chunk = _read_at(stream, head, at, 8)
        if len(chunk) < 8 or chunk[4:8] == b"IDAT":
            return at
        at += 12 + struct.unpack(">I", chunk[:4])[0]  # length, type, data, CRC
    return MAX_HEAD_BYTES


JPEG_FRAMES = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})  # SOFn


def jpeg_components(head: bytes) -> int | None:
    """The number of colour components of a JPEG (1 grey, 3 colour, 4 CMYK or YCCK) from its frame header in
    ``head`` (:func:`read_head`); None for anything else."""
    if not head.startswith(JPEG_START):
        return None
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:
            at += 1
        elif marker in JPEG_STANDALONE:
            at += 2
        elif marker in JPEG_FRAMES:
            return head[at + 9] if at + 9 < len(head) else None
        else:
            at += 2 + struct.unpack(">H", head[at + 2:at + 4])[0]
    return None
