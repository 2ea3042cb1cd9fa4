"""Downloaded images converted from their embedded colour profile to sRGB, as browsers show them.

A photo from a phone or a camera often carries an ICC profile that says what its numbers mean: Display P3 (the
iPhone's), Adobe RGB. Browsers convert it to the screen's colours; img2dataset decodes with OpenCV, which ignores
the profile, and re-encodes without it, so the shard holds the numbers read as sRGB: colours duller than the page
shows (a mean difference of 12 levels on a coffee-cup photo in Display P3).

:class:`SrgbResizer` stands in for img2dataset's resizer: it reads the profile of the downloaded bytes (Pillow;
only for files that hold one), lets the resizer do its work, and converts the colour image it returns from that
profile to sRGB (LittleCMS, through Pillow's ``ImageCms``). Profiles that name themselves sRGB, and profiles of
other colour spaces (grey, CMYK, whose pixels OpenCV has already made something else of) are passed over. Each
conversion is noted as the shard's ``icc_to_srgb`` event (witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache
from typing import IO, Any

from witbuild.reencode import encode_like
from witbuild.shard_events import note

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 16
# JPEG's APP2 segments, PNG's iCCP chunk, WebP's ICCP chunk, AVIF's colr box of type prof: all before the pixels
ICC_MARKERS = (b"ICC_PROFILE", b"iCCP", b"ICCP", b"colrprof")
CONVERTED = "icc_to_srgb"


def embedded_profile(stream: IO[bytes]) -> bytes | None:
    """The ICC profile of the image in ``stream`` (left at its start) when it is an RGB profile other than sRGB;
    None otherwise."""
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    if not any(marker in head for marker in ICC_MARKERS):
        return None
    from PIL import Image, ImageCms

    try:
        with Image.open(stream) as image:
            icc = image.info.get("icc_profile")
        if not icc or icc[16:20] != b"RGB ":
            return None
        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:  # no profile LittleCMS reads: the numbers are taken as sRGB, as before
        return None
    finally:
        stream.seek(0)
    return None if "srgb" in name.lower() else icc


@lru_cache(maxsize=16)
def _transform(icc: bytes) -> Any:
    """The RGB transform from ``icc`` to sRGB: building one costs milliseconds, and photos share a few profiles."""
    from PIL import ImageCms

    return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
                                   "RGB", "RGB")


def to_srgb(image: bytes, icc: bytes, encode_format: str, quality: int) -> bytes:
    """``image`` (as img2dataset encoded it) converted from the colour profile ``icc`` to sRGB."""
    from PIL import Image, ImageCms

    with Image.open(io.BytesIO(image)) as source:
        if source.mode != "RGB":
            return image
        return encode_like(ImageCms.applyTransform(source, _transform(icc)), source, encode_format, quality)


class SrgbResizer:
    """img2dataset's resizer, returning each image in sRGB (see the module docstring). Pickled with the downloader
    to the download processes."""

    def __init__(self, inner: Any, encode_format: str, quality: int) -> None:
        self.inner = inner
        self.encode_format = encode_format
        self.quality = quality

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        icc = embedded_profile(img_stream)
        result = self.inner(img_stream, blurring_bbox_list)
        img, *rest = result
        if icc is None or img is None or rest[-1] is not None:
            return result
        try:
            converted = to_srgb(img, icc, self.encode_format, self.quality)
        except Exception as exc:  # kept as img2dataset made it rather than lost
            log.warning("cannot convert an image from its colour profile to sRGB: %s", exc)
            return result
        if converted is not img:
            note(CONVERTED)
        return (converted, *rest)
