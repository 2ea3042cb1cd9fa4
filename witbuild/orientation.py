"""Downloaded images turned the way their EXIF orientation says, as browsers show them.

A camera stores its pixels as the sensor read them and says in EXIF how to turn them for display (tag 0x0112:
8 rotations and mirrorings). Browsers have applied it to JPEG and PNG (its ``eXIf`` chunk) since 2020 (CSS
``image-orientation: from-image``), so a phone photo on a page stands upright, and they apply an AVIF's own
``irot``/``imir`` boxes, which say the same; not a WebP's EXIF, which Chromium ignores: a WebP is left as it is,
as a page shows it. img2dataset decodes with OpenCV's ``IMREAD_UNCHANGED``, which ignores all of these, and
re-encodes without EXIF: the shard then holds the photo on its side or mirrored, with nothing left in the image
to say so, and its caption describes another picture than the one trained on.

:func:`orientation_of` reads the orientation from the downloaded bytes (Pillow, which gives an AVIF's boxes as
the EXIF value they stand for; only for files that hold such a block), and :func:`turned` turns the image
img2dataset made from them (witbuild/as_shown.py). Resizing, centre cropping and padding commute with these
turns, so the result is the image img2dataset would have made from the upright one.
"""

from __future__ import annotations

from typing import IO, Any

from witbuild.image_head import read_head

ORIENTATION_TAG = 0x0112
NORMAL = 1
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # the turns by 90 degrees
EXIF_MARKERS = (b"Exif", b"eXIf")  # JPEG's APP1 segment, PNG's chunk
AVIF_MARKERS = (b"irot", b"imir")  # an AVIF's rotation and mirror boxes (in its meta box, at the start)
TURNED_FORMATS = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: the EXIF browsers apply
AVIF_BRANDS = (b"avif", b"avis")
TURNED = "exif_turned_upright"  # the shard event of each image turned


def _may_turn(head: bytes) -> bool:
    """Whether a file starting with ``head`` holds an orientation a browser applies."""
    if head.startswith(TURNED_FORMATS):
        return any(marker in head for marker in EXIF_MARKERS)
    if head[4:8] == b"ftyp" and head[8:12] in AVIF_BRANDS:
        return any(marker in head for marker in AVIF_MARKERS)
    return False


def orientation_of(stream: IO[bytes], head: bytes | None = None) -> int:
    """The orientation (1-8, as EXIF numbers them) a browser applies to the image in ``stream`` (left at its
    start): a JPEG's or PNG's EXIF, an AVIF's boxes; 1 when there is none, none that can be read, or the format has
    none a browser applies. Both sit in the head of the file (JPEG's APP1 follows its start marker, PNG's eXIf and
    AVIF's boxes come before the image data): most images are passed over after a look at their head
    (:func:`~witbuild.image_head.read_head`; ``head``, when the caller has read it already)."""
    if head is None:
        head = read_head(stream)
    if not _may_turn(head):
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


def turned(image: Any, orientation: int) -> Any:
    """A PIL ``image`` turned for display by EXIF ``orientation`` (Pillow's ``ImageOps.exif_transpose``)."""
    from PIL import ImageOps

    image.getexif()[ORIENTATION_TAG] = orientation
    return ImageOps.exif_transpose(image)
