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


def test_a_larger_page_budget_crawls_the_host_again(tmp_path):
    """The host's WARC of a smaller budget is not reused for a larger one: the crawl is made again, said, and the
    extract stage reads the new pages."""
    out = tmp_path / "out"
    settings = ("--set", "network.allow_addresses=['127.0.0.1']", "--set", "crawl.delay_seconds=0.02",
                "--set", "crawl.max_depth=10", "--until-stage", "extract")
    with DemoWebServer(n_pages=40, seed=5) as web:
        runs = []
        for budget in (5, 12, 12):
            before = len(web.requests)
            proc = run_job("--input", web.seed_url, "--output", str(out), *settings,
                           "--set", f"crawl.max_pages_per_host={budget}", "--log-level", "INFO")
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            runs.append((proc.stdout + proc.stderr, [p for p in web.requests[before:] if p.endswith(".html")]))
    assert [len(fetched) for _, fetched in runs] == [5, 12, 0]
    assert "crawling it again" in runs[1][0] and "crawl_hosts_recrawled" in runs[1][0]
    assert "already finished" in runs[2][0] or "skipped" in runs[2][0]
    assert len(list((out / "crawl").glob("*.warc.gz"))) == 1
    pages = set(pq.read_table(out / "stages" / "extract").column("page_url").to_pylist())
    assert len(pages) > 5


def test_seed_on_loopback_is_refused_without_allow_list(tmp_path):
    out = tmp_path / "out"
    with DemoWebServer(n_pages=5) as web:
        proc = run_job("--input", web.seed_url, "--output", str(out), "--until-stage", "extract")
        assert web.requests == []  # nothing was fetched, not even robots.txt
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert "crawl_address_refused" in said
    assert pq.read_table(out / "stages" / "extract").num_rows == 0


def test_a_hosts_crawl_is_reused_only_under_the_same_seeds_and_settings(tmp_path):
    """A larger page budget or a new seed on a host crawled before used to reuse its WARC: extract was redone on
    the old pages and the change had no effect, without a word."""
    import fsspec

    from witbuild.config import BuildConfig
    from witbuild.stages.extract import _drop_other_crawls, _host_slug, crawl_warc_name

    host = "http://127.0.0.1:8000"
    cfg = BuildConfig(output=str(tmp_path), input={"seeds": [f"{host}/"]})
    name = crawl_warc_name(cfg, host, [f"{host}/"])
    assert name.startswith(_host_slug(host) + "-") and name == crawl_warc_name(cfg, host, [f"{host}/"])
    assert crawl_warc_name(cfg.model_copy(update={"crawl": cfg.crawl.model_copy(update={"warc_dir": "x"})}), host,
                           [f"{host}/"]) == name  # where the WARCs go is not what they hold
    changed = [
        crawl_warc_name(cfg.model_copy(update={"crawl": cfg.crawl.model_copy(update={"max_pages_per_host": 7})}),
                        host, [f"{host}/"]),
        crawl_warc_name(cfg, host, [f"{host}/", f"{host}/more"]),
        crawl_warc_name(cfg.model_copy(update={"network": cfg.network.model_copy(update={"allow_addresses": [
            "127.0.0.1"]})}), host, [f"{host}/"]),
    ]
    assert len({name, *changed}) == 4
    same = [  # how fast, who to write to, which release: not what is fetched
        cfg.model_copy(update={"crawl": cfg.crawl.model_copy(update={"delay_seconds": 9.0, "contact": "mailto:x@y",
                                                                     "user_agent": "witbuild/99.0"})}),
        cfg.model_copy(update={"network": cfg.network.model_copy(update={"allow_addresses": ["10.0.0.0/8",
                                                                                             "127.0.0.1"]})}),
    ]
    reordered = cfg.model_copy(update={"network": cfg.network.model_copy(update={"allow_addresses": [
        "127.0.0.1", "10.0.0.0/8"]})})
    assert crawl_warc_name(same[0], host, [f"{host}/"]) == name
    assert crawl_warc_name(same[1], host, [f"{host}/"]) == crawl_warc_name(reordered, host, [f"{host}/"])
    assert crawl_warc_name(cfg.model_copy(update={"crawl": cfg.crawl.model_copy(update={
        "user_agent": "otherbot/1.0"})}), host, [f"{host}/"]) != name  # another robots.txt group
    fs = fsspec.filesystem("file")
    other_host = crawl_warc_name(cfg, "http://127.0.0.1:9000", ["http://127.0.0.1:9000/"])
    for old in (changed[0], _host_slug(host) + ".warc.gz", other_host, name):
        (tmp_path / old).write_bytes(b"x")
    assert _drop_other_crawls(fs, str(tmp_path), host, name)
    assert sorted(p.name for p in tmp_path.glob("*.warc.gz")) == sorted([name, other_host])
    assert not _drop_other_crawls(fs, str(tmp_path), host, name)
    # a host whose slug starts with this one's slug and digest keeps its WARC
    lookalike = crawl_warc_name(cfg, f"http://{name.removesuffix('.warc.gz').replace('-', '.')}.evil.org",
                                ["http://x/"])
    assert lookalike.startswith(_host_slug(host))
    (tmp_path / lookalike).write_bytes(b"x")
    assert not _drop_other_crawls(fs, str(tmp_path), host, name) and (tmp_path / lookalike).exists()
