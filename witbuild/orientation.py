"""Downloaded images turned the way their EXIF orientation says, as browsers show them.

A camera stores its pixels as the sensor read them and says in EXIF how to turn them for display (tag 0x0112:
8 rotations and mirrorings). Browsers have applied it to JPEG and PNG (its ``eXIf`` chunk) since 2020 (CSS
``image-orientation: from-image``), so a phone photo on a page stands upright, and they apply an AVIF's own
``irot``/``imir`` boxes, which say the same; not a WebP's EXIF, which Chromium ignores: a WebP is left as it is,
as a page shows it. img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``, which ignores all of these, and
re-encodes without EXIF: the shard then holds the photo on its side or mirrored, with nothing left in the image
to say so, and its caption describes another picture than the one trained on.

:class:`UprightResizer` stands in for img2dataset's resizer. It reads the orientation from the downloaded bytes
(Pillow, which gives an AVIF's boxes as the EXIF value they stand for; only for files that hold such a block),
lets the resizer do its work, and turns the image it returns (Pillow's ``ImageOps.exif_transpose``), swapping
width and height, resized and original, where the turn does. Resizing, centre cropping and padding commute with
these turns, so the result is the image img2dataset would have made from the upright one; the one cost is a
second encoding of the turned images (a JPEG keeps the quantization tables and subsampling of the first, so it
loses next to nothing more). Each turn is noted as the shard's ``exif_turned_upright`` event
(witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from typing import IO, Any

from witbuild.reencode import encode_like
from witbuild.shard_events import note

log = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
NORMAL = 1
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the turns by 90 degrees
HEAD_BYTES = 1 << 16
EXIF_MARKERS = (b"Exif", b"eXIf")  # JPEG's APP1 segment, PNG's chunk
AVIF_MARKERS = (b"irot", b"imir")  # an AVIF's rotation and mirror boxes (in its meta box, at the start)
TURNED_FORMATS = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: the EXIF browsers apply
AVIF_BRANDS = (b"avif", b"avis")
TURNED = "exif_turned_upright"


def _may_turn(head: bytes) -> bool:
    """Whether a file starting with ``head`` holds an orientation a browser applies."""
    if head.startswith(TURNED_FORMATS):
        return any(marker in head for marker in EXIF_MARKERS)
    if head[4:8] == b"ftyp" and head[8:12] in AVIF_BRANDS:
        return any(marker in head for marker in AVIF_MARKERS)
    return False


def orientation_of(stream: IO[bytes]) -> int:
    """The orientation (1-8, as EXIF numbers them) a browser applies to the image in ``stream`` (left at its
    start): a JPEG's or PNG's EXIF, an AVIF's boxes; 1 when there is none, none that can be read, or the format has
    none a browser applies. Both sit in the head of the file (JPEG's APP1 follows its start marker, PNG's eXIf and
    AVIF's boxes come before the image data): most images are passed over after their first 64 kB."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    if not _may_turn(head):
        return NORMAL
    from PIL import Image

    try:
        with Image.open(stream) as image:
            value = image.getexif().get(ORIENTATION_TAG)
    except Exception:  # not an image Pillow reads: img2dataset decides what it is
        return NORMAL
    finally:
        stream.seek(0)
    return value if isinstance(value, int) and 1 <= value <= 8 else NORMAL


def upright(image: bytes, orientation: int, encode_format: str, quality: int) -> bytes:
    """``image`` (as img2dataset encoded it, in ``encode_format``) turned for display by EXIF ``orientation``."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(image)) as source:
        source.load()
        source.getexif()[ORIENTATION_TAG] = orientation
        return encode_like(ImageOps.exif_transpose(source), source, encode_format, quality)


class UprightResizer:
    """img2dataset's resizer, returning each image upright (see the module docstring). Pickled with the
    downloader to the download processes."""

    def __init__(self, inner: Any, encode_format: str, quality: int) -> None:
        self.inner = inner
        self.encode_format = encode_format
        self.quality = quality

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        orientation = orientation_of(img_stream)
        result = self.inner(img_stream, blurring_bbox_list)
        img, width, height, original_width, original_height, error = result
        if orientation == NORMAL or img is None or error is not None:
            return result
        try:
            img = upright(img, orientation, self.encode_format, self.quality)
        except Exception as exc:  # kept as img2dataset made it rather than lost
            log.warning("cannot turn an image by EXIF orientation %d: %s", orientation, exc)
            return result
        note(TURNED)
        if orientation in SWAPS_SIDES:
            width, height, original_width, original_height = height, width, original_height, original_width
        return img, width, height, original_width, original_height, error
