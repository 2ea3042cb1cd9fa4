"""``spark-submit jobs/build_wit.py`` as a user runs it, in a subprocess."""

from __future__ import annotations

import re
import shutil

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_job
from witbuild.demo.web import generate_pages, write_warc

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def printed_counts(stdout: str, stage: str = "extract") -> tuple[int, int, int]:
    m = re.search(rf"\[{stage}\] \w+ in: ([\d,]+)\s+\w+ out: ([\d,]+)\s+dropped: ([\d,]+)", stdout)
    assert m, stdout
    return tuple(int(g.replace(",", "")) for g in m.groups())  # type: ignore[return-value]


def test_spark_submit_extract_with_defaults(tmp_path, shared_warc):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    write_warc(list(generate_pages(80, seed=11)), crawl / "demo.warc.gz")
    shutil.copy(shared_warc / "cc-main-2020-34-excerpt.warc.gz", crawl)
    out = tmp_path / "out"
    proc = run_job("--input", str(crawl / "*.warc.gz"), "--output", str(out), "--until-stage", "extract")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    n_in, n_out, n_dropped = printed_counts(proc.stdout)
    stage = out / "stages" / "extract"
    assert (stage / "_SUCCESS").exists()
    assert pq.read_table(stage).num_rows == n_out > 0
    assert n_in == n_out + n_dropped
    assert "dropped empty_text" in proc.stdout
    assert "build report:" in proc.stdout


def test_curation_stages_on_the_real_samples(tmp_path, shared_warc):
    out = tmp_path / "out"
    # until balance: the samples' image URLs are on the public web, which tests never contact
    proc = run_job("--input", str(shared_warc), "--output", str(out), "--until-stage", "balance",
                   "--set", "langid.allowed=[]", "--set", "balance.t=1", "--set", "querylist.bigram_min_count=2")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    previous = None
    for stage in ("extract", "filter", "match", "balance"):
        n_in, n_out, n_dropped = printed_counts(proc.stdout, stage)
        assert n_in == n_out + n_dropped
        assert pq.read_table(out / "stages" / stage).num_rows == n_out, stage
        if previous is not None:
            assert n_in == previous
        previous = n_out
    assert printed_counts(proc.stdout, "extract")[1] == 32 + 5 + 556  # test_real_samples; the WAT adds none
    assert 0 < previous <= printed_counts(proc.stdout, "match")[1]
    assert (out / "querylist" / "manifest.json").is_file()
    final = proc.stdout[proc.stdout.index("top drop reasons"):]  # the whole funnel again at the end
    for stage in ("extract", "filter", "match", "balance"):
        n_in, n_out, n_dropped = printed_counts(proc.stdout, stage)
        assert f"{stage:<10}{n_in:>12,}{n_out:>12,}{n_dropped:>12,}" in final


def test_missing_input_is_a_clear_error_before_spark(tmp_path):
    out = tmp_path / "out"
    proc = run_job("--input", str(tmp_path / "nowhere" / "*.warc.gz"), "--input", str(tmp_path / "missing.warc"),
                   "--output", str(out))
    said = proc.stdout + proc.stderr  # spark-submit merges the driver's stderr into stdout
    assert proc.returncode == 2
    assert "error: input not found" in said
    assert "missing.warc" in said and "matches no file" in said
    assert "Traceback" not in said
    assert not out.exists()  # nothing was started


def test_inputs_none_of_which_is_a_warc_are_an_error_not_an_empty_build(tmp_path):
    """An HTML page saved under a WARC name (or a CDX index, an error page from a bucket): read, every file is
    unreadable, and the build stops with one error line and exit 2 instead of "succeeding" with nothing in it."""
    (page := tmp_path / "page.warc.gz").write_text('<html><img src="http://127.0.0.1/a.jpg" alt="a red ball"></html>')
    (cdx := tmp_path / "index.warc").write_text("com,example)/ 20200801000000 {}\n")
    out = tmp_path / "out"
    proc = run_job("--input", str(page), "--input", str(cdx), "--output", str(out))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said[-3000:]
    assert re.search(r"error: extract: none of the 2 input files could be read as WARC or WAT \(not_a_warc_file 2\)",
                     said)
    assert "Traceback" not in said and not (out / "stages" / "extract" / "_SUCCESS").exists()


def test_bad_config_value_is_a_clear_error(tmp_path):
    proc = run_job("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "extract.max_page_bytes=3")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "max_page_bytes" in said and "Traceback" not in said


def test_spark_submit_env_fills_in_only_what_is_missing(monkeypatch):
    """``witbuild demo`` starts spark-submit from a bare shell too: Spark home, interpreter and loopback filled in."""
    import sys
    from pathlib import Path

    from witbuild.spark import spark_submit_env

    for key in ("SPARK_HOME", "PYSPARK_PYTHON", "SPARK_LOCAL_IP"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", "/somewhere/else")
    env = spark_submit_env()
    assert (Path(env["SPARK_HOME"]) / "bin" / "spark-class").is_file()
    assert env["PYSPARK_PYTHON"] == sys.executable and env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["SPARK_CONF_DIR"] == "/somewhere/else"


def test_local_shuffles_are_sized_to_the_cores_unless_chosen(spark):
    """Spark's 200 shuffle partitions are for clusters; a local session gets 4 per core, a chosen number stays."""
    from witbuild.spark import LOCAL_SHUFFLE_PARTITIONS_PER_CORE, _size_local_shuffles

    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        _size_local_shuffles(spark, {})
        expected = LOCAL_SHUFFLE_PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism
        assert spark.conf.get("spark.sql.shuffle.partitions") == str(expected)
        spark.conf.set("spark.sql.shuffle.partitions", "3")
        _size_local_shuffles(spark, {"spark.sql.shuffle.partitions": "3"})
        assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
