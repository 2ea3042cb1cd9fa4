"""img2dataset's resizer, returning each image as a browser shows it: turned by its orientation, in sRGB.

img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``, which ignores what a file says about how to show its
pixels, and re-encodes without it. :class:`AsShownResizer` stands in for its resizer: it reads the file's
orientation (witbuild/orientation.py) and colour profile (witbuild/colour_profile.py) from the downloaded bytes,
lets the resizer do its work, and applies both to the image it returns, swapping width and height (resized and
original) where a turn does. An image that needs neither is returned as img2dataset made it; one that needs
either is encoded once more, in the download's format (witbuild/reencode.py). Each change is noted as the
shard's event (witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from typing import Any

from witbuild.colour_profile import CONVERTED, converts, embedded_profile, in_srgb
from witbuild.image_head import grey_file, read_head
from witbuild.orientation import NORMAL, SWAPS_SIDES, TURNED, orientation_of, turned
from witbuild.reencode import encode_like
from witbuild.shard_events import note

log = logging.getLogger(__name__)


class AsShownResizer:
    """See the module docstring. Pickled with the downloader to the download processes."""

    def __init__(self, inner: Any, encode_format: str, quality: int, upright: bool = True, srgb: bool = True) -> None:
        self.inner = inner
        self.encode_format = encode_format
        self.quality = quality
        self.upright = upright
        self.srgb = srgb

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        head = read_head(img_stream)  # read once for both
        orientation = orientation_of(img_stream, head) if self.upright else NORMAL
        icc = embedded_profile(img_stream, head) if self.srgb else None
        if not converts(icc, grey_file(head)):
            icc = None
        result = self.inner(img_stream, blurring_bbox_list)
        img, width, height, original_width, original_height, error = result
        if (orientation == NORMAL and icc is None) or img is None or error is not None:
            return result
        try:
            img, changes = self._as_shown(img, orientation, icc)
        except Exception as exc:  # kept as img2dataset made it rather than lost
            log.warning("cannot show an image as a browser does (orientation %d, profile %s): %s", orientation,
                        icc is not None, exc)
            return result
        for change in changes:
            note(change)
        if TURNED in changes and orientation in SWAPS_SIDES:
            width, height, original_width, original_height = height, width, original_height, original_width
        return img, width, height, original_width, original_height, error

    def _as_shown(self, img: bytes, orientation: int, icc: bytes | None) -> tuple[bytes, list[str]]:
        from PIL import Image

        changes = []
        with Image.open(io.BytesIO(img)) as source:
            source.load()
            image = source
            if icc is not None:
                image = in_srgb(image, icc)
                changes.append(CONVERTED)
            if orientation != NORMAL:
                image = turned(image, orientation)
                changes.append(TURNED)
            return (encode_like(image, source, self.encode_format, self.quality) if changes else img), changes
