"""Downloaded images turned the way their EXIF orientation says, as browsers show them.

A camera stores its pixels as the sensor read them and says in EXIF how to turn them for display (tag 0x0112:
8 rotations and mirrorings). Browsers have applied it to JPEG and PNG (its ``eXIf`` chunk) since 2020 (CSS
``image-orientation: from-image``), so a phone photo on a page stands upright; not to WebP, whose EXIF Chromium
ignores: a WebP is left as it is, as a page shows it. img2dataset decodes
with OpenCV's ``IMREAD_UNCHANGED``, which ignores the tag, and re-encodes without EXIF: the shard then holds the
photo on its side or mirrored, with nothing left in the image to say so, and its caption describes another
picture than the one trained on.

:class:`UprightResizer` stands in for img2dataset's resizer. It reads the orientation from the downloaded bytes
(Pillow, only for bytes that hold an EXIF block at all), lets the resizer do its work, and turns the image it
returns (Pillow's ``ImageOps.exif_transpose``), swapping width and height, resized and original, where the turn
does. Resizing, centre cropping and padding commute with these turns, so the result is the image img2dataset
would have made from the upright one; the one cost is a second encoding of the turned images (a JPEG keeps the
quantization tables and subsampling of the first, so it loses next to nothing more). Each turn is noted as the
shard's ``exif_turned_upright`` event (witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from typing import IO, Any

from witbuild.shard_events import note

log = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
NORMAL = 1
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the turns by 90 degrees
EXIF_MARKERS = (b"Exif", b"eXIf")  # JPEG's APP1 segment, PNG's chunk
HEAD_BYTES = 1 << 16
TURNED_FORMATS = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: the files browsers turn
TURNED = "exif_turned_upright"
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def orientation_of(stream: IO[bytes]) -> int:
    """The EXIF orientation (1-8) of a JPEG or PNG file, read from ``stream`` (left at its start); 1 when it has
    none, none that can be read, or is of another format. EXIF sits in the head of both (JPEG's APP1 follows its
    start marker; PNG's eXIf comes before the image data): most images are passed over after their first 64 kB."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    if not head.startswith(TURNED_FORMATS) or not any(marker in head for marker in EXIF_MARKERS):
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
        turned = ImageOps.exif_transpose(source)
        options: dict[str, Any] = {}
        if source.format == "JPEG":
            from PIL.JpegImagePlugin import get_sampling

            options = {"qtables": source.quantization, "subsampling": get_sampling(source)}
        elif encode_format == "webp":
            options = {"quality": quality}
        out = io.BytesIO()
        turned.save(out, _PIL_FORMATS.get(encode_format, source.format or "JPEG"), **options)
    return out.getvalue()


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
