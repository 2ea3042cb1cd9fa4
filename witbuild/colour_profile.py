"""Downloaded images converted from their embedded colour profile to sRGB, as browsers show them.

A photo from a phone or a camera often carries an ICC profile that says what its numbers mean: Display P3 (the
iPhone's), Adobe RGB; a greyscale picture may carry a grey profile (Photoshop's grey working spaces), a picture
made for print a CMYK one. Browsers convert each to the screen's colours; img2dataset decodes with OpenCV, which
ignores the profile, and re-encodes without it, so the shard holds the numbers read as sRGB: colours duller than
the page shows (a mean difference of 12 levels on a coffee-cup photo in Display P3), greys far lighter or darker
(58 levels under a linear grey profile), print colours off by 37 levels (SWOP).

:func:`embedded_profile` reads the profile of the downloaded bytes (Pillow; only for files that hold one), and
:func:`in_srgb` converts an RGB or grey image from it to sRGB (LittleCMS, through Pillow's ``ImageCms``): the
image img2dataset made from an RGB or grey file (witbuild/as_shown.py). OpenCV has already turned a CMYK file's
inks into RGB without the profile by then, so :class:`CmykResizer` converts a CMYK JPEG that carries a CMYK
profile before img2dataset's resizer sees it, from its own inks, and hands it on exactly (a BMP). Profiles that
name themselves sRGB or sGray are passed over, and so is a CMYK file without a profile, which browsers convert
the way OpenCV does.
"""

from __future__ import annotations

import io
import logging
import os
from functools import lru_cache
from typing import IO, Any

from witbuild.image_head import jpeg_components, read_head
from witbuild.reencode import handed_on
from witbuild.shard_events import note

log = logging.getLogger(__name__)

# JPEG's APP2 segments, PNG's iCCP chunk, WebP's ICCP chunk, AVIF's colr box of type prof: all before the pixels
ICC_MARKERS = (b"ICC_PROFILE", b"iCCP", b"ICCP", b"colrprof")
CONVERTED = "icc_to_srgb"  # the shard event of each RGB or grey image converted
CMYK_CONVERTED = "cmyk_icc_to_srgb"  # the shard event of each CMYK image converted
# an ICC profile's colour space (bytes 16-19 of its header) → the mode of the PIL images it describes
MODES = {b"RGB ": "RGB", b"GRAY": "L", b"CMYK": "CMYK"}
SRGB_NAMES = ("srgb", "sgray")  # profiles that say what the numbers already mean without one


def profile_mode(icc: bytes) -> str | None:
    """The PIL mode of the images ``icc`` describes ("RGB", "L", "CMYK"), None for any other colour space."""
    return MODES.get(icc[16:20])


def embedded_profile(stream: IO[bytes], head: bytes | None = None) -> bytes | None:
    """The ICC profile of the image in ``stream`` (left at its start) when it is an RGB, grey or CMYK profile other
    than sRGB or sGray; None otherwise. ``head``: the stream's head (:func:`~witbuild.image_head.read_head`), when
    the caller has read it already."""
    if head is None:
        head = read_head(stream)
    if not any(marker in head for marker in ICC_MARKERS):
        return None
    from PIL import Image, ImageCms

    try:
        with Image.open(stream) as image:
            icc = image.info.get("icc_profile")
        if not icc or profile_mode(icc) is None:
            return None
        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).lower()
    except Exception:  # no profile LittleCMS reads: the numbers are taken as sRGB, as before
        return None
    finally:
        stream.seek(0)
    return None if any(srgb in name for srgb in SRGB_NAMES) else icc


@lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str) -> Any:
    """The transform of ``mode`` images from ``icc`` to sRGB: building one costs milliseconds, and images share a
    few profiles. Relative colorimetric, as browsers convert (Chromium's skcms applies a profile's table as it is);
    for RGB and grey profiles of curves and a matrix every intent is this one."""
    from PIL import ImageCms

    return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"),
                                   mode, "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)


def in_srgb(image: Any, icc: bytes) -> Any:
    """A PIL ``image`` converted from the colour profile ``icc`` (RGB or grey) to sRGB, in its own mode: a grey image
    stays grey (neutral levels stay neutral under either profile), and the RGB image img2dataset made of a grey file
    with alpha is read as the grey it is."""
    from PIL import ImageCms

    mode = profile_mode(icc)
    source = image.convert(mode) if image.mode != mode else image
    converted = ImageCms.applyTransform(source, _transform(icc, mode))
    return converted.convert(image.mode) if converted.mode != image.mode else converted


def converts(icc: bytes | None, grey: bool) -> bool:
    """Whether :func:`in_srgb` applies ``icc`` to the image img2dataset made from a file that stores grey levels
    (``grey``, :func:`~witbuild.image_head.grey_file`) or colours, as Chromium applies it: an RGB profile to either
    (a grey file's levels are read as neutral colours), a grey profile to a grey file only (on a colour file it is
    ignored). A CMYK file is converted before (:class:`CmykResizer`)."""
    mode = None if icc is None else profile_mode(icc)
    return mode == "RGB" or (mode == "L" and grey)


def cmyk_in_srgb(data: bytes, icc: bytes) -> bytes:
    """A CMYK JPEG converted from its profile ``icc`` to sRGB, as the file handed to img2dataset's resizer
    (:func:`~witbuild.reencode.handed_on`; Pillow reads Photoshop's inverted CMYK as the inks it stands for)."""
    import numpy as np
    from PIL import Image, ImageCms

    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "CMYK":
            raise ValueError(f"a CMYK profile on a {image.mode} image")
        cap = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
        if image.width * image.height > cap:  # left to img2dataset, whose decoder refuses it (a decompression bomb)
            raise ValueError(f"{image.width}×{image.height} pixels, more than the download's cap of {cap}")
        converted = ImageCms.applyTransform(image, _transform(icc, "CMYK"))
    return handed_on(np.asarray(converted)[..., ::-1])


class CmykResizer:
    """img2dataset's resizer, given a CMYK JPEG with a CMYK profile as the sRGB picture its profile says (see the
    module docstring). Pickled with the downloader to the download processes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        head = read_head(img_stream)
        icc = embedded_profile(img_stream, head) if jpeg_components(head) == 4 else None
        if icc is not None and profile_mode(icc) == "CMYK":
            try:
                converted = cmyk_in_srgb(img_stream.read(), icc)
            except Exception as exc:  # left to img2dataset, as it would have made it
                log.warning("cannot convert a CMYK image from its profile: %s", exc)
                img_stream.seek(0)
            else:
                note(CMYK_CONVERTED)
                return self.inner(io.BytesIO(converted), blurring_bbox_list)
        return self.inner(img_stream, blurring_bbox_list)
