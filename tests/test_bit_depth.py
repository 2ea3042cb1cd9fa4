"""16-bit PNGs are stored as the picture they hold, not white.

The files: a real photo (skimage's ``chelsea``) written as 16-bit PNGs (each 8-bit value v as v × 257, the
scaling that keeps it exact) in the four 16-bit colour types: grey, grey + alpha, colour, colour + alpha (opaque).
References: the 8-bit photo itself, and headless Chromium's drawing of each file. img2dataset alone stores them
white; the download, through the real img2dataset downloader, stores the photo and counts each conversion.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers.cdp import images_as_shown
from witbuild.bit_depth import eight_bit_png, png_bit_depth
from witbuild.demo.images import ImageServer, skimage_image

SIDE = 96  # the download's image_size
# mean absolute difference (0-255) to the photo; measured: converted 0.0 (exact), stored by the download 1.5-2.2
# (resized, JPEG); what img2dataset alone stores: 135-140 (white)
CLOSE = 6.0


def photo(grey: bool = False) -> Image.Image:
    img = skimage_image("chelsea")
    return img.convert("L") if grey else img


def png16(kind: str) -> bytes:
    """The photo as a 16-bit PNG of colour type ``kind``: grey, grey_alpha, colour, colour_alpha."""
    grey = kind.startswith("grey")
    pixels = np.asarray(photo(grey), np.uint16) * 257
    if not grey:
        pixels = pixels[..., ::-1]  # OpenCV writes BGR
    if kind.endswith("alpha"):
        alpha = np.full(pixels.shape[:2], 65535, np.uint16)
        pixels = np.dstack([pixels, pixels, pixels, alpha]) if grey else np.dstack([pixels, alpha])
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


KINDS = ("grey", "grey_alpha", "colour", "colour_alpha")


def difference(image: Image.Image, kind: str) -> float:
    reference = photo(kind.startswith("grey")).convert("RGB").resize(image.size, Image.BILINEAR)
    return float(np.abs(np.asarray(image.convert("RGB"), np.float32) - np.asarray(reference, np.float32)).mean())


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        for kind in KINDS:
            srv.add(f"/{kind}.png", png16(kind), "image/png")
        srv.add("/page.html", "".join(f'<img src="/{k}.png" alt="{k}">' for k in KINDS).encode(),
                "text/html; charset=utf-8")
        yield srv


def test_the_files_are_16_bit_and_show_the_photo_in_a_browser(server, tmp_path: Path) -> None:
    assert [png_bit_depth(png16(k)[:32]) for k in KINDS] == [16] * 4
    for kind, drawn in zip(KINDS, images_as_shown(server.url("/page.html"), tmp_path / "profile"), strict=True):
        assert difference(drawn, kind) < CLOSE, kind  # measured 0.0


def test_png_bit_depth_reads_the_header() -> None:
    def png(img: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG", **kw)
        return buf.getvalue()[:32]

    small = photo().resize((40, 30))
    assert png_bit_depth(png(small)) == 8
    assert png_bit_depth(png(small.convert("1"))) == 1
    assert png_bit_depth(png(small.convert("P"), bits=4)) == 4
    assert png_bit_depth(png(Image.fromarray(np.asarray(small.convert("L"), np.uint16) * 257))) == 16
    buf = io.BytesIO()
    small.save(buf, "JPEG")
    assert png_bit_depth(buf.getvalue()[:32]) is None
    assert png_bit_depth(b"\x89PNG\r\n\x1a\n") is None  # cut short


@pytest.mark.parametrize("kind", KINDS)
def test_eight_bit_png_keeps_the_picture_exactly(kind: str) -> None:
    converted = eight_bit_png(png16(kind))
    assert png_bit_depth(converted[:32]) == 8
    image = Image.open(io.BytesIO(converted))
    assert image.mode == {"grey": "L", "grey_alpha": "RGBA", "colour": "RGB", "colour_alpha": "RGBA"}[kind]
    assert difference(image, kind) == 0.0


def test_img2dataset_alone_stores_them_white() -> None:
    """The reason for the conversion: should img2dataset ever handle 16 bits itself, this fails."""
    from img2dataset.resizer import ResizeMode, Resizer

    resizer = Resizer(image_size=SIDE, resize_mode=ResizeMode.keep_ratio, resize_only_if_bigger=True,
                      encode_format="jpg", encode_quality=95, min_image_size=10)
    for kind in KINDS:
        stored, *_, error = resizer(io.BytesIO(png16(kind)))
        assert error is None
        assert difference(Image.open(io.BytesIO(stored)), kind) > 20 * CLOSE, kind


@pytest.mark.slow
def test_the_download_stores_the_photo_and_counts_each_conversion(server, tmp_path: Path) -> None:
    import img2dataset

    from witbuild.dedup.shard_signatures import read_events
    from witbuild.download import img2dataset_guarded

    out = tmp_path / "out"
    pq.write_table(pa.table({"url": [server.url(f"/{k}.png") for k in KINDS], "text": list(KINDS)}),
                   tmp_path / "in.parquet")
    with img2dataset_guarded(["127.0.0.1"], sign=True, upright=True):
        img2dataset.download(url_list=str(tmp_path / "in.parquet"), input_format="parquet", url_col="url",
                             caption_col="text", output_folder=str(out), output_format="webdataset",
                             distributor="multiprocessing", processes_count=1, thread_count=4, image_size=SIDE,
                             resize_mode="keep_ratio", min_image_size=10, compute_hash="sha256", enable_wandb=False)
    with tarfile.open(out / "00000.tar") as tar:
        stored = {json.loads(tar.extractfile(n[:-4] + ".json").read())["caption"]:
                  Image.open(io.BytesIO(tar.extractfile(n).read())) for n in tar.getnames() if n.endswith(".jpg")}
    assert sorted(stored) == sorted(KINDS)
    for kind, image in stored.items():
        assert min(image.size) == SIDE
        assert difference(image, kind) < CLOSE, kind
    assert read_events(str(out / "00000.tar")) == {"png_16_bit_to_8_bit": 4}
    meta = pq.read_table(out / "00000.parquet").to_pylist()  # the downloaded bytes' hash, not the converted ones'
    import hashlib

    assert {r["caption"]: r["sha256"] for r in meta} == {k: hashlib.sha256(png16(k)).hexdigest() for k in KINDS}
