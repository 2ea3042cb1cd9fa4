"""The same web, config and origin build the same dataset.

Two builds of a small demo web, one after the other in the same folder, agree on every Parquet stage (rows and
files), every count and the query list; a pair seen on several pages keeps the same row in both. The stages after
dedup are checked without a second download: the final tars are rewritten in key order with a fixed member time,
whatever order img2dataset's downloads finished in (``rewrite_shard``), so equal samples give equal bytes.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import MEMORY_1G, ROOT, run_job
from witbuild.demo.server import demo_job_settings
from witbuild.demo.web import generate_pages, write_warc
from witbuild.stages.finalize import MEMBER_MTIME, rewrite_shard

PAGES = 150  # ~800 pairs, six of them seen on several pages (ties for dedup to break)
SITE = "http://127.0.0.1:27182"  # nothing is fetched before the download stage: no server needed
UNTIL = "dedup"
PARQUET_STAGES = ("extract", "filter", "match", "balance", "dedup")


def sorted_rows(folder: Path) -> list[str]:
    """A Parquet folder's rows, each as JSON, sorted: the table whatever its files and row order."""
    table = pads.dataset(str(folder), format="parquet", exclude_invalid_files=True).to_table()
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def parquet_files(folder: Path) -> list:
    """The tables of a Parquet folder's files in file order (names hold a random id of the write: not compared)."""
    return [pq.read_table(p) for p in sorted(folder.glob("*.parquet"))]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path, str, str]:
    """(first build, second build, the funnel each printed): one demo web, one output folder, until dedup."""
    root = tmp_path_factory.mktemp("determinism")
    warc = root / "web" / "demo-00000.warc.gz"
    warc.parent.mkdir()
    write_warc(list(generate_pages(PAGES, site=SITE, seed=1)), warc)
    out, printed = root / "build", []
    for name in ("first", "second"):
        proc = run_job("--config", str(ROOT / "configs" / "demo.yaml"), "--input", str(warc), "--output", str(out),
                       "--until-stage", UNTIL, *demo_job_settings(PAGES), spark_args=MEMORY_1G, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        printed.append(proc.stdout[proc.stdout.index("top drop reasons"):])
        shutil.move(out, root / name)
    return root / "first", root / "second", printed[0], printed[1]


@pytest.mark.slow
@pytest.mark.spark
def test_two_builds_agree_on_every_stage(two_builds):
    first, second, printed_first, printed_second = two_builds
    def funnel(printed: str) -> list[str]:  # stage, in, out, dropped of the summary: not the seconds
        return [line[:46] for line in printed.splitlines() if line.split(" ", 1)[0] in PARQUET_STAGES]

    assert len(funnel(printed_first)) == len(PARQUET_STAGES)
    assert funnel(printed_first) == funnel(printed_second)
    for stage in PARQUET_STAGES:
        a, b = first / "stages" / stage, second / "stages" / stage
        assert (a / "_counts.json").read_text() == (b / "_counts.json").read_text(), stage
        assert sorted_rows(a) == sorted_rows(b), stage
        files_a, files_b = parquet_files(a), parquet_files(b)
        assert len(files_a) == len(files_b) and all(x.equals(y) for x, y in zip(files_a, files_b, strict=True)), stage
    assert (first / "querylist" / "entries.txt").read_bytes() == (second / "querylist" / "entries.txt").read_bytes()
    entry_counts = "stages/balance/_entry_counts.parquet"
    assert pq.read_table(first / entry_counts).equals(pq.read_table(second / entry_counts))


@pytest.mark.slow
@pytest.mark.spark
def test_dedup_keeps_the_first_row_of_a_pair_seen_on_several_pages(two_builds):
    build = two_builds[0]
    seen: dict[str, list[str]] = defaultdict(list)
    for row in pads.dataset(str(build / "stages" / "balance"), format="parquet").to_table().to_pylist():
        seen[row["uid"]].append(row["page_url"])
    several = {uid: pages for uid, pages in seen.items() if len(set(pages)) > 1}
    assert len(several) >= 3  # the small web has ties for dedup to break
    kept = {r["uid"]: r["page_url"] for r in
            pads.dataset(str(build / "stages" / "dedup"), format="parquet").to_table().to_pylist()}
    assert {uid: kept[uid] for uid in several} == {uid: min(pages) for uid, pages in several.items()}


def _downloaded_shard(path: Path, keys: list[int]) -> None:
    """A tar as img2dataset writes one: samples in the order given (its downloads' finishing order), each member
    stamped with the time of writing (a float, so also in a PAX header)."""
    with tarfile.open(path, "w") as tar:
        for k in keys:
            for ext, data in (("jpg", bytes([k]) * 50), ("txt", f"caption {k}".encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{k:09d}.{ext}")
                info.size, info.mtime = len(data), time.time()
                tar.addfile(info, io.BytesIO(data))


def test_final_shards_are_the_same_bytes_whatever_order_the_downloads_finished_in(tmp_path):
    _downloaded_shard(tmp_path / "a.tar", [3, 0, 4, 1, 2])
    time.sleep(0.01)
    _downloaded_shard(tmp_path / "b.tar", [2, 4, 1, 0, 3])
    wanted = {f"{k:09d}" for k in (0, 2, 3, 4)}
    assert rewrite_shard(str(tmp_path / "a.tar"), str(tmp_path / "a-final.tar"), wanted) == 4
    assert rewrite_shard(str(tmp_path / "b.tar"), str(tmp_path / "b-final.tar"), wanted) == 4
    assert (tmp_path / "a-final.tar").read_bytes() == (tmp_path / "b-final.tar").read_bytes()
    with tarfile.open(tmp_path / "a-final.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(f"{k:09d}.{ext}" for k in (0, 2, 3, 4) for ext in ("jpg", "json", "txt"))
    assert {m.mtime for m in members} == {MEMBER_MTIME} and not any(m.pax_headers for m in members)


def test_a_shard_on_another_filesystem_is_rewritten_to_the_same_bytes(tmp_path):
    """Local tars are mapped, any other fsspec file is read whole: both ways write the same tar."""
    import fsspec

    _downloaded_shard(tmp_path / "a.tar", [3, 0, 4, 1, 2])
    wanted = {f"{k:09d}" for k in (0, 2, 4)}
    memory = fsspec.filesystem("memory")
    memory.pipe("/rewrite/a.tar", (tmp_path / "a.tar").read_bytes())
    assert rewrite_shard("memory://rewrite/a.tar", "memory://rewrite/a-final.tar", wanted) == 3
    assert rewrite_shard(str(tmp_path / "a.tar"), str(tmp_path / "a-final.tar"), wanted) == 3
    assert memory.cat("/rewrite/a-final.tar") == (tmp_path / "a-final.tar").read_bytes()
    (tmp_path / "empty.tar").write_bytes(b"")
    assert rewrite_shard(str(tmp_path / "empty.tar"), str(tmp_path / "empty-final.tar"), wanted) == 0
