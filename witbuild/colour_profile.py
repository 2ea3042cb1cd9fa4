"""Downloaded images converted from their embedded colour profile to sRGB, as browsers show them.

A photo from a phone or a camera often carries an ICC profile that says what its numbers mean: Display P3 (the
iPhone's), Adobe RGB. Browsers convert it to the screen's colours; img2dataset decodes with OpenCV, which ignores
the profile, and re-encodes without it, so the shard holds the numbers read as sRGB: colours duller than the page
shows (a mean difference of 12 levels on a coffee-cup photo in Display P3).

:func:`embedded_profile` reads the profile of the downloaded bytes (Pillow; only for files that hold one), and
:func:`in_srgb` converts the colour image img2dataset made from them from that profile to sRGB (LittleCMS, through
Pillow's ``ImageCms``; witbuild/as_shown.py). Profiles that name themselves sRGB, and profiles of other colour
spaces (grey, CMYK, whose pixels OpenCV has already made something else of) are passed over.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import IO, Any

from witbuild.image_head import read_head

# JPEG's APP2 segments, PNG's iCCP chunk, WebP's ICCP chunk, AVIF's colr box of type prof: all before the pixels
ICC_MARKERS = (b"ICC_PROFILE", b"iCCP", b"ICCP", b"colrprof")
CONVERTED = "icc_to_srgb"  # the shard event of each image converted


def embedded_profile(stream: IO[bytes], head: bytes | None = None) -> bytes | None:
    """The ICC profile of the image in ``stream`` (left at its start) when it is an RGB profile other than sRGB;
    None otherwise. ``head``: the stream's head (:func:`~witbuild.image_head.read_head`), when the caller has
    read them already."""
    if head is None:
        head = read_head(stream)
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


def in_srgb(image: Any, icc: bytes) -> Any:
    """A PIL RGB ``image`` converted from the colour profile ``icc`` to sRGB."""
    from PIL import ImageCms

    return ImageCms.applyTransform(image, _transform(icc))
