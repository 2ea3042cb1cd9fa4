"""The head of an image, where the download looks for its orientation, profile and bit depth, is all of its
metadata, however large: a JPEG's segments up to its first scan, a PNG's chunks up to its first IDAT.

The files are Pillow's, with a large XMP packet spliced in before their EXIF and ICC profile, as Photoshop
writes its XMP and resource block (each up to 64 kB) before the profile. Chromium's reading of such files, turned
and converted as the early-metadata ones are, is checked in tests/test_colour_profile.py."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers.late_metadata import late_jpeg, late_png
from tests.test_colour_profile import DISPLAY_P3, photo_bytes
from witbuild.colour_profile import embedded_profile
from witbuild.image_head import HEAD_BYTES, MAX_HEAD_BYTES, jpeg_components, read_head
from witbuild.orientation import orientation_of


def png_bytes(**kw) -> bytes:
    from witbuild.demo.images import skimage_image

    buf = io.BytesIO()
    skimage_image("coffee").save(buf, "PNG", **kw)
    return buf.getvalue()


def test_a_jpeg_head_ends_at_its_first_scan() -> None:
    for data in (photo_bytes(), photo_bytes(icc_profile=DISPLAY_P3), late_jpeg(photo_bytes(turned=True))):
        head = read_head(io.BytesIO(data))
        assert data[len(head):len(head) + 2] == b"\xff\xda" and head == data[:len(head)]
    assert len(read_head(io.BytesIO(late_jpeg(photo_bytes())))) > HEAD_BYTES


def test_a_png_head_ends_at_its_first_idat() -> None:
    for data in (png_bytes(), late_png(png_bytes(icc_profile=DISPLAY_P3))):
        head = read_head(io.BytesIO(data))
        assert data[len(head) + 4:len(head) + 8] == b"IDAT" and head == data[:len(head)]


def test_metadata_past_64_kb_is_found() -> None:
    for data in (late_jpeg(photo_bytes(icc_profile=DISPLAY_P3)), late_png(png_bytes(icc_profile=DISPLAY_P3))):
        assert data.index(b"ICC_PROFILE" if data.startswith(b"\xff\xd8") else b"iCCP") > HEAD_BYTES + 1000
        assert Image.open(io.BytesIO(data)).info["icc_profile"] == DISPLAY_P3  # the files are well formed
        assert embedded_profile(io.BytesIO(data)) == DISPLAY_P3
    turned = late_jpeg(photo_bytes(turned=True))
    assert turned.index(b"Exif") > HEAD_BYTES + 1000
    assert orientation_of(io.BytesIO(turned)) == 6


def test_other_files_give_their_first_64_kb() -> None:
    data = bytes(range(256)) * 1024
    assert read_head(io.BytesIO(data)) == data[:HEAD_BYTES]


def test_bytes_between_segments_are_skipped_as_libjpeg_skips_them() -> None:
    """Chromium and Pillow read the EXIF and profile of a JPEG with junk between its segments: so does the head."""
    jpeg = photo_bytes(turned=True, icc_profile=DISPLAY_P3)
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    for junk in (b"\x00\x00", b"junk\xff\x00", b"\xff" * 9):  # stray bytes, a stuffed 0xFF, fill bytes
        data = jpeg[:after_app0] + junk + jpeg[after_app0:]
        head = read_head(io.BytesIO(data))
        assert data[len(head):len(head) + 2] == b"\xff\xda", junk
        assert embedded_profile(io.BytesIO(data)) == DISPLAY_P3 and orientation_of(io.BytesIO(data)) == 6, junk
        assert jpeg_components(head) == 3, junk


def test_a_walk_that_cannot_reach_the_pixels_gives_at_least_64_kb() -> None:
    jpeg = photo_bytes()
    cut = jpeg[:30]  # a segment whose length runs past the end
    assert read_head(io.BytesIO(cut)) == cut
    hostile = {
        "fill bytes": jpeg[:2] + b"\xff" * (MAX_HEAD_BYTES + 10),  # no marker: found in 1 MB regex steps
        "empty segments": jpeg[:2] + b"\xff\xfe\x00\x02" * 2_000_000,  # more than MAX_STEPS
        "empty chunks": png_bytes()[:33] + (b"\x00\x00\x00\x00tEXt\x00\x00\x00\x00") * 1_000_000,
    }
    for name, data in hostile.items():
        assert read_head(io.BytesIO(data)) == data[:HEAD_BYTES], name
    endless = jpeg[:2] + (b"\xff\xe1\xff\xff" + b"\0" * 65_533) * 300  # 19 MB of segments: the walk stops
    assert len(read_head(io.BytesIO(endless))) == MAX_HEAD_BYTES


@pytest.mark.parametrize("stream_at", [0, 1000])
def test_the_stream_is_left_at_its_start(stream_at: int) -> None:
    stream = io.BytesIO(late_jpeg(photo_bytes()))
    stream.seek(stream_at)
    read_head(stream)
    assert stream.tell() == 0


def test_jpeg_components_reads_the_frame_header() -> None:
    photo = Image.open(io.BytesIO(photo_bytes()))
    for mode, components in (("L", 1), ("RGB", 3), ("CMYK", 4)):
        for progressive in (False, True):
            buf = io.BytesIO()
            photo.convert(mode).save(buf, "JPEG", progressive=progressive)
            assert jpeg_components(read_head(buf)) == components, (mode, progressive)
    assert jpeg_components(read_head(io.BytesIO(late_jpeg(photo_bytes())))) == 3  # the frame after 120 kB of XMP
    assert jpeg_components(png_bytes()[:100]) is None
    assert jpeg_components(photo_bytes()[:100]) is None  # cut before the frame header
