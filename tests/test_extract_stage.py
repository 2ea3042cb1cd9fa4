"""The extract stage on Spark (local[2]): one task per file, Parquet + _SUCCESS, counts, resume."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from witbuild import schemas
from witbuild.config import ExtractConfig, load_config
from witbuild.counters import StageCounts
from witbuild.demo.web import generate_pages, write_warc, write_wat
from witbuild.extract import extract_file
from witbuild.pipeline import run_build
from witbuild.provenance import code_revision

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Demo web archives and a broken file: what every test here reads."""
    d = tmp_path_factory.mktemp("inputs")
    pages = list(generate_pages(120, seed=7))
    write_warc(pages[:60], d / "demo-a.warc.gz")
    write_warc(pages[60:], d / "demo-b.warc.gz")
    write_wat(pages, d / "demo.warc.wat.gz")
    (d / "broken.warc.gz").write_bytes(b"not a warc at all\n" * 50)
    return d


@pytest.fixture
def inputs_with_real_samples(inputs, shared_warc, tmp_path):
    """:func:`inputs` plus the real Common Crawl and ClueWeb samples (only the tests that take this need them)."""
    d = tmp_path / "inputs"
    shutil.copytree(inputs, d)
    for f in shared_warc.glob("*.gz"):
        shutil.copy(f, d / f.name)
    return d


def pure_extract(files):
    counts, rows = StageCounts(), []
    for f in files:
        for b in extract_file(str(f), ExtractConfig(), counts):
            rows.extend(b.to_pylist())
    return rows, counts


def test_stage_output_equals_pure_extraction(spark, inputs_with_real_samples, tmp_path, monkeypatch):
    inputs = inputs_with_real_samples
    out = tmp_path / "out"
    cfg = load_config(inputs=[str(inputs / "*.gz")], output=str(out))
    results = run_build(spark, cfg, until_stage="extract")
    stage = out / "stages" / "extract"
    assert (stage / "_SUCCESS").exists() and (stage / "_counts.json").exists()
    assert not (out / "stages" / "_tmp" / "extract").exists()

    table = pq.read_table(stage)
    assert table.schema.names == schemas.load("candidates").names
    files = sorted(inputs.glob("*.gz"))
    rows, counts = pure_extract(files)
    assert table.num_rows == len(rows) == results[0].counts.rows_out
    assert sorted(table.column("uid").to_pylist()) == sorted(r["uid"] for r in rows)
    # columns as the schema declares them: crawl_date microseconds in UTC (Spark's default, INT96, reads back as
    # nanoseconds with no time zone), each the record's WARC-Date
    assert table.schema.field("crawl_date").type == schemas.load("candidates").arrow().field("crawl_date").type
    dated = sorted(zip(table.column("uid").to_pylist(), map(str, table.column("crawl_date").to_pylist()), strict=True))
    assert dated == sorted((r["uid"], str(r["crawl_date"])) for r in rows) and any(r["crawl_date"] for r in rows)
    got = results[0].counts
    assert (got.rows_in, dict(got.dropped)) == (counts.rows_in, dict(counts.dropped))
    assert got.events["not_a_warc_file"] == 1
    assert got.events["files_read"] == len(files)

    # one task per input file: every Parquet part holds rows of one source file only
    for part in stage.glob("part-*.parquet"):
        assert len(set(pq.read_table(part, columns=["source_file"]).column(0).to_pylist())) <= 1

    report = json.loads((out / "build_report.json").read_text())
    assert report["stages"]["extract"]["rows_out"] == table.num_rows
    # the code that made the stage, in its folder and in the report; a re-run that reuses it keeps it
    made = json.loads((stage / "_counts.json").read_text())["code"]
    assert made == report["stages"]["extract"]["code"] == report["code"] == code_revision()
    later = {"version": "9.9.9", "commit": "0" * 40, "modified": False}
    monkeypatch.setattr("witbuild.pipeline.code_revision", lambda: later)
    run_build(spark, cfg, until_stage="extract")
    report = json.loads((out / "build_report.json").read_text())
    assert report["stages"]["extract"]["skipped"] and report["code"] == later
    assert report["stages"]["extract"]["code"] == made
    assert (out / "build_config.yaml").read_text().startswith("witbuild_version:")


def test_finished_stage_is_skipped_and_partial_one_redone(spark, inputs, tmp_path):
    out = tmp_path / "out"
    cfg = load_config(inputs=[str(inputs / "demo-a.warc.gz")], output=str(out))
    first = run_build(spark, cfg, until_stage="extract")[0]
    parts = sorted(p.name for p in (out / "stages" / "extract").glob("part-*"))
    again = run_build(spark, cfg, until_stage="extract")[0]
    assert again.skipped and again.counts.to_dict() == first.counts.to_dict()
    assert sorted(p.name for p in (out / "stages" / "extract").glob("part-*")) == parts

    # a partial output (no _SUCCESS) under the final name is never taken as finished
    (out / "stages" / "extract" / "_SUCCESS").unlink()
    redone = run_build(spark, cfg, until_stage="extract")[0]
    assert not redone.skipped and redone.counts.rows_out == first.counts.rows_out
    assert pq.read_table(out / "stages" / "extract").num_rows == first.counts.rows_out
