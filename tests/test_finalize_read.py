"""Finalize's read of one downloaded shard (``shard_samples``): a row per decodable image, every other row of the
metadata counted by reason, columns img2dataset did not write left null, a broken shard lost alone (its rows
counted in and dropped by reason)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

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
    assert (counts.rows_in, dict(counts.dropped), dict(counts.events)) == (
        1, {"unreadable_shard": 1}, {"unreadable_shards": 1})


def _two_images(tmp_path) -> str:
    members = {f"{i:09d}.jpg": encode(draw_image(20 + i, (96, 96)), "jpeg") for i in range(2)}
    return _shard(tmp_path, members, [_row(f"{i:09d}") for i in range(2)] + [_row("000000009", "failed_to_download")])


def test_a_missing_tar_drops_its_success_rows(tmp_path):
    tar = _two_images(tmp_path)
    (tmp_path / "00000.tar").unlink()
    counts = StageCounts()
    assert shard_samples(tar, counts, samples_schema()).num_rows == 0
    assert (counts.rows_in, dict(counts.dropped), dict(counts.events)) == (
        2, {"missing_shard": 2}, {"missing_shards": 1})


def test_unreadable_or_missing_metadata_counts_from_the_stats_file(tmp_path):
    tar = _two_images(tmp_path)
    (tmp_path / "00000_stats.json").write_text('{"count": 3, "successes": 2}')
    (tmp_path / "00000.parquet").write_bytes(b"not parquet")
    counts = StageCounts()
    shard_samples(tar, counts, samples_schema())
    assert (counts.rows_in, dict(counts.dropped)) == (2, {"unreadable_shard": 2})
    (tmp_path / "00000.parquet").unlink()
    counts = StageCounts()
    shard_samples(tar, counts, samples_schema())
    assert (counts.rows_in, dict(counts.dropped)) == (2, {"missing_shard": 2})


def _cut_mid_member(tar_path: str) -> None:
    """Cut the tar inside its last image's data: the reader raises there (a cut between members reads as a
    shorter tar, whose absent images count as missing_in_tar)."""
    path = Path(tar_path)
    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    path.write_bytes(path.read_bytes()[: last.offset_data + last.size // 2])


class _Written:
    """Stands in for img2dataset's writer of a tar that is already on disk."""

    def write(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


def _save_signatures(tar_path: str) -> None:
    """The signatures file the download saves beside a tar, for its images."""
    from witbuild.dedup.shard_signatures import SigningWriter

    writer = SigningWriter(_Written(), tar_path)
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".jpg"):
                writer.write(tar.extractfile(m).read(), m.name.split(".")[0], None, {})
    writer.close()


def test_a_truncated_tar_is_accounted_alike_with_or_without_saved_signatures(tmp_path):
    tar = _two_images(tmp_path)
    _save_signatures(tar)
    signed = StageCounts()
    assert shard_samples(tar, signed, samples_schema()).num_rows == 2
    assert signed.events == {"shards_signed_at_download": 1}
    _cut_mid_member(tar)
    results = []
    for saved in (True, False):
        if not saved:
            (tmp_path / "00000_signatures.arrow").unlink()
        counts = StageCounts()
        assert shard_samples(tar, counts, samples_schema()).num_rows == 0
        results.append((counts.rows_in, dict(counts.dropped), dict(counts.events)))
    assert results == [(2, {"unreadable_shard": 2}, {"unreadable_shards": 1})] * 2


def test_shards_are_listed_from_their_metadata(tmp_path):
    from witbuild.stages.finalize import list_shards

    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00000_signatures.arrow", "00001.parquet",
                 "00002_stats.json", "00003.tar", "_counts.json", "_SUCCESS"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "_robots").mkdir()
    assert list_shards(str(tmp_path)) == [str(tmp_path / f"0000{i}.tar") for i in range(4)]
