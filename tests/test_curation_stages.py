"""Stages filter, match and balance on Spark (local[2]), checked against the pure functions."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from witbuild.config import load_config
from witbuild.curate.balance import entry_probabilities, keep_probabilities
from witbuild.curate.match import naive_match
from witbuild.dedup.urls import pair_key
from witbuild.demo.web import generate_pages, write_warc
from witbuild.pipeline import run_build
from witbuild.text.filters import check_text

pytestmark = [pytest.mark.slow, pytest.mark.spark]  # whole curation builds: ~2 min on 2 cores

QUERIES = ["cat", "dog", "house", "red", "old", "bridge", "lake", "the city", "a", "the", "photo", "in",
           "small", "garden", "boat", "", "cat", "Старый мост"]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    write_warc(list(generate_pages(600, seed=21)), d / "web.warc.gz")
    (d / "queries.txt").write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def built(spark, web, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    cfg = load_config(inputs=[str(web / "web.warc.gz")], output=str(out),
                      sets=[f"match.entries_path={web / 'queries.txt'}", "balance.t=40", "balance.seed=1"])
    results = {r.name: r for r in run_build(spark, cfg, until_stage="balance")}
    return out, cfg, results


def read(out, stage):
    return pq.read_table(out / "stages" / stage).to_pylist()


def pairs_of(rows):
    """One row per distinct pair, (normalised URL, text): what balancing counts and samples."""
    return list({pair_key(r["url"], r["text"]): r for r in rows}.values())


def test_funnel_adds_up(built):
    out, _, results = built
    prev_out = None
    for name in ("extract", "filter", "match", "balance"):
        c = results[name].counts
        assert c.rows_in == c.rows_out + c.rows_dropped, name
        assert c.rows_out == len(read(out, name)), name
        if prev_out is not None:
            assert c.rows_in == prev_out, name
        prev_out = c.rows_out
    report = json.loads((out / "build_report.json").read_text())
    assert list(report["stages"]) == ["extract", "filter", "match", "balance"]


def test_filter_output_passes_every_check_and_is_english(built):
    out, cfg, results = built
    rows = read(out, "filter")
    assert rows and all(check_text(r["text"], cfg.filter) is None for r in rows)
    assert {r["lang"] for r in rows} == {"en"}
    dropped = results["filter"].counts.dropped
    assert dropped["boilerplate"] > 0 and dropped["filename_like"] > 0 and dropped["lang_not_allowed"] > 0


def test_match_equals_metaclip_rule_and_ids_are_the_build_list_lines(built):
    out, cfg, results = built
    entries = (out / "querylist" / "entries.txt").read_text(encoding="utf-8").splitlines()
    assert entries == [q for i, q in enumerate(QUERIES) if q and q not in QUERIES[:i]]  # blank, dup skipped
    manifest = json.loads((out / "querylist" / "manifest.json").read_text())
    assert manifest["skipped"] == {"blank": 1, "duplicate": 1}
    matched = read(out, "match")
    rule = {"space_entries": cfg.match.space_entries, "punct": cfg.match.punct}
    for r in matched:
        assert r["matched"] == naive_match(r["text"], entries, cfg.match.case_sensitive, **rule)
    # one row per uid is not given: the same picture with the same caption on two pages is one uid twice
    matched_uids = {r["uid"] for r in matched}
    unmatched = [r["text"] for r in read(out, "filter") if r["uid"] not in matched_uids]
    assert results["match"].counts.dropped["no_match"] == len(unmatched)
    assert all(not naive_match(t, entries, cfg.match.case_sensitive, **rule) for t in unmatched)
    info = results["match"].counts.info
    assert (info["case_rule"], info["case_variant_groups"]) == ("smart", 0)  # "Старый мост" has no lower twin


def test_balance_caps_head_entries_and_writes_entry_counts(built):
    """c_e, the draws and the kept counts are over distinct pairs, (normalised URL, text): a pair seen on several
    pages is one pair, whose rows are kept or dropped together."""
    out, _, results = built
    matched = read(out, "match")
    kept = read(out, "balance")
    pairs = {pair_key(r["url"], r["text"]): r["matched"] for r in matched}
    kept_pairs = {pair_key(r["url"], r["text"]): r["matched"] for r in kept}
    assert len(pairs) < len(matched)  # the web repeats some pairs, so the test can tell rows from pairs
    counts = pq.read_table(out / "stages" / "balance" / "_entry_counts.parquet").to_pylist()
    c = np.array([r["count"] for r in counts])
    recount = np.zeros_like(c)
    for m in pairs.values():
        recount[m] += 1
    assert (c == recount).all()
    kept_recount = np.zeros_like(c)
    for m in kept_pairs.values():
        kept_recount[m] += 1
    assert [r["kept"] for r in counts] == kept_recount.tolist()
    rows_per_pair = Counter(pair_key(r["url"], r["text"]) for r in matched)
    assert Counter(pair_key(r["url"], r["text"]) for r in kept) == {k: rows_per_pair[k] for k in kept_pairs}
    p = entry_probabilities(c, 40)
    for r in kept:
        assert r["keep_probability"] == pytest.approx(float(keep_probabilities([r["matched"]], p)[0]))
    expected = float(keep_probabilities(list(pairs.values()), p).sum())
    info = results["balance"].counts.info
    assert info["expected_size"] == pytest.approx(expected, abs=0.1)
    assert (info["pool"], info["pool_rows"]) == (len(pairs), len(matched))
    assert abs(len(kept_pairs) - expected) < 5 * np.sqrt(expected)  # Σ P is the expected number of pairs
    # the tail is kept whole: a pair matching any entry with c_e <= t has P = 1
    with_tail = [k for k, m in pairs.items() if any(c[e] <= 40 for e in m)]
    assert with_tail and set(with_tail) <= set(kept_pairs)
    assert (c > 40).sum() == info["head_entries"] > 0


def test_balance_is_reproducible_and_seed_dependent(spark, built, tmp_path):
    out, cfg, _ = built
    first = sorted(r["uid"] for r in read(out, "balance"))
    for seed, same in ((1, True), (2, False)):
        other = tmp_path / f"seed{seed}"
        other.mkdir()
        # reuse the finished extract/filter/match stages by copying them
        import shutil

        shutil.copytree(out / "stages", other / "stages", ignore=shutil.ignore_patterns("balance"))
        shutil.copytree(out / "querylist", other / "querylist")
        cfg2 = cfg.model_copy(update={"output": str(other), "balance": cfg.balance.model_copy(update={"seed": seed})})
        results = run_build(spark, cfg2, until_stage="balance")
        assert [r.skipped for r in results] == [True, True, True, False]
        again = sorted(r["uid"] for r in read(other, "balance"))
        assert (again == first) is same


def test_target_size_solves_t(spark, built, tmp_path):
    out, cfg, _ = built
    import shutil

    other = tmp_path / "target"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("balance"))
    n_matched = len(pairs_of(read(out, "match")))
    target = n_matched // 3
    cfg2 = cfg.model_copy(update={"output": str(other),
                                  "balance": cfg.balance.model_copy(update={"t": None, "target_size": target})})
    info = run_build(spark, cfg2, until_stage="balance")[-1].counts.info
    assert info["expected_size"] == pytest.approx(target, rel=0.01)
    assert abs(len(pairs_of(read(other, "balance"))) - target) < 5 * np.sqrt(target)


def test_a_pool_planned_by_spark_gives_the_drivers_output(spark, built, tmp_path, monkeypatch):
    """This pool is small and on this machine, so balance plans it in the driver; forced onto Spark's plan (as a
    large pool or a cluster's file system would be), the stage keeps the same rows and writes the same entry counts.
    With target_size, so that t is solved from the pool on both paths."""
    import shutil

    from witbuild import spark as ws

    out, cfg, _ = built
    target = len(pairs_of(read(out, "match"))) // 3
    balance = cfg.balance.model_copy(update={"t": None, "target_size": target})
    runs = {}
    for path, max_bytes in (("driver", ws.DRIVER_MAX_PARQUET_BYTES), ("spark", 0)):
        monkeypatch.setattr(ws, "DRIVER_MAX_PARQUET_BYTES", max_bytes)
        other = tmp_path / path
        shutil.copytree(out, other, ignore=shutil.ignore_patterns("balance"))
        info = run_build(spark, cfg.model_copy(update={"output": str(other), "balance": balance}),
                         until_stage="balance")[-1].counts.info
        entry_counts = pq.read_table(other / "stages" / "balance" / "_entry_counts.parquet").to_pylist()
        runs[path] = (info, sorted((r["uid"], r["keep_probability"]) for r in read(other, "balance")), entry_counts)
    (info, rows, entry_counts), (info_spark, rows_spark, entry_counts_spark) = runs["driver"], runs["spark"]
    assert rows == rows_spark and entry_counts == entry_counts_spark and 0 < len(rows) < target * 2
    expected = info.pop("expected_size")
    assert expected == pytest.approx(info_spark.pop("expected_size"), abs=0.11)  # sums rounded to 0.1
    assert info == info_spark and info["t"] < max(r["count"] for r in entry_counts)  # t solved, and it caps
    from typer.testing import CliRunner

    from witbuild.cli import app

    dry = CliRunner().invoke(app, ["balance-plan", str(tmp_path / "driver"), "--target-size", str(target)])
    assert dry.exit_code == 0, dry.output
    assert f"t = {info['t']:,.1f}: expected size {expected:,.0f} of " in dry.output  # the dry run plans the same


def test_balance_plan_reads_the_build_it_is_given_and_writes_nothing(spark, built, tmp_path):
    """A dry run of a copied build reads the copy's own query list, not the folder its config names, never makes
    one, and refuses a list that is not the one match ran against (its ids would name other entries)."""
    import json
    import shutil

    from typer.testing import CliRunner

    from witbuild.cli import app

    out, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("balance", "dedup", "download", "finalize"))
    before = {p: p.stat().st_mtime_ns for p in (copy / "querylist").iterdir()}
    dry = CliRunner().invoke(app, ["balance-plan", str(copy), "--t", "40", "--top", "1"])
    assert dry.exit_code == 0, dry.output
    manifest = json.loads((copy / "querylist" / "manifest.json").read_text())
    assert f"query list {manifest['version']} " in dry.output
    assert {p: p.stat().st_mtime_ns for p in (copy / "querylist").iterdir()} == before
    (copy / "querylist" / "manifest.json").write_text(json.dumps({**manifest, "version": "0000"}))
    refused = CliRunner().invoke(app, ["balance-plan", str(copy)])
    assert refused.exit_code == 2 and "the list changed since" in refused.output
    shutil.rmtree(copy / "querylist")
    refused = CliRunner().invoke(app, ["balance-plan", str(copy)])
    assert refused.exit_code == 2 and "no query list in this build" in refused.output
    assert not (copy / "querylist").exists()


def test_uniform_method_samples_the_pool_without_balancing(spark, built, tmp_path):
    out, cfg, _ = built
    import shutil

    other = tmp_path / "uniform"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("balance"))
    matched = pairs_of(read(out, "match"))
    target = len(matched) // 3
    cfg2 = cfg.model_copy(update={"output": str(other), "balance": cfg.balance.model_copy(
        update={"t": None, "target_size": target, "method": "uniform"})})
    info = run_build(spark, cfg2, until_stage="balance")[-1].counts.info
    q = target / len(matched)
    assert info["method"] == "uniform" and info["keep_probability"] == pytest.approx(q, abs=1e-6)
    kept = pairs_of(read(other, "balance"))
    assert abs(len(kept) - target) < 5 * np.sqrt(target) and info["pairs_out"] == len(kept)
    assert [r["keep_probability"] for r in kept] == pytest.approx([q] * len(kept))
    # no entry is capped: the most matched entry keeps its share of the pool (MetaCLIP with t=40 cuts it)
    top = np.bincount([e for r in matched for e in r["matched"]]).argmax()
    share = lambda rows: sum(top in r["matched"] for r in rows) / len(rows)  # noqa: E731
    n_top = sum(top in r["matched"] for r in matched)
    assert n_top > 3 * 40 and abs(share(kept) - share(matched)) < 5 * np.sqrt(share(matched) / len(kept))
    assert share(pairs_of(read(out, "balance"))) < share(matched)
    entry_rows = pq.read_table(other / "stages" / "balance" / "_entry_counts.parquet").to_pylist()
    assert [r["probability"] for r in entry_rows] == pytest.approx([q] * len(entry_rows))
    # the dry run keeps the build's method: --target-size plans a uniform sample, and --t has no meaning here
    from typer.testing import CliRunner

    from witbuild.cli import app

    dry = CliRunner().invoke(app, ["balance-plan", str(other), "--target-size", str(target), "--top", "1"])
    assert dry.exit_code == 0, dry.output
    assert f"uniform sample (no balancing): every matched pair kept with probability {q:.4f}" in dry.output
    c_top = max(sum(e in r["matched"] for r in matched) for e in {e for r in matched for e in r["matched"]})
    assert f"expected kept {c_top * q:>12,.1f}" in dry.output  # c_e · p, not min(c_e, t)
    refused = CliRunner().invoke(app, ["balance-plan", str(other), "--t", "40"])
    assert refused.exit_code == 2 and "balance.method=uniform): it has no t" in refused.output


def test_from_stage_redoes_that_stage_and_needs_the_earlier_ones(spark, built, tmp_path):
    out, cfg, _ = built
    before = sorted(r["uid"] for r in read(out, "balance"))
    results = run_build(spark, cfg, until_stage="balance", from_stage="balance")
    assert [r.skipped for r in results] == [True, True, True, False]
    assert sorted(r["uid"] for r in read(out, "balance")) == before
    empty = cfg.model_copy(update={"output": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="not finished: extract, filter, match"):
        run_build(spark, empty, until_stage="balance", from_stage="balance")
    with pytest.raises(ValueError, match="comes after"):
        run_build(spark, cfg, until_stage="filter", from_stage="balance")
