"""Decontamination against an evaluation folder: finalize's near-duplicate rule (pHash and colour), evaluation
images hashed as the download stores images, and the folder read whole (symlinked subfolders, unreadable files)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from witbuild.dedup.eval_set import (
    check_eval_folder,
    contaminated,
    read_eval_set,
    stored_as_downloaded,
    walk_files,
)
from witbuild.dedup.near import ColourLimits, image_signatures
from witbuild.download import DownloadConfig
from witbuild.fingerprint import folder_digest
from witbuild.sources.inputs import InputError


def star(colour: str, size: tuple[int, int] = (298, 224)) -> Image.Image:
    """A five-pointed star of one outline on white: colours differ, the grey-level picture pHash sees hardly."""
    w, h = size
    im = Image.new("RGB", size, "white")
    points = [(w / 2 + (0.3 if k % 2 == 0 else 0.125) * w * np.cos(np.pi / 2 + k * np.pi / 5),
               h / 2 - (0.3 if k % 2 == 0 else 0.125) * w * np.sin(np.pi / 2 + k * np.pi / 5)) for k in range(10)]
    ImageDraw.Draw(im).polygon(points, fill=colour)
    return im


def jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def flagged(web: list[bytes], folder: Path, threshold: int, limits: ColourLimits | None = ColourLimits(),
            stored: object = None) -> list[bool]:
    ref = read_eval_set(str(folder), stored)  # type: ignore[arg-type]
    sigs = image_signatures(web)
    return contaminated([s[0] for s in sigs], [s[1] for s in sigs], ref, threshold, threshold + 1, limits).tolist()


def test_colour_variants_of_an_eval_image_are_kept_and_its_copy_removed(tmp_path: Path) -> None:
    """A blue and a green star of the red evaluation star's outline are distinct images (pHash-near, colour far);
    the red star re-encoded is a copy. pHash alone would remove all three."""
    (tmp_path / "red_star.jpg").write_bytes(jpeg(star("red"), 95))
    web = [jpeg(star("blue"), 95), jpeg(star("green"), 95), jpeg(star("red"), 80)]
    assert flagged(web, tmp_path, 4) == [False, False, True]
    assert flagged(web, tmp_path, 4, limits=None) == [True, True, True]  # the colour check off: pHash decides


def test_an_exact_copy_as_the_download_stores_it_is_caught(tmp_path: Path) -> None:
    """A large evaluation drawing served as it is reaches the dataset resized and re-encoded; hashed at full size
    it lands far (14 bits here) from that stored copy, hashed as the download stores it, on it."""
    original = io.BytesIO()
    star("red", (1200, 900)).save(original, "PNG")
    (tmp_path / "red_star.png").write_bytes(original.getvalue())
    store = stored_as_downloaded(DownloadConfig())
    served = store(original.getvalue())
    assert Image.open(io.BytesIO(served)).size != (1200, 900)
    assert flagged([served], tmp_path, 2, stored=store) == [True]


def test_unreadable_files_are_named_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(star("red"), 95))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.jpg").write_bytes(jpeg(star("red"), 95)[:40])
    with caplog.at_level(logging.WARNING, logger="witbuild.dedup.eval_set"):
        ref = read_eval_set(str(tmp_path))
    assert ref.names == ["a.jpg"] and ref.skipped == ["notes.txt", "sub/broken.jpg"]
    assert "2 file(s)" in caplog.text and "notes.txt, sub/broken.jpg" in caplog.text


@pytest.mark.parametrize("kind", ["missing", "file", "no_image"])
def test_a_folder_without_a_readable_image_is_one_input_error(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "eval"
    if kind == "file":
        folder.write_text("x")
    elif kind == "no_image":
        folder.mkdir()
        (folder / "readme.txt").write_text("no pictures here")
        (folder / "logo.svg").write_text("<svg/>")
    for read in (read_eval_set, check_eval_folder):  # finalize's read, and the check before Spark starts
        with pytest.raises(InputError) as caught:
            read(str(folder))
        message = str(caught.value)
        assert "\n" not in message and message.startswith("dedup.decontaminate: ")
        assert ("no readable image" in message and "(2 files skipped)" in message) if kind == "no_image" \
            else "not a folder of images" in message
    if kind == "no_image":
        (folder / "sub").mkdir()
        (folder / "sub" / "ok.jpg").write_bytes(jpeg(star("red"), 95))
        check_eval_folder(str(folder))


def test_symlinked_subfolders_are_read_and_cycles_are_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "green.jpg").write_bytes(jpeg(star("green"), 95))
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "red.jpg").write_bytes(jpeg(star("red"), 95))
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a cycle: not entered
    assert [p.relative_to(folder).as_posix() for p in walk_files(folder)] == ["linked/green.jpg", "red.jpg"]
    assert read_eval_set(str(folder)).names == ["linked/green.jpg", "red.jpg"]


def test_folder_digest_sees_files_under_symlinked_subfolders(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(b"1")
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"2")
    alone = folder_digest(folder)
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    linked = folder_digest(folder)
    (elsewhere / "a.jpg").write_bytes(b"changed")
    assert len({alone, linked, folder_digest(folder)}) == 3
