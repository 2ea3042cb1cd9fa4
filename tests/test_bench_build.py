"""Smoke test of benchmarks/bench_build.py: a tiny build and a tiny pool through the real job, every figure there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.spark]  # three spark-submit runs: ~4 min on 2 cores

STAGES = ("extract", "filter", "match", "balance", "dedup", "download", "finalize")
STAGE_FIELDS = ("rows_in", "rows_out", "seconds", "rows_per_s", "share", "peak_rss_mb")


def test_bench_build_smoke(tmp_path):
    out = tmp_path / "bench_build.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_build.py"), "--sizes", "300", "--rounds", "2",
           "--pool", "2000", "--image-delay-ms", "2", "--json", str(out), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ.copy())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    fig = json.loads(out.read_text())
    assert fig["machine"]["nproc"] >= 1
    assert fig["image_delay_ms"] == 2.0  # recorded with the figures

    (size,) = fig["sizes"]
    assert set(size["stages"]) == set(STAGES)  # every stage ran (the script fails when one did not)
    for name, st in size["stages"].items():
        assert all(st[k] is not None for k in STAGE_FIELDS), (name, st)
        assert st["seconds"] > 0 and st["rows_in"] > 0 and st["peak_rss_mb"] > 0, (name, st)
    assert size["stages"]["balance"]["rows_out"] == size["stages"]["balance"]["rows_in"]  # balancing kept all
    urls = size["download_url_list"]
    assert urls["rows"] == size["stages"]["download"]["rows_in"]  # the very list the download stage fetched
    assert 0.5 * 300 <= urls["distinct_images"] <= 2 * 300
    plain = size["plain_img2dataset"]
    assert plain["seconds"] > 0 and plain["successes"] > 0.8 * size["stages"]["download"]["rows_out"]
    assert size["overhead"]["post_over_plain"] > 0
    assert size["build"]["peak_rss_mb"] >= max(st["peak_rss_mb"] for st in size["stages"].values())
    assert size["build"]["peak_by_role_mb"].get("jvm", 0) > 0
    assert size["build"]["peak_by_role_mb"].get("python_workers", 0) > 0

    first, second = size["rounds"]["each"]  # round 2: plain img2dataset, then the build again from balance
    assert (first["order"], second["order"]) == ("build first", "plain first")
    assert first["post_over_plain"] == size["overhead"]["post_over_plain"]
    assert second["kept"] == first["kept"] == size["stages"]["finalize"]["rows_out"]  # same input, same output
    assert second["plain_successes"] == first["plain_successes"] == plain["successes"]
    assert all(second[s] > 0 for s in ("dedup", "download", "finalize", "plain"))
    ratios = (first["post_over_plain"], second["post_over_plain"])
    assert size["rounds"]["post_over_plain_min"] == min(ratios) and size["rounds"]["post_over_plain_max"] == max(ratios)
    assert "post / plain over 2 rounds" in proc.stdout

    pool = fig["pool"]
    assert list(pool["stages"]) == list(STAGES[:5])
    assert pool["stages"]["extract"]["rows_out"] >= 2000
    assert all(st["rows_per_s"] > 0 for st in pool["stages"].values())
    assert "figures written to" in proc.stdout
