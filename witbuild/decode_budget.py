"""A memory budget for decoding one downloaded image, checked from its header before anything is decoded.

``download.max_image_area`` caps the pixels (OpenCV's decoder refuses more), but not what they cost: img2dataset
composites an image with alpha on white in float64, and an image of 16 bits per channel is scaled to 8 bits through
wider arrays (witbuild/bit_depth.py), so such an image takes about 80 bytes per pixel on its way through the
resizers against about 6 for an 8-bit RGB photograph. A 400 kB PNG of 6000 × 6000 RGBA pixels, far under the pixel
cap, took 2.7 GB in one download thread; a few at once end the worker, and img2dataset's retry meets them again.

:class:`MemoryBudgetResizer` stands outermost in the download's resizer chain: an image whose estimated cost is over
``download.max_image_memory`` is refused as img2dataset refuses one over its pixel cap (error class
``image_too_large``), its header read by Pillow, which decodes nothing to say the size and mode.
"""

from __future__ import annotations

import io
import logging
from typing import Any

log = logging.getLogger(__name__)

#: Bytes per pixel the resizers take, measured: with alpha or more than 8 bits a channel (74-78), and otherwise
#: (5.5; rounded up to leave room for the as-shown and colour-profile conversions)
WIDE_BYTES_PER_PIXEL = 80
NARROW_BYTES_PER_PIXEL = 8
_WIDE_MODES = frozenset(("RGBA", "LA", "PA", "RGBa", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "CMYK"))


def decode_cost(data: io.BytesIO) -> tuple[int, str] | None:
    """(estimated bytes, what was seen) of decoding the image in ``data``, from its header alone; None when Pillow
    cannot read the header (left to img2dataset, which reports what it makes of it). The stream is rewound."""
    from PIL import Image

    from witbuild.bit_depth import bit_depth
    from witbuild.image_head import read_head

    try:
        depth = bit_depth(data, read_head(data))
        data.seek(0)
        with Image.open(data) as im:
            width, height = im.size
            wide = im.mode in _WIDE_MODES or "transparency" in im.info or (depth is not None and depth[1] > 8)
            seen = f"{width}x{height} {im.format} {im.mode}" + (f" {depth[1]}-bit" if depth else "")
    except Exception:  # any header Pillow cannot read is img2dataset's to judge
        return None
    finally:
        data.seek(0)
    per_pixel = WIDE_BYTES_PER_PIXEL if wide else NARROW_BYTES_PER_PIXEL
    return width * height * per_pixel, seen


class MemoryBudgetResizer:
    """img2dataset's resizer chain, refusing an image whose decoding would take more than ``max_bytes``
    (:func:`decode_cost`). Pickled with the downloader to the download processes."""

    def __init__(self, inner: Any, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        cost = decode_cost(img_stream)
        if cost is not None and cost[0] > self.max_bytes:
            why = (f"image too large to decode: {cost[1]} would take about {cost[0] / 2**30:.1f} GiB "
                   f"(download.max_image_memory {self.max_bytes / 2**30:.1f} GiB)")
            log.debug(why)
            return None, None, None, None, None, why
        return self.inner(img_stream, blurring_bbox_list)
