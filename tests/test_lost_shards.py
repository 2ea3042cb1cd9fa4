"""No row lost between download and finalize without a count: a shard img2dataset gave up on fails the download
stage (a re-run fetches just that shard), and a downloaded shard that is missing or damaged is dropped by reason
in finalize, so that download rows out == finalize rows in == finalize rows out + drops."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from witbuild import layout
from witbuild.config import load_config
from witbuild.counters import StageCounts
from witbuild.demo.images import ImageServer, draw_image, encode
from witbuild.stages import download as download_stage
from witbuild.stages.download import ShardsIncompleteError, check_finished, expected_shards

# ------------------------------------------------------------------------------------ the download's shard check


def _input_files(folder: Path, sizes: list[int]) -> None:
    folder.mkdir()
    for i, n in enumerate(sizes):
        pq.write_table(pa.table({"url": [f"http://127.0.0.1/{i}/{j}.jpg" for j in range(n)]}),
                       folder / f"part-{i:05d}.parquet")


def test_expected_shards_follow_img2dataset_cut(tmp_path):
    """Each input file is cut on its own, the shard ids running on from file to file."""
    import fsspec

    _input_files(tmp_path / "in", [5, 0, 2])
    assert expected_shards(fsspec.filesystem("file"), str(tmp_path / "in"), 2) == {
        "00000": 2, "00001": 2, "00002": 1, "00003": 2}


def test_a_shard_without_its_stats_file_fails_the_check(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    expected = {"00000": 2, "00001": 2, "00002": 1}
    for name in ("00000", "00002"):
        (tmp_path / f"{name}_stats.json").write_text("{}")
    (tmp_path / "00001.parquet").write_bytes(b"")  # an attempt that never finished
    with pytest.raises(ShardsIncompleteError, match=r"did not finish 1 of 3 shards \(00001\): 2 of 5 rows .*again"):
        check_finished(fs, str(tmp_path), expected)
    (tmp_path / "00001_stats.json").write_text("{}")
    assert check_finished(fs, str(tmp_path), expected) == ["00000", "00001", "00002"]
    (tmp_path / "00003_stats.json").write_text("{}")
    with pytest.raises(ShardsIncompleteError, match="does not cut"):
        check_finished(fs, str(tmp_path), expected)


# --------------------------------------------------------------------------------- finalize over damaged shards


def _download_shard(folder: Path, shard: int, seeds: list[int]) -> int:
    """A shard as img2dataset writes it (tar, metadata with one failed row, stats); returns its successes."""
    name = f"{shard:05d}"
    meta = []
    with tarfile.open(folder / f"{name}.tar", "w") as tar:
        for j, seed in enumerate(seeds):
            key = f"{shard:05d}{j:04d}"
            for ext, data in (("jpg", encode(draw_image(seed, (96, 96)), "jpeg")), ("txt", f"picture {seed}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            meta.append({"key": key, "url": f"http://127.0.0.1/{seed}.jpg", "caption": f"picture {seed}",
                         "status": "success", "error_message": None, "sha256": f"{seed:064x}"})
    meta.append({"key": f"{shard:05d}9999", "url": "http://127.0.0.1/gone.jpg", "caption": "gone",
                 "status": "failed_to_download", "error_message": "HTTP Error 404", "sha256": None})
    pq.write_table(pa.Table.from_pylist(meta), folder / f"{name}.parquet")
    (folder / f"{name}_stats.json").write_text(json.dumps({"count": len(meta), "successes": len(seeds)}))
    return len(seeds)


def _cut_mid_member(tar_path: Path) -> None:
    with tarfile.open(tar_path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    tar_path.write_bytes(tar_path.read_bytes()[: last.offset_data + last.size // 2])


@pytest.mark.spark
def test_finalize_counts_every_downloaded_row(spark, tmp_path):
    """Shard 1's tar removed, shard 2's cut short, every file of shard 3 removed: finalize still reads the rows
    the download wrote, and drops each lost one by reason; the intact shard is finalized."""
    from witbuild.stages.context import StageContext
    from witbuild.stages.finalize import run_finalize

    src = tmp_path / "download"
    src.mkdir()
    wrote = sum(_download_shard(src, i, list(range(10 * i, 10 * i + 3))) for i in range(4))
    (src / layout.COUNTS_FILE).write_text(json.dumps(StageCounts(rows_in=wrote + 4, rows_out=wrote).to_dict()))
    (src / "00001.tar").unlink()
    _cut_mid_member(src / "00002.tar")
    for path in src.glob("00003*"):
        path.unlink()
    cfg = load_config(inputs=["unused.warc.gz"], output=str(tmp_path / "build"))
    ctx = StageContext(spark, cfg, str(tmp_path / "finalize"), str(tmp_path / "counts"), str(src), "finalize")
    counts = run_finalize(ctx)
    assert counts.rows_in == wrote == counts.rows_out + counts.rows_dropped
    assert counts.rows_out == 3 and counts.dropped == {"missing_shard": 6, "unreadable_shard": 3}
    assert counts.events["missing_shards"] == 1 and counts.events["unreadable_shards"] == 1
    assert json.loads((tmp_path / "finalize" / layout.SIZES_FILE).read_text()) == {"00000.tar": 3}


# ------------------------------------------------------------------------------ a shard img2dataset gives up on


@pytest.mark.slow
@pytest.mark.spark
def test_a_shard_img2dataset_gave_up_on_fails_the_stage_and_a_rerun_fetches_it(spark, tmp_path, monkeypatch):
    """Shard 00001's tar cannot be opened (a folder stands at its path): img2dataset's writer raises on each
    attempt, and img2dataset gives up on the shard. The stage fails, unfinished; once the cause is gone, the
    next run fetches that shard alone and every row is counted through to finalize."""
    from tests.test_dedup_download_finalize import pair, seed_balanced
    from witbuild.pipeline import run_build

    with ImageServer() as server:
        rows = [pair(server.url(f"/gen/{i}.jpg?w=256&h=256"), f"generated picture number {i}") for i in range(6)]
        out = tmp_path / "out"
        seed_balanced(out, rows)
        cfg = load_config(inputs=["unused.warc.gz"], output=str(out), sets=[
            "download.timeout=5", "download.retries=0", "download.number_sample_per_shard=2",
            "download.thread_count=2", "download.image_size=64", "download.min_image_size=100",
            "network.allow_addresses=['127.0.0.1']"])
        real = download_stage._img2dataset

        def with_shard_blocked(img2dataset, url_list, ctx):
            Path(ctx.output, "00001.tar").mkdir(parents=True)
            real(img2dataset, url_list, ctx)

        monkeypatch.setattr(download_stage, "_img2dataset", with_shard_blocked)
        with pytest.raises(ShardsIncompleteError, match=r"1 of 3 shards \(00001\): 2 of 6 rows"):
            run_build(spark, cfg)
        tmp = Path(layout.stage_tmp_dir(str(out), "download"))
        assert not Path(layout.stage_dir(str(out), "download")).exists()
        assert sorted(p.name for p in tmp.glob("*_stats.json")) == ["00000_stats.json", "00002_stats.json"]

        monkeypatch.undo()
        (tmp / "00001.tar").rmdir()
        before = len(server.requests)
        results = {r.name: r.counts for r in run_build(spark, cfg)}
    download = Path(layout.stage_dir(str(out), "download"))
    shard1 = {"/" + u.split("/", 3)[3] for u in pq.read_table(download / "00001.parquet").column("url").to_pylist()}
    assert {r.path for r in server.requests[before:]} == shard1  # robots.txt was kept from the first attempt
    d, f = results["download"], results["finalize"]
    assert d.rows_in == 6 == d.rows_out + d.rows_dropped and d.info["shards"] == 3
    assert f.rows_in == d.rows_out == f.rows_out + f.rows_dropped
