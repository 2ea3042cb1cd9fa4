"""The download stage's URL list: the rows of the previous stage that may be fetched, whole and in their order.

Only (row, url) goes through the policy and robots.txt steps, and the rows are read again for the list, so these
tests check what that must not change: every column of every kept row, the order of the rows, and the rows
dropped, with the dropped rows sent to the tasks (few) or joined away (many), over several read partitions."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from witbuild.config import BuildConfig
from witbuild.spark import fs_and_path
from witbuild.stages import download
from witbuild.stages.context import StageContext

pytestmark = pytest.mark.spark

# refused by the default network policy in every spelling (witbuild/network.py); none is ever contacted here
REFUSED = ("http://10.1.2.3/a.jpg", "http://127.0.0.1:8080/b.png", "http://[::1]/c.jpg", "http://0x7f.1/d.jpg",
           "http://169.254.169.254/latest/e.jpg", "http://localhost/f.jpg")


def _rows(n: int) -> pa.Table:
    urls = [REFUSED[i // 7 % len(REFUSED)] if i % 7 == 3 else f"https://img{i % 5}.example.org/p/{i}.jpg?s={i}"
            for i in range(n)]
    return pa.table({"uid": [f"{i:032x}" for i in range(n)], "url": urls, "text": [f"caption {i}" for i in range(n)],
                     "matched": [[f"q{i % 3}"] for i in range(n)], "record_offset": pa.array(range(n), pa.int64())})


@pytest.mark.parametrize("broadcast_drops", [download.BROADCAST_DROPS, 0])
def test_the_url_list_is_the_allowed_rows_whole_and_in_order(spark, tmp_path: Path, monkeypatch,
                                                              broadcast_drops: int) -> None:
    monkeypatch.setattr(download, "BROADCAST_DROPS", broadcast_drops)
    table = _rows(700)
    previous = tmp_path / "dedup"
    previous.mkdir()
    pq.write_table(table, previous / "part-00000.parquet", row_group_size=50)  # one file, as dedup writes it
    cfg = BuildConfig.model_validate({"input": {"paths": ["unused.warc.gz"]}, "output": str(tmp_path / "build"),
                                      "download": {"respect_robots": False}})
    ctx = StageContext(spark, cfg, str(tmp_path / "out"), str(tmp_path / "counts"), str(previous), "download")
    fs, out = fs_and_path(ctx.output)
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "4096")  # several read partitions of the one file
    try:
        assert spark.read.parquet(str(previous)).rdd.getNumPartitions() > 2
        counts, kept = download.prepare_input(ctx, fs, out, str(tmp_path / "list"))
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    written = pq.read_table(tmp_path / "list")
    refused = [u in REFUSED for u in table.column("url").to_pylist()]
    expected = table.filter(pa.array([not r for r in refused]))
    assert (kept, counts.dropped) == (expected.num_rows, {"blocked_address": sum(refused)})
    assert written.schema.names == table.schema.names
    assert written.to_pylist() == expected.to_pylist()
    assert not Path(f"{tmp_path / 'list'}.decided").exists()


@pytest.mark.parametrize("max_partition_bytes", ["128m", "16384"])
def test_the_url_list_is_cut_the_same_whatever_the_read_splits(spark, tmp_path: Path, monkeypatch,
                                                               max_partition_bytes: str) -> None:
    """A pool past ``ROWS_PER_FILE`` rows comes from dedup as several files, in order. Spark reads a folder's files
    largest first, in splits that follow its settings and the machine's cores (in no fingerprint), and its range
    partitioning cuts at sampled bounds that move from run to run. img2dataset cuts each file of the list into
    shards, and cuts it again when a download resumes: the list must follow the files' order, in files of a
    whole number of shards, the same on every run."""
    monkeypatch.setattr(download, "ROWS_PER_FILE", 3000)
    table = _rows(20_000)
    previous = tmp_path / "dedup"
    previous.mkdir()
    for i, (start, n) in enumerate(((0, 2500), (2500, 9000), (11_500, 6000), (17_500, 2500))):  # sizes unlike order
        pq.write_table(table.slice(start, n), previous / f"part-{i:05d}.parquet", row_group_size=500)
    cfg = BuildConfig.model_validate({"input": {"paths": ["unused.warc.gz"]}, "output": str(tmp_path / "build"),
                                      "download": {"respect_robots": False, "number_sample_per_shard": 1000}})
    kept = [r for r in table.to_pylist() if r["url"] not in REFUSED]
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", max_partition_bytes)
    try:
        for run in range(2):
            ctx = StageContext(spark, cfg, str(tmp_path / "out"), str(tmp_path / "counts"), str(previous), "download")
            fs, out = fs_and_path(ctx.output)
            listed = tmp_path / f"list{run}"
            download.prepare_input(ctx, fs, out, str(listed))
            files = sorted(listed.glob("*.parquet"))
            assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [3000] * 5 + [len(kept) - 15_000]
            assert [r for f in files for r in pq.read_table(f).to_pylist()] == kept
            assert download.expected_shards(fs, str(listed), 1000) == {
                f"{k:05d}": min(1000, len(kept) - 1000 * k) for k in range(math.ceil(len(kept) / 1000))}
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)


def test_the_funnel_reads_the_metadata_of_finished_shards_only(spark, tmp_path: Path) -> None:
    """Read as the folder when it holds exactly the finished shards' metadata (a listing job fewer), else one by
    one; the robots.txt table in ``_robots/`` is never read as metadata."""
    (tmp_path / download.ROBOTS_DIR).mkdir()
    pq.write_table(pa.table({"status": ["success"] * 5}), tmp_path / download.ROBOTS_DIR / "part-0.parquet")
    for shard, statuses in (("00000", ["success", "failed_to_download"]), ("00001", ["success"] * 3)):
        pq.write_table(pa.table({"key": [f"{shard}{i:04d}" for i in range(len(statuses))], "status": statuses,
                                 "error_message": pa.array([None if s == "success" else "HTTP 404" for s in statuses],
                                                           pa.string())}),
                       tmp_path / f"{shard}{download.META_SUFFIX}")
    fs, out = fs_and_path(str(tmp_path))

    def funnel(finished: list[str]) -> list[tuple]:
        frame = download._metadata(spark, fs, out, finished)
        return sorted(tuple(r) for r in frame.groupBy("status", "error_message").count().collect())

    assert funnel(["00000", "00001"]) == [("failed_to_download", "HTTP 404", 1), ("success", None, 4)]
    assert funnel(["00001"]) == [("success", None, 3)]  # 00000 is not finished: left out


def test_a_resume_refuses_shards_cut_in_another_row_order(tmp_path: Path) -> None:
    """Shards an older witbuild cut from Spark's read order cannot be completed from rows in the files' order."""
    fs, out = fs_and_path(str(tmp_path))
    download.same_cut(fs, out)  # a fresh folder: the order is recorded before any shard
    assert (tmp_path / download.ROW_ORDER_FILE).read_text() == download.ROW_ORDER + "\n"
    (tmp_path / f"00000{download.STATS_SUFFIX}").write_text("{}")
    download.same_cut(fs, out)  # a resume of shards cut in this order
    (tmp_path / download.ROW_ORDER_FILE).unlink()  # shards of an older witbuild
    with pytest.raises(download.ShardsIncompleteError, match=r"\(Spark read order.*--from-stage download"):
        download.same_cut(fs, out)
    (tmp_path / download.ROW_ORDER_FILE).write_text("by hand\n")
    with pytest.raises(download.ShardsIncompleteError, match=r"another order \(by hand"):
        download.same_cut(fs, out)


def test_a_cut_that_would_lose_rows_fails(spark, tmp_path: Path) -> None:
    """Should the kept counts ever disagree with the rows (a row of an input file not counted), the cut fails
    instead of writing a list without them."""
    previous = tmp_path / "dedup"
    previous.mkdir()
    for i in range(2):
        pq.write_table(_rows(10), previous / f"part-{i:05d}.parquet")
    rows = download.in_file_order(spark, str(previous))
    fs, _ = fs_and_path(str(tmp_path))
    with pytest.raises(RuntimeError, match="URL list"):
        download.write_cut(fs, rows, {0: 10}, str(tmp_path / "list"), 4)  # file 1's rows not counted
    download.write_cut(fs, rows, {0: 10, 1: 10}, str(tmp_path / "whole"), 4)
    assert [pq.ParquetFile(f).metadata.num_rows for f in sorted((tmp_path / "whole").glob("*.parquet"))] == [
        4, 4, 4, 4, 4]
