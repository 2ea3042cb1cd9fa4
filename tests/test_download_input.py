"""The download stage's URL list: the rows of the previous stage that may be fetched, whole and in their order.

Only (row, url) goes through the policy and robots.txt steps, and the rows are read again for the list, so these
tests check what that must not change: every column of every kept row, the order of the rows, and the rows
dropped, with the dropped rows sent to the tasks (few) or joined away (many), over several read partitions."""

from __future__ import annotations

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
