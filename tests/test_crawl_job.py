"""The live-crawl path of the build: spark-submit with seed URLs against the demo web on 127.0.0.1."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_job
from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.demo.server import DemoWebServer
from witbuild.extract import extract_file

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_crawl_then_extract_and_reextract_from_the_warc(tmp_path):
    out = tmp_path / "out"
    with DemoWebServer(n_pages=40, seed=5) as web:
        proc = run_job(
            "--input", web.seed_url, "--output", str(out),
            "--set", "network.allow_addresses=['127.0.0.1']", "--set", "crawl.delay_seconds=0.02",
            "--set", "crawl.max_depth=10", "--set", "crawl.max_pages_per_host=25",
        )
        fetched = [p for p in web.requests if p.startswith("/pages/") and p.endswith(".html")]
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert web.requests[0] == "/robots.txt"
    assert len(fetched) == 25 == len(set(fetched))  # the page budget, each page once

    warcs = sorted((out / "crawl").glob("*.warc.gz"))
    assert len(warcs) == 1 and not list((out / "crawl").glob("*.tmp"))
    table = pq.read_table(out / "stages" / "extract")
    assert table.num_rows > 0
    pages = set(table.column("page_url").to_pylist())
    assert pages <= {web.site + p for p in fetched}

    # the crawl's WARC re-extracts to the same candidates
    counts = StageCounts()
    again = [r for b in extract_file(str(warcs[0]), ExtractConfig(), counts) for r in b.to_pylist()]
    assert sorted(r["uid"] for r in again) == sorted(table.column("uid").to_pylist())
    assert "crawl_pages_fetched" in said
    # and the curation stages ran on the crawled pairs
    for stage in ("filter", "match", "balance"):
        assert (out / "stages" / stage / "_SUCCESS").exists()
    assert 0 < pq.read_table(out / "stages" / "balance").num_rows <= pq.read_table(out / "stages" / "match").num_rows


def test_seed_on_loopback_is_refused_without_allow_list(tmp_path):
    out = tmp_path / "out"
    with DemoWebServer(n_pages=5) as web:
        proc = run_job("--input", web.seed_url, "--output", str(out), "--until-stage", "extract")
        assert web.requests == []  # nothing was fetched, not even robots.txt
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert "crawl_address_refused" in said
    assert pq.read_table(out / "stages" / "extract").num_rows == 0
