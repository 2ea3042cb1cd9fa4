"""Downloaded images turned the way their EXIF orientation says, as browsers show them.

A camera stores its pixels as the sensor read them and says in EXIF how to turn them for display (tag 0x0112:
8 rotations and mirrorings). Browsers have applied it to every image since 2020 (CSS ``image-orientation:
from-image``), so a phone photo on a page stands upright. img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``,
which ignores the tag, and re-encodes without EXIF: the shard then holds the photo on its side or mirrored, with
nothing left in the image to say so, and its caption describes another picture than the one trained on.

img2dataset does record each image's EXIF (its ``exif`` column: exifread's tag names and values, as JSON, read from
the downloaded bytes). :class:`UprightWriterClass` stands in for its sample writer class: an image whose recorded
orientation is not the normal one is turned (Pillow's ``ImageOps.exif_transpose``) before it is written, and its
width and height (resized and original) are swapped where the turn swaps them. Resizing, centre cropping and
padding commute with these turns, so the result is the image img2dataset would have made from the upright one;
the one cost is a second encoding of the turned images (a JPEG keeps the quantization tables and subsampling of the
first, so it loses next to nothing more).
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112
EXIF_KEY = "Image Orientation"  # exifread's name of the tag in IFD0, as img2dataset's exif column has it
NORMAL = 1
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the turns by 90 degrees
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def _orientation_names() -> dict[str, int]:
    """exifread's value names of the orientation tag, to their number (exifread is what wrote them)."""
    from exifread.tags.exif import EXIF_TAGS

    _, names = EXIF_TAGS[ORIENTATION_TAG]
    return {name: number for number, name in names.items()}


def turning_values() -> list[str]:
    """Every value of the orientation in img2dataset's ``exif`` column that :func:`exif_orientation` reads as a
    turn (not 1)."""
    return sorted([name for name, number in _orientation_names().items() if number != NORMAL]
                  + [str(n) for n in range(2, 9)])


def exif_orientation(exif_json: str | None) -> int:
    """The orientation (1-8) recorded in img2dataset's ``exif`` column; 1 when there is none or it cannot be read."""
    if not exif_json or EXIF_KEY not in exif_json:  # most images: no parse
        return NORMAL
    try:
        value = json.loads(exif_json).get(EXIF_KEY)
    except (ValueError, AttributeError):
        return NORMAL
    if value is None:
        return NORMAL
    value = str(value).strip()
    if value.isdigit():  # a value exifread had no name for
        number = int(value)
        return number if 1 <= number <= 8 else NORMAL
    return _orientation_names().get(value, NORMAL)


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


def _swap_sides(meta: dict[str, Any]) -> None:
    for width, height in (("width", "height"), ("original_width", "original_height")):
        if width in meta and height in meta:
            meta[width], meta[height] = meta[height], meta[width]


class UprightWriterClass:
    """Called like img2dataset's sample writer class, it makes an :class:`UprightWriter` around one of its writers.
    An instance, not a class, because img2dataset pickles it to the download processes."""

    def __init__(self, inner: Any, quality: int) -> None:
        self.inner = inner
        self.quality = quality

    def __call__(self, shard_id: int, output_folder: str, save_caption: bool, oom_shard_count: int,
                 schema: Any, encode_format: str) -> UprightWriter:
        writer = self.inner(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)
        return UprightWriter(writer, encode_format, self.quality)


class UprightWriter:
    """img2dataset's writer, given each image upright (see the module docstring)."""

    def __init__(self, inner: Any, encode_format: str, quality: int) -> None:
        self.inner = inner
        self.encode_format = encode_format
        self.quality = quality

    def write(self, img_str: bytes | None, key: str, caption: Any, meta: dict[str, Any]) -> None:
        orientation = exif_orientation(meta.get("exif")) if img_str is not None else NORMAL
        if orientation != NORMAL:
            try:
                img_str = upright(img_str, orientation, self.encode_format, self.quality)
            except Exception as exc:  # kept as img2dataset made it rather than lost
                log.warning("%s: cannot turn the image by EXIF orientation %d: %s", key, orientation, exc)
            else:
                if orientation in SWAPS_SIDES:
                    meta = dict(meta)
                    _swap_sides(meta)
        self.inner.write(img_str, key, caption, meta)

    def close(self) -> None:
        self.inner.close()
