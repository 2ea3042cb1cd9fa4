"""Signatures saved while img2dataset's own WebDataset writer writes a shard: the writer's files unchanged, the
signatures those of the bytes in the tar, and finalize's read the same rows and counts with or without them."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from img2dataset.writer import WebDatasetSampleWriter

from witbuild.counters import StageCounts
from witbuild.dedup import shard_signatures
from witbuild.dedup.near import image_signature
from witbuild.dedup.shard_signatures import (
    SigningWriterClass,
    members_path,
    read_members,
    read_signatures,
    signatures_path,
)
from witbuild.demo.images import draw_image, encode
from witbuild.stages.finalize import read_tar_members, rewrite_shard, samples_schema, shard_samples
from witbuild.tar_io import entries_match, tar_entries

SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
                    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                    ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string())])


def _meta(key: str, ok: bool) -> dict:
    return {"url": f"http://127.0.0.1/{key}.jpg", "caption": f"caption {key}", "key": key,
            "status": "success" if ok else "failed_to_download", "error_message": None if ok else "boom",
            "width": 64, "height": 48, "original_width": 64, "original_height": 48, "sha256": f"sha-{key}"}


def _write(folder, writer_class, images: dict[str, bytes | None]) -> str:
    writer = writer_class(0, str(folder), True, 5, SCHEMA, "jpg")
    for key, data in images.items():
        writer.write(data, key, f"caption {key}", _meta(key, data is not None))
    writer.close()
    return str(folder / "00000.tar")


@pytest.fixture()
def images() -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {f"{i:09d}": encode(draw_image(i, (200 + 8 * i, 150)), "jpeg") for i in range(40)}
    out["000000040"] = None  # failed: metadata only
    out["000000041"] = b"GIF89a, but not an image"  # in the tar, undecodable
    out["000000042"] = encode(draw_image(42, (90, 300)), "png")
    return out


def test_writer_files_unchanged_and_signatures_of_the_tar_bytes(tmp_path, images):
    plain, signed = tmp_path / "plain", tmp_path / "signed"
    plain.mkdir(), signed.mkdir()
    # img2dataset pickles the writer class to its download processes
    factory = pickle.loads(pickle.dumps(SigningWriterClass(WebDatasetSampleWriter)))
    tar_plain = _write(plain, WebDatasetSampleWriter, images)
    tar_signed = _write(signed, factory, images)
    assert read_tar_members(tar_signed) == read_tar_members(tar_plain)
    assert pq.read_table(signed / "00000.parquet").equals(pq.read_table(plain / "00000.parquet"))
    saved = read_signatures(tar_signed)
    members = read_tar_members(tar_signed)
    assert saved is not None and set(saved) == set(members) == {k for k, v in images.items() if v is not None}
    for key, files in members.items():
        assert saved[key] == image_signature(files["jpg"])  # None for the undecodable one
    assert saved["000000041"] is None and all(saved[k] is not None for k in saved if k != "000000041")
    assert read_signatures(tar_plain) is None  # no file: finalize decodes


def test_a_signatures_file_that_does_not_match_its_tar_is_not_used(tmp_path, images, monkeypatch):
    tar = _write(tmp_path, SigningWriterClass(WebDatasetSampleWriter), images)
    assert read_signatures(tar) is not None
    monkeypatch.setattr(shard_signatures, "SIGNATURE_VERSION", "another-version")
    assert read_signatures(tar) is None
    monkeypatch.undo()
    with open(tar, "ab") as fh:  # the tar changed after its signatures were saved
        fh.write(b"\0" * 512)
    assert read_signatures(tar) is None
    with open(signatures_path(tar), "wb") as fh:
        fh.write(b"damaged")
    assert read_signatures(tar) is None


def test_a_new_attempt_at_a_shard_never_keeps_the_last_ones_signatures(tmp_path, images):
    tar = _write(tmp_path, SigningWriterClass(WebDatasetSampleWriter), images)
    writer = SigningWriterClass(WebDatasetSampleWriter)(0, str(tmp_path), True, 5, SCHEMA, "jpg")
    writer.write(images["000000001"], "000000001", "c", _meta("000000001", True))  # killed before close
    assert read_signatures(tar) is None and read_members(tar) is None
    writer.inner.close()


def _read(tar: str) -> tuple[list[dict], dict, dict]:
    counts = StageCounts()
    rows = shard_samples(tar, counts, samples_schema()).to_pylist()
    return rows, dict(counts.dropped), dict(counts.events)


def test_finalize_reads_the_same_rows_with_or_without_the_saved_signatures(tmp_path, images):
    tar = _write(tmp_path, SigningWriterClass(WebDatasetSampleWriter), images)
    rows, dropped, events = _read(tar)
    assert events == {"shards_signed_at_download": 1}
    assert len(rows) == 41 and dropped == {"undecodable_image": 1}
    missing = tmp_path / "missing"  # a success the tar lacks: the shard is decoded, so it is counted as before
    missing.mkdir()
    tar_missing = _write(missing, SigningWriterClass(WebDatasetSampleWriter), images)
    meta = pq.read_table(missing / "00000.parquet").to_pylist()
    meta.append({**meta[0], "key": "000000099"})
    pq.write_table(pa.Table.from_pylist(meta, schema=SCHEMA), missing / "00000.parquet")
    assert _read(tar_missing)[1:] == ({"undecodable_image": 1, "missing_in_tar": 1}, {})
    os.remove(signatures_path(tar))  # shards from another tool, or an older download
    assert _read(tar) == (rows, dropped, {})


def test_the_saved_member_list_is_the_tars_listing_and_the_rewrite_is_the_same_without_it(tmp_path, images):
    """The members the writer saved are the tar's own listing (``tar_entries``, on img2dataset's real tar), and
    finalize's rewrite of the shard writes the same bytes from them as from reading the headers."""
    tar = _write(tmp_path, SigningWriterClass(WebDatasetSampleWriter), images)
    with open(tar, "rb") as fh:
        listed = tar_entries(fh)
    assert read_members(tar) == listed and len(listed) == 3 * 42  # jpg (or png, gif), txt and json of each
    wanted = {k for k, v in images.items() if v is not None and int(k) % 3}
    rewrite_shard(tar, str(tmp_path / "from-list.tar"), wanted)
    saved = Path(members_path(tar)).read_bytes()
    os.remove(members_path(tar))
    assert read_members(tar) is None
    rewrite_shard(tar, str(tmp_path / "from-headers.tar"), wanted)
    assert (tmp_path / "from-list.tar").read_bytes() == (tmp_path / "from-headers.tar").read_bytes()
    with open(members_path(tar), "wb") as fh:
        fh.write(saved)
    assert read_members(tar) == listed
    with open(tar, "rb") as fh:
        assert entries_match(fh, listed)
        for shifted in (1, 512, 1536):  # a list that does not describe its tar is not used: the tar is listed
            assert not entries_match(fh, [dataclasses.replace(e, offset_data=e.offset_data + shifted) for e in listed])
        assert not entries_match(fh, [dataclasses.replace(listed[0], size=listed[0].size + 1)])
        assert not entries_match(fh, [dataclasses.replace(listed[0], name="000000099.jpg")])
    table = pa.ipc.open_file(members_path(tar)).read_all()
    moved = table.set_column(1, "offset_data", pa.array([o + 512 for o in table.column(1).to_pylist()], pa.int64()))
    with pa.OSFile(members_path(tar), "wb") as fh, pa.ipc.new_file(fh, moved.schema) as out:
        out.write_table(moved)  # the tar's size as written, every offset wrong
    assert read_members(tar) is not None
    rewrite_shard(tar, str(tmp_path / "from-wrong-list.tar"), wanted)
    assert (tmp_path / "from-wrong-list.tar").read_bytes() == (tmp_path / "from-headers.tar").read_bytes()
    with open(tar, "ab") as fh:  # the tar changed after its members were saved: they are not used
        fh.write(b"\0" * 512)
    assert read_members(tar) is None
    with open(members_path(tar), "wb") as fh:
        fh.write(b"damaged")
    assert read_members(tar) is None
