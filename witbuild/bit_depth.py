"""16-bit PNGs brought to 8 bits per channel before img2dataset resizes them.

img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``, which keeps a 16-bit PNG (scans, maps, photographs
exported from raw, scientific figures) as 16-bit values; it resizes that array and encodes it as an 8-bit JPEG,
which saturates every value over 255. The shard then holds a white (or, with alpha, whitish) picture under a
``success`` status: the caption is paired with nothing it describes, and nothing says so. Browsers show such a
PNG as it is, scaled to 8 bits.

:class:`EightBitResizer` stands in for img2dataset's resizer: a PNG whose header says 16 bits per channel is
decoded, scaled to 8 bits (value × 255 / 65535, rounded) and handed on as a lossless 8-bit PNG; every other image
goes through untouched, after a look at its first 32 bytes. The downloaded bytes, which img2dataset hashes and
reads EXIF from, are not changed. Each conversion is noted as the shard's ``png_16_bit_to_8_bit`` event
(witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from typing import Any

from witbuild.shard_events import note

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONVERTED = "png_16_bit_to_8_bit"


def png_bit_depth(head: bytes) -> int | None:
    """Bits per channel (per palette index) from a PNG's first 32 bytes; None for anything else."""
    if len(head) < 25 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def eight_bit_png(data: bytes) -> bytes:
    """A 16-bit PNG as an 8-bit PNG with the same channels (grey, grey + alpha, colour, colour + alpha)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not decodable")
    if image.dtype != np.uint16:
        raise ValueError(f"decoded as {image.dtype}, not 16-bit")
    scaled = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", scaled, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


class EightBitResizer:
    """img2dataset's resizer, given 16-bit PNGs at 8 bits (see the module docstring). Pickled with the downloader
    to the download processes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        head = img_stream.read(32)
        img_stream.seek(0)
        if png_bit_depth(head) == 16:
            try:
                converted = eight_bit_png(img_stream.read())
            except Exception as exc:  # left to img2dataset, which reports what it makes of it
                log.warning("cannot bring a 16-bit PNG to 8 bits: %s", exc)
                img_stream.seek(0)
            else:
                note(CONVERTED)
                return self.inner(io.BytesIO(converted), blurring_bbox_list)
        return self.inner(img_stream, blurring_bbox_list)
