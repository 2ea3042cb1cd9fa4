"""Images with an embedded colour profile are stored in sRGB, as browsers show them.

The file: a real photo (skimage's ``coffee``, saturated reds) whose numbers are declared Display P3 by an ICC v2
profile written out below from the published primaries (no profile file is on the machine). The reference is
headless Chromium, which converts it with its own colour engine (skcms) as it draws it; LittleCMS, which the
download uses, is not the reference. img2dataset alone keeps the numbers and drops the profile: duller colours.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cdp import images_as_shown
from tests.helpers.guarded_download import download_guarded
from tests.helpers.late_metadata import late_jpeg
from witbuild.colour_profile import embedded_profile
from witbuild.demo.images import ImageServer, skimage_image

SIDE = 256
# mean absolute difference (0-255) to Chromium's drawing, at the stored size, above that of the same photo without
# a profile (2.9: two decoders, two resizes, JPEG); measured: converted +0.6, as img2dataset stores it +9.6
CLOSE = 2.0


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _tag_xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def icc_profile(name: str, red: tuple, green: tuple, blue: tuple, gamma: float) -> bytes:
    """An ICC v2 display profile (matrix and gamma curves), from its primaries adapted to D50."""
    text = name.encode("ascii") + b"\0"
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 70),
            (b"wtpt", _tag_xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _tag_xyz(*red)), (b"gXYZ", _tag_xyz(*green)),
            (b"bXYZ", _tag_xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text\0\0\0\0test profile\0")]
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, body in tags:
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = (struct.pack(">I", start + len(data)) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


# Display P3's primaries, adapted to D50 (as Apple's profile gives them); a plain 2.2 gamma
DISPLAY_P3 = icc_profile("Display P3 (test)", (0.515102, 0.241182, -0.001049), (0.291965, 0.692236, 0.041882),
                         (0.157153, 0.066582, 0.784378), 2.2)


def photo_bytes(fmt: str = "JPEG", turned: bool = False, **kw) -> bytes:
    """The photo; ``turned``: stored on its side with EXIF orientation 6, which turns it back."""
    img = skimage_image("coffee")
    if turned:
        img = img.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, fmt, quality=95, **kw)
    return buf.getvalue()


def difference(image: Image.Image, reference: Image.Image) -> float:
    assert image.width > image.height and reference.width > reference.height  # both upright
    scaled = reference.convert("RGB").resize(image.size, Image.BOX)  # as OpenCV's INTER_AREA shrinks
    return float(np.abs(np.asarray(image.convert("RGB"), np.float32) - np.asarray(scaled, np.float32)).mean())


NAMES = ("p3", "srgb", "p3-turned", "p3-turned-late")  # the files, /NAME.jpg
CAPTIONS = tuple(name.replace("-", " ") for name in NAMES)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        srv.add("/p3.jpg", photo_bytes(icc_profile=DISPLAY_P3), "image/jpeg")
        srv.add("/srgb.jpg", photo_bytes(), "image/jpeg")
        srv.add("/p3-turned.jpg", photo_bytes(turned=True, icc_profile=DISPLAY_P3), "image/jpeg")
        # EXIF and profile after 120 kB of XMP, as Photoshop may write them
        srv.add("/p3-turned-late.jpg", late_jpeg(photo_bytes(turned=True, icc_profile=DISPLAY_P3)), "image/jpeg")
        srv.add("/page.html", "".join(f'<img src="/{name}.jpg">' for name in NAMES).encode(),
                "text/html; charset=utf-8")
        yield srv


@pytest.fixture(scope="module")
def shown(server, tmp_path_factory) -> dict[str, Image.Image]:
    drawn = images_as_shown(server.url("/page.html"), tmp_path_factory.mktemp("chromium-profile"))
    return dict(zip(CAPTIONS, drawn, strict=True))


def test_the_browser_shows_the_profiled_photo_more_saturated(shown) -> None:
    assert difference(shown["p3"], shown["srgb"]) > 4 * CLOSE  # measured 11.8: the profile changes what is shown
    # EXIF and profile past the first 64 kB are applied all the same: the same pixels are shown (measured 0.0)
    assert difference(shown["p3 turned late"], shown["p3 turned"]) < CLOSE / 4


def test_only_rgb_profiles_other_than_srgb_are_converted() -> None:
    from PIL import ImageCms

    assert embedded_profile(io.BytesIO(photo_bytes(icc_profile=DISPLAY_P3))) == DISPLAY_P3
    assert embedded_profile(io.BytesIO(photo_bytes())) is None
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert embedded_profile(io.BytesIO(photo_bytes(icc_profile=srgb))) is None
    png = io.BytesIO()
    skimage_image("coffee").save(png, "PNG", icc_profile=DISPLAY_P3)
    assert embedded_profile(io.BytesIO(png.getvalue())) == DISPLAY_P3
    assert embedded_profile(io.BytesIO(b"\xff\xd8 ICC_PROFILE but no image")) is None


@pytest.mark.slow
@pytest.mark.parametrize("srgb", [False, True])
def test_the_download_stores_what_the_browser_shows(server, shown, tmp_path: Path, srgb: bool) -> None:
    from witbuild.dedup.shard_signatures import read_events

    stored = download_guarded([server.url(f"/{name}.jpg") for name in NAMES], list(CAPTIONS), tmp_path / "out", SIDE,
                              srgb=srgb, upright=True)
    baseline = difference(stored["srgb"], shown["srgb"])
    assert baseline < 2 * CLOSE
    events = read_events(str(tmp_path / "out" / "00000.tar"))
    profiled = [name for name in CAPTIONS if name.startswith("p3")]
    if srgb:  # the turned ones are converted and turned, and encoded once more
        for name in profiled:
            assert difference(stored[name], shown[name]) < baseline + CLOSE, name
        assert events == {"icc_to_srgb": 3, "exif_turned_upright": 2}
    else:  # img2dataset alone: should it ever convert itself, this fails, and converting again would be wrong
        for name in profiled:
            assert difference(stored[name], shown[name]) > baseline + 3 * CLOSE, name
        assert events == {"exif_turned_upright": 2}
