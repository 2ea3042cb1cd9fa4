"""Writing an image img2dataset encoded again, after it was changed, in the download's format."""

from __future__ import annotations

import io
from typing import Any

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_like(image: Any, source: Any, encode_format: str, quality: int) -> bytes:
    """``image`` (a PIL image made from ``source``, the PIL image of img2dataset's encoding) in ``encode_format``.
    A JPEG keeps the quantization tables and subsampling of ``source``, so a second encoding loses next to nothing
    more than the first."""
    options: dict[str, Any] = {}
    if source.format == "JPEG":
        from PIL.JpegImagePlugin import get_sampling

        options = {"qtables": source.quantization, "subsampling": get_sampling(source)}
    elif encode_format == "webp":
        options = {"quality": quality}
    out = io.BytesIO()
    image.save(out, _PIL_FORMATS.get(encode_format, source.format or "JPEG"), **options)
    return out.getvalue()


def handed_on(pixels: Any) -> bytes:
    """``pixels`` (an OpenCV array: grey, BGR or BGRA, 8 bits) as the file handed to img2dataset's resizer in place
    of one OpenCV would decode wrongly: a BMP, exact, and encoded and decoded in a fraction of a millisecond (a
    lossless PNG of a 1024×768 photo takes 20-55 ms to encode)."""
    import cv2

    ok, encoded = cv2.imencode(".bmp", pixels)
    if not ok:
        raise ValueError("BMP encoding failed")
    return encoded.tobytes()
