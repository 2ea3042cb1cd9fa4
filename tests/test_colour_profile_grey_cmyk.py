"""Grey and CMYK images with an embedded profile are stored in sRGB, as browsers show them.

The profiles are real ones from Debian's packages: ``Gray.icc`` (icc-profiles-free), Artifex's PS Gray, sGray
and CMYK SWOP profiles (ghostscript's libgs-common). The files: a real photo (skimage's ``coffee``) in grey,
under each grey profile, as a JPEG and as a PNG with alpha (which OpenCV makes RGB); the photo converted to CMYK
for SWOP print, as Photoshop does (LittleCMS), and saved as a CMYK JPEG with and without its profile. The
reference is headless Chromium's drawing of each file (skcms); img2dataset alone stores the numbers read as sRGB.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.helpers.cdp import images_as_shown
from tests.helpers.guarded_download import download_guarded
from witbuild.colour_profile import cmyk_in_srgb, converts, embedded_profile, profile_mode
from witbuild.demo.images import ImageServer, skimage_image
from witbuild.image_head import grey_file, read_head

SIDE = 256
PROFILES = {"gray": "/usr/share/color/icc/Gray.icc", "ps_gray": "/usr/share/color/icc/ghostscript/ps_gray.icc",
            "sgray": "/usr/share/color/icc/ghostscript/default_gray.icc",
            "swop": "/usr/share/color/icc/ghostscript/default_cmyk.icc",
            "adobe": "/usr/share/color/icc/compatibleWithAdobeRGB1998.icc"}
MISSING = [path for path in PROFILES.values() if not Path(path).exists()]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"no {MISSING}: apt-get install icc-profiles-free libgs-common")


def profile(name: str) -> bytes:
    return Path(PROFILES[name]).read_bytes()


def encoded(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def files() -> dict[str, bytes]:
    photo = skimage_image("coffee")
    grey = photo.convert("L")
    grey_alpha = grey.convert("LA")
    srgb = ImageCms.createProfile("sRGB")
    swop = ImageCms.ImageCmsProfile(io.BytesIO(profile("swop")))
    cmyk = ImageCms.profileToProfile(photo, srgb, swop, outputMode="CMYK")
    return {"grey gray": encoded(grey, icc_profile=profile("gray")),
            "grey ps_gray": encoded(grey, icc_profile=profile("ps_gray")),
            "grey sgray": encoded(grey, icc_profile=profile("sgray")),
            "grey alpha gray": encoded(grey_alpha, "PNG", icc_profile=profile("gray")),
            "cmyk swop": encoded(cmyk, icc_profile=profile("swop")),
            "cmyk bare": encoded(cmyk),
            # a grey profile on a colour file: ignored by Chromium; an RGB one on a grey file: applied
            "colour gray": encoded(photo, icc_profile=profile("gray")),
            "colour alpha gray": encoded(photo.convert("RGBA"), "PNG", icc_profile=profile("gray")),
            "grey adobe": encoded(grey, icc_profile=profile("adobe")),
            "grey png adobe": encoded(grey, "PNG", icc_profile=profile("adobe"))}


FILES = files() if not MISSING else {}
NAMES = list(FILES)
CONVERTED = ["grey gray", "grey ps_gray", "grey alpha gray", "cmyk swop"]  # what browsers show changed
UNCHANGED = ["grey sgray", "cmyk bare", "colour gray", "colour alpha gray"]
ADOBE_ON_GREY = ["grey adobe", "grey png adobe"]  # Adobe RGB's 2.2 curve against sRGB's: a small change


def difference(image: Image.Image, reference: Image.Image) -> float:
    scaled = reference.convert("RGB").resize(image.size, Image.BOX)  # as OpenCV's INTER_AREA shrinks
    return float(np.abs(np.asarray(image.convert("RGB"), np.float32) - np.asarray(scaled, np.float32)).mean())


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        for i, name in enumerate(NAMES):
            srv.add(f"/{i}", FILES[name], "image/png" if FILES[name].startswith(b"\x89PNG") else "image/jpeg")
        srv.add("/page.html", "".join(f'<img src="/{i}">' for i in range(len(NAMES))).encode(),
                "text/html; charset=utf-8")
        yield srv


@pytest.fixture(scope="module")
def shown(server, tmp_path_factory) -> dict[str, Image.Image]:
    drawn = images_as_shown(server.url("/page.html"), tmp_path_factory.mktemp("chromium-profile"))
    return dict(zip(NAMES, drawn, strict=True))


def as_numbers(name: str) -> Image.Image:
    """The file's numbers read as sRGB, as OpenCV reads them (a CMYK file's inks turned to RGB without a profile,
    a grey file with alpha matted on white)."""
    image = Image.open(io.BytesIO(FILES[name]))
    if image.mode == "LA":
        white = Image.new("RGBA", image.size, "white")
        white.alpha_composite(image.convert("RGBA"))
        return white.convert("RGB")
    return image.convert("RGB")


def test_the_browser_applies_the_profiles(shown) -> None:
    for name in CONVERTED:  # measured: 58.0 (Gray), 58.0 (PS Gray), 58.0 (with alpha), 37.6 (SWOP)
        assert difference(shown[name], as_numbers(name)) > 20, name
    # measured 0.0 and 1.3 (sGray is sRGB's grey; no profile), 0.0 for the mismatched profiles
    for name in UNCHANGED:
        assert difference(shown[name], as_numbers(name)) < 2, name
    for name in ADOBE_ON_GREY:  # measured 2.17 from the numbers, 0.06 from LittleCMS's conversion of them
        applied = ImageCms.profileToProfile(as_numbers(name), ImageCms.ImageCmsProfile(io.BytesIO(profile("adobe"))),
                                            ImageCms.createProfile("sRGB"), outputMode="RGB")
        assert difference(shown[name], applied) < difference(shown[name], as_numbers(name)) / 10, name


def test_the_profiles_found_and_what_they_apply_to() -> None:
    def found(name: str) -> bytes | None:
        return embedded_profile(io.BytesIO(FILES[name]))

    def applied(name: str) -> bool:
        data = FILES[name]
        return converts(found(name), grey_file(read_head(io.BytesIO(data))))

    assert {name: found(name) is not None for name in NAMES} == {
        "grey gray": True, "grey ps_gray": True, "grey sgray": False, "grey alpha gray": True, "cmyk swop": True,
        "cmyk bare": False, "colour gray": True, "colour alpha gray": True, "grey adobe": True,
        "grey png adobe": True}
    assert [profile_mode(profile(name)) for name in ("gray", "ps_gray", "swop", "adobe")] == ["L", "L", "CMYK", "RGB"]
    # applied after the resize: grey profiles to grey files (with alpha too), RGB ones to any; CMYK ones before it
    assert [name for name in NAMES if applied(name)] == [
        "grey gray", "grey ps_gray", "grey alpha gray", "grey adobe", "grey png adobe"]


def test_cmyk_in_srgb_is_close_to_the_browser(shown) -> None:
    converted = Image.open(io.BytesIO(cmyk_in_srgb(FILES["cmyk swop"], profile("swop"))))
    assert converted.mode == "RGB" and converted.size == shown["cmyk swop"].size
    # measured 9.6 (LittleCMS and skcms differ on this profile; perceptual intent: 16.7), without it 37.6
    assert difference(converted, shown["cmyk swop"]) < 12
    with pytest.raises(ValueError, match="CMYK profile on a L image"):
        cmyk_in_srgb(FILES["grey gray"], profile("swop"))


def test_a_cmyk_image_past_the_pixel_cap_is_left_to_img2dataset(monkeypatch) -> None:
    """The download's cap on pixels (OpenCV's, before it decodes) holds for the CMYK decoding too."""
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", str(600 * 400 - 1))  # the photo is 600×400
    with pytest.raises(ValueError, match="more than the download's cap"):
        cmyk_in_srgb(FILES["cmyk swop"], profile("swop"))


@pytest.mark.slow
@pytest.mark.parametrize("srgb", [False, True])
def test_the_download_stores_what_the_browser_shows(server, shown, tmp_path: Path, srgb: bool) -> None:
    from witbuild.dedup.shard_signatures import read_events

    stored = download_guarded([server.url(f"/{i}") for i in range(len(NAMES))], NAMES, tmp_path / "out", SIDE,
                              srgb=srgb, upright=True)
    assert sorted(stored) == sorted(NAMES)
    off = {name: round(difference(stored[name], shown[name]), 1) for name in NAMES}
    events = read_events(str(tmp_path / "out" / "00000.tar"))
    baseline = off["grey sgray"]  # two decoders, two resizes, JPEG: measured 2.3
    if srgb:  # measured: greys 2.1, CMYK SWOP 10.8, CMYK without a profile 4.1 (both OpenCV's plain conversion)
        assert all(off[name] < baseline + 1 for name in NAMES if name.startswith("grey")), off
        assert off["cmyk swop"] < 13 and off["cmyk bare"] < 6, off
        # a grey profile on a colour file is ignored, as by the browser (measured 2.9 and 3.2: the colour photo's
        # two decoders, resizes and JPEG)
        assert off["colour gray"] < 4 and off["colour alpha gray"] < 4, off
        assert events == {"icc_to_srgb": 5, "cmyk_icc_to_srgb": 1}
        assert stored["grey gray"].mode == "L"  # a grey image stays grey
    else:  # img2dataset alone: should it ever convert itself, this fails, and converting again would be wrong
        assert all(off[name] > 20 for name in CONVERTED), off  # measured 38-58
        assert events == {}
