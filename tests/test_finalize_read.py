"""Finalize's read of one downloaded shard (``shard_samples``): a row per decodable image, every other row of the
metadata counted by reason, columns img2dataset did not write left null, a broken shard lost alone."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from witbuild.counters import StageCounts
from witbuild.dedup.near import image_signature
from witbuild.demo.images import draw_image, encode
from witbuild.stages.finalize import samples_schema, shard_samples


def _shard(tmp_path, members: dict[str, bytes], meta: list[dict]) -> str:
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.5  # a float time, as img2dataset writes
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.Table.from_pylist(meta), tmp_path / "00000.parquet")
    return str(tar_path)


def _row(key: str, status: str = "success", **extra) -> dict:
    return {"key": key, "url": f"http://127.0.0.1/{key}.jpg", "caption": f"caption {key}", "status": status,
            "error_message": None if status == "success" else "boom", "width": 64, "height": 48,
            "original_width": 128, "original_height": 96, "sha256": f"sha-{key}", **extra}


def test_each_row_is_kept_or_counted(tmp_path):
    good = [encode(draw_image(i, (128, 96)), "jpeg") for i in range(3)]
    members = {f"{i:09d}.jpg": data for i, data in enumerate(good)}
    members.update({f"{i:09d}.txt": b"t" for i in range(3)})
    members["000000004.jpg"] = b"not an image"
    meta = [_row(f"{i:09d}") for i in range(3)]
    meta[1]["caption"] = None  # img2dataset writes null for an empty caption
    meta += [_row("000000003"),  # success in the metadata, but not in the tar
             _row("000000004"),  # undecodable bytes
             _row("000000005", status="failed_to_download")]
    counts = StageCounts()
    batch = shard_samples(_shard(tmp_path, members, meta), counts, samples_schema())
    assert batch.schema.equals(samples_schema())
    rows = batch.to_pylist()
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(3)]
    assert counts.rows_in == 5 and dict(counts.dropped) == {"missing_in_tar": 1, "undecodable_image": 1}
    for r, data in zip(rows, good, strict=True):
        h, thumb = image_signature(data)  # type: ignore[misc]
        assert (r["_phash"] & (2**64 - 1), r["_thumb"], r["phash"]) == (h, thumb, f"{h:016x}")
        assert r["shard"] == "00000.tar" and r["sha256"] == f"sha-{r['key']}"
        assert r["page_url"] is None and r["matched"] is None and r["uid"] == ""  # columns not downloaded
    assert rows[1]["text"] == "" and rows[0]["text"] == "caption 000000000"


def test_extra_columns_travel_and_a_broken_shard_is_lost_alone(tmp_path):
    members = {"000000000.jpg": encode(draw_image(7, (96, 96)), "png")}
    meta = [_row("000000000", uid="u0", page_url="http://127.0.0.1/p", matched=[3, 9], lang="en")]
    rows = shard_samples(_shard(tmp_path, members, meta), StageCounts(), samples_schema()).to_pylist()
    assert (rows[0]["uid"], rows[0]["page_url"], rows[0]["matched"], rows[0]["lang"]) == (
        "u0", "http://127.0.0.1/p", [3, 9], "en")
    (tmp_path / "00000.tar").write_bytes(b"garbage" * 100)
    counts = StageCounts()
    batch = shard_samples(str(tmp_path / "00000.tar"), counts, samples_schema())
    assert batch.num_rows == 0 and batch.schema.equals(samples_schema())
    assert counts.events == {"unreadable_shards": 1}
