"""What storing images as a browser shows them costs the download, per kind of image.

img2dataset's resizer (``img2dataset.resizer.Resizer``: decode with OpenCV, resize to 256 px, JPEG 95) against the
download's chain around it (``witbuild.download.img2dataset_guarded``: ``EightBitResizer``, ``CmykResizer``,
``AsShownResizer``), on one 1024×768 photo (skimage's ``astronaut``, scaled) in each kind:

* ``plain``: a JPEG with nothing to apply; ``srgb``: the same with an sRGB profile (read, passed over);
* ``turned``: EXIF orientation 6; ``adobe rgb``: Debian's Adobe RGB (1998)-compatible profile; ``both``;
* ``late``: turned and Adobe RGB, after 120 kB of XMP (the head walked past 64 kB);
* ``grey``: a grey JPEG with Debian's ``Gray.icc``; ``cmyk``: a CMYK JPEG with Artifex's SWOP profile (converted
  from its inks before img2dataset's resizer, handed on as a lossless PNG);
* ``png 16``: a 16-bit PNG; ``avif 10``: a 10-bit AVIF (both brought to 8 bits first).

Prints milliseconds per image (best of ``--repeat`` runs of ``--number`` calls) and the ratio to the resizer alone.
A kind whose profile file is missing (``apt-get install icc-profiles-free libgs-common``) is skipped.

    .venv/bin/python benchmarks/bench_as_shown.py
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from img2dataset.resizer import ResizeMode, Resizer  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402

from witbuild.as_shown import AsShownResizer  # noqa: E402
from witbuild.bit_depth import EightBitResizer  # noqa: E402
from witbuild.colour_profile import CmykResizer  # noqa: E402
from witbuild.demo.images import skimage_image  # noqa: E402

PROFILES = {"adobe rgb": "/usr/share/color/icc/compatibleWithAdobeRGB1998.icc", "grey": "/usr/share/color/icc/Gray.icc",
            "cmyk": "/usr/share/color/icc/ghostscript/default_cmyk.icc"}


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _xmp_before_app1(jpeg: bytes, size: int = 60_000, segments: int = 2) -> bytes:
    body = b"http://ns.adobe.com/xap/1.0/\0" + b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><!--" + b" " * size + b"-->"
    xmp = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    start = 4 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 2
    return jpeg[:start] + xmp * segments + jpeg[start:]


def kinds() -> dict[str, bytes]:
    photo = skimage_image("astronaut").resize((1024, 768))
    turned = photo.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = {"plain": _jpeg(photo), "srgb": _jpeg(photo, icc_profile=srgb), "turned": _jpeg(turned, exif=exif.tobytes())}
    icc = {name: Path(path).read_bytes() for name, path in PROFILES.items() if Path(path).exists()}
    if "adobe rgb" in icc:
        out["adobe rgb"] = _jpeg(photo, icc_profile=icc["adobe rgb"])
        out["both"] = _jpeg(turned, exif=exif.tobytes(), icc_profile=icc["adobe rgb"])
        out["late"] = _xmp_before_app1(out["both"])
    if "grey" in icc:
        out["grey"] = _jpeg(photo.convert("L"), icc_profile=icc["grey"])
    if "cmyk" in icc:
        out["cmyk"] = _jpeg(photo.convert("CMYK"), icc_profile=icc["cmyk"])
    pixels = np.asarray(photo)[..., ::-1]
    out["png 16"] = cv2.imencode(".png", pixels.astype(np.uint16) * 257)[1].tobytes()
    out["avif 10"] = cv2.imencode(".avif", (pixels.astype(np.uint32) * 1023 // 255).astype(np.uint16),
                                  [cv2.IMWRITE_AVIF_DEPTH, 10, cv2.IMWRITE_AVIF_QUALITY, 90])[1].tobytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    resizer = Resizer(image_size=256, resize_mode=ResizeMode.keep_ratio, resize_only_if_bigger=False,
                      encode_format="jpg", encode_quality=95, min_image_size=0)
    chain = AsShownResizer(CmykResizer(EightBitResizer(resizer)), "jpg", 95)

    def per_call(fn, data: bytes) -> float:
        return min(timeit.repeat(lambda: fn(io.BytesIO(data)), number=args.number, repeat=args.repeat)) / args.number

    print(f"{'kind':10s} {'bytes':>9s} {'img2dataset ms':>15s} {'witbuild ms':>12s} {'ratio':>6s}")
    for name, data in kinds().items():
        alone, ours = per_call(resizer, data), per_call(chain, data)
        print(f"{name:10s} {len(data):9d} {alone * 1e3:15.2f} {ours * 1e3:12.2f} {ours / alone:6.2f}")


if __name__ == "__main__":
    main()
