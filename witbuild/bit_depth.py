"""Images of more than 8 bits per channel brought to 8 bits before img2dataset resizes them.

img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``, which keeps the values of a 16-bit PNG (scans, maps,
photographs exported from raw, scientific figures), of a 10- or 12-bit AVIF (what many AVIF encoders write for
photographs and HDR pictures) and of a 16-bit TIFF or JPEG 2000 as they are, up to 65535, 1023 or 4095; it resizes
that array and encodes it as an 8-bit JPEG, which saturates every value over 255. The shard then holds a white
(or, with alpha, whitish) picture under a ``success`` status: the caption is paired with nothing it describes, and
nothing says so. Browsers show such a PNG or AVIF as it is, scaled to 8 bits.

:class:`EightBitResizer` stands in for img2dataset's resizer: an image whose header says more than 8 bits per
channel (:func:`bit_depth`) is decoded, scaled to 8 bits (value × 255 / (2^bits − 1), rounded) and handed on
exactly (an 8-bit BMP); every other image goes through untouched, after a look at its head. The downloaded bytes,
which img2dataset hashes and the download reads EXIF and colour profiles from, are not changed. Each conversion
is noted as the shard's event, named by format and depth (``png_16_bit_to_8_bit``, ``avif_10_bit_to_8_bit``,
…; witbuild/shard_events.py).
"""

from __future__ import annotations

import io
import logging
from typing import IO, Any

from witbuild.image_head import read_head
from witbuild.orientation import AVIF_BRANDS
from witbuild.reencode import handed_on
from witbuild.shard_events import note

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT, TIFF_UNSIGNED = 258, 339, 1


def event(fmt: str, bits: int) -> str:
    """The shard event of an image of format ``fmt`` brought from ``bits`` to 8 bits per channel."""
    return f"{fmt}_{bits}_bit_to_8_bit"


def png_bit_depth(head: bytes) -> int | None:
    """Bits per channel (per palette index) from a PNG's first 32 bytes; None for anything else."""
    if len(head) < 25 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def avif_bit_depth(head: bytes) -> int | None:
    """Bits per channel of an AVIF from its ``av1C`` boxes (AV1's ``high_bitdepth`` and ``twelve_bit`` flags), which
    precede the image data: the deepest of its items' (should it be an alpha plane's or a thumbnail's, the colour
    image decodes to 8 bits and is left to img2dataset); None for anything else or no box in ``head``."""
    if head[4:8] != b"ftyp" or head[8:12] not in AVIF_BRANDS:
        return None
    depths = []
    at = head.find(b"av1C")
    while at >= 0 and at + 7 <= len(head):  # the colour image's, an alpha plane's, a thumbnail's: the deepest
        flags = head[at + 6]
        depths.append((12 if flags & 0x20 else 10) if flags & 0x40 else 8)
        at = head.find(b"av1C", at + 4)
    return max(depths, default=None)


def jp2_bit_depth(head: bytes) -> int | None:
    """Bits per component from a JPEG 2000 file's ``ihdr`` box; None for anything else, or where components
    differ (the box then says 255)."""
    if not head.startswith(JP2_SIGNATURE):
        return None
    at = head.find(b"ihdr")
    if at < 0 or len(head) < at + 15 or head[at + 14] == 255:
        return None
    return (head[at + 14] & 0x7F) + 1


def tiff_bit_depth(stream: IO[bytes]) -> int | None:
    """Bits per sample of a TIFF of unsigned integer samples, all of one depth (Pillow reads its first IFD, which
    may lie anywhere in the file); None for anything else."""
    from PIL import Image

    try:
        with Image.open(stream) as image:
            tags = image.tag_v2
            bits = set(tags.get(TIFF_BITS_PER_SAMPLE, (1,)))
            if tags.get(TIFF_SAMPLE_FORMAT, (TIFF_UNSIGNED,))[0] != TIFF_UNSIGNED or len(bits) != 1:
                return None
            return bits.pop()
    except Exception:  # damaged, or not a TIFF Pillow reads: img2dataset decides what it is
        return None
    finally:
        stream.seek(0)


def bit_depth(stream: IO[bytes], head: bytes) -> tuple[str, int] | None:
    """(format, bits per channel) of the image in ``stream`` (starting with ``head``), for the formats OpenCV decodes
    to more than 8 bits: PNG, AVIF, JPEG 2000, TIFF; None for any other."""
    for fmt, depth in (("png", png_bit_depth(head)), ("avif", avif_bit_depth(head)), ("jp2", jp2_bit_depth(head))):
        if depth is not None:
            return fmt, depth
    if head.startswith(TIFF_SIGNATURES):
        depth = tiff_bit_depth(stream)
        return None if depth is None else ("tiff", depth)
    return None


def eight_bit(data: bytes, bits: int) -> bytes:
    """An image of ``bits`` bits per channel at 8 bits, with the channels OpenCV gives it (grey, colour, colour +
    alpha), as the file handed to img2dataset's resizer (:func:`~witbuild.reencode.handed_on`)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not decodable")
    if image.dtype != np.uint16:
        raise ValueError(f"decoded as {image.dtype}, not 16-bit")
    top = (1 << bits) - 1
    return handed_on(((np.minimum(image, top).astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8))


class EightBitResizer:
    """img2dataset's resizer, given images of more than 8 bits per channel at 8 bits (see the module docstring).
    Pickled with the downloader to the download processes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, img_stream: Any, blurring_bbox_list: Any = None) -> Any:
        found = bit_depth(img_stream, read_head(img_stream))
        if found is not None and 8 < found[1] <= 16:
            fmt, bits = found
            try:
                converted = eight_bit(img_stream.read(), bits)
            except Exception as exc:  # left to img2dataset, which reports what it makes of it
                log.warning("cannot bring a %d-bit %s image to 8 bits: %s", bits, fmt.upper(), exc)
                img_stream.seek(0)
            else:
                note(event(fmt, bits))
                return self.inner(io.BytesIO(converted), blurring_bbox_list)
        return self.inner(img_stream, blurring_bbox_list)
