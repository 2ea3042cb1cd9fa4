"""The same web, config and origin build the same dataset.

A pair seen on several pages keeps the same row, the first by page URL; the final tars are rewritten in key order
with a fixed member time, whatever order img2dataset's downloads finished in (``rewrite_shard``), so equal samples
give equal bytes. Two whole builds agreeing on every stage and every byte, whatever Spark's parallelism, is
tests/test_build_invariance.py's.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from tests.conftest import MEMORY_1G, ROOT, run_job
from witbuild.demo.server import demo_job_settings
from witbuild.demo.web import generate_pages, write_warc
from witbuild.stages.finalize import MEMBER_MTIME, rewrite_shard

PAGES = 150  # ~800 pairs, six of them seen on several pages (ties for dedup to break)
SITE = "http://127.0.0.1:27182"  # nothing is fetched before the download stage: no server needed
UNTIL = "dedup"


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """One demo web built until dedup. Two builds of one web agreeing on every stage, whatever Spark's
    parallelism, partitioning and the order of the inputs, is tests/test_build_invariance.py's."""
    root = tmp_path_factory.mktemp("determinism")
    warc = root / "web" / "demo-00000.warc.gz"
    warc.parent.mkdir()
    write_warc(list(generate_pages(PAGES, site=SITE, seed=1)), warc)
    out = root / "build"
    proc = run_job("--config", str(ROOT / "configs" / "demo.yaml"), "--input", str(warc), "--output", str(out),
                   "--until-stage", UNTIL, *demo_job_settings(PAGES), spark_args=MEMORY_1G, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.spark
def test_dedup_keeps_the_first_row_of_a_pair_seen_on_several_pages(build):
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
