"""``witbuild stats`` shows near-duplicate removals with their kept counterpart (counts, examples, thumbnails)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.test_stats import SHARD0, SHARD1, make_build, run_cli, sample_members, validate, write_tar
from witbuild import schemas
from witbuild.demo.images import draw_shapes, encode


def _with_record(build: Path, in_dataset: bool | None = True) -> Path:
    """The hand-made build plus one near-duplicate removal: 00010001 (only in the download stage's tar) as a
    duplicate of the kept 00000000, both real JPEGs."""
    picture = draw_shapes("star", "red", 1)
    kept_jpg, removed_jpg = encode(picture, "jpg", 90), encode(picture.resize((200, 150)), "jpg", 70)
    final = sample_members(SHARD0[:3], "jpg") | {"00000000.jpg": kept_jpg}
    write_tar(build / "stages" / "finalize" / "00000.tar", final)
    download = sample_members(SHARD1, "jpg") | {"00010001.jpg": removed_jpg}
    write_tar(build / "stages" / "download" / "00001.tar", download)
    record = build / "stages" / "finalize" / "near_duplicates.parquet"
    record.mkdir()
    table = schemas.load("near_duplicates").table({
        "key": ["00010001"], "shard": ["00001.tar"], "url": ["http://img.test/f.jpeg"], "text": ["tree tree"],
        "phash": ["0123456789abcdef"], "duplicate_of": ["00000000"], "duplicate_of_shard": ["00000.tar"],
        "duplicate_of_url": ["http://img.test/a.jpg"], "duplicate_of_in_dataset": [bool(in_dataset)],
        "phash_distance": [2], "colour_mean": [0.8], "colour_tail": [3.5]})
    if in_dataset is None:  # a record from before the column
        table = table.drop_columns(["duplicate_of_in_dataset"])
    pq.write_table(table, record / "part-00000-x.snappy.parquet")
    return build


def test_report_terminal_and_html_show_the_pairs(tmp_path: Path) -> None:
    build = _with_record(make_build(tmp_path / "build"))
    code, out, err = run_cli(str(build), "--json")
    assert code == 0, err
    report = json.loads(out)
    validate(report)
    nd = report["near_duplicates"]
    assert (nd["removed"], nd["kept_counterparts"], nd["by_phash_distance"]) == (1, 1, [{"bits": 2, "count": 1}])
    assert nd["counterparts_not_in_dataset"] == 0
    assert nd["source"] == "stages/finalize/near_duplicates.parquet"
    assert [(e["key"], e["duplicate_of"]) for e in nd["examples"]] == [("00010001", "00000000")]

    code, out, err = run_cli(str(build))
    assert code == 0, err
    assert "1 removed as near duplicates of 1 kept samples" in out and "→ kept 00000000" in out

    page = tmp_path / "report.html"
    code, _, err = run_cli(str(build), "--html", str(page))
    assert code == 0, err
    section = page.read_text().split("<h2>Near duplicates removed", 1)[1]  # the gallery above has thumbnails too
    thumbs = re.findall(r'<img class="thumb"[^>]* alt="([^"]*)" src="data:image/jpeg;base64,([^"]+)"', section)
    assert [alt for alt, _ in thumbs] == ["removed 00010001", "kept 00000000"]
    for _, data in thumbs:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "JPEG"


def test_a_final_dataset_copied_alone_still_shows_its_kept_images(tmp_path: Path) -> None:
    """The finalize folder copied under another name: the kept images are its own; the removed ones stayed with
    the build's download stage, and say so."""
    build = _with_record(make_build(tmp_path / "build"))
    import shutil

    shutil.copytree(build / "stages" / "finalize", tmp_path / "my-dataset")
    page = tmp_path / "report.html"
    code, _, err = run_cli(str(tmp_path / "my-dataset"), "--html", str(page))
    assert code == 0, err
    section = page.read_text().split("<h2>Near duplicates removed", 1)[1]
    thumbs = re.findall(r'<img class="thumb"[^>]* alt="([^"]*)" src="data:image/jpeg;base64,', section)
    assert thumbs == ["kept 00000000"] and "removed 00010001: image not found" in section


def test_build_without_a_record_has_no_section(tmp_path: Path) -> None:
    build = make_build(tmp_path / "build")
    code, out, err = run_cli(str(build), "--json")
    assert code == 0, err
    assert json.loads(out)["near_duplicates"] is None


@pytest.mark.parametrize(("in_dataset", "line"), [
    (False, "1 of those samples dropped after dedup: not in the dataset"),
    (None, "whether those samples are in the dataset: not recorded")])
def test_a_kept_counterpart_dropped_later_is_not_called_kept(tmp_path: Path, in_dataset: bool | None,
                                                              line: str) -> None:
    """The CLIP-score filter, after dedup, may drop a removal's kept sample: the report says so, and a record
    written before that was recorded does not claim the dataset holds it."""
    build = _with_record(make_build(tmp_path / "build"), in_dataset)
    code, out, err = run_cli(str(build), "--json")
    assert code == 0, err
    report = json.loads(out)
    validate(report)
    assert report["near_duplicates"]["counterparts_not_in_dataset"] == (None if in_dataset is None else 1)
    code, out, err = run_cli(str(build))
    assert code == 0, err
    assert "1 removed as near duplicates of 1 samples" in out and line in out
