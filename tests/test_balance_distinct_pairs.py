"""Balancing counts and draws distinct pairs, as MetaCLIP does on its deduplicated pool: a caption repeated on
many pages (or under another spelling of the same URL) is one pair, not many. Checked against the reference
order, dedup's first layer then MetaCLIP's rule, computed here without Spark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from witbuild import schemas
from witbuild.counters import StageCounts
from witbuild.curate.balance import BalanceConfig, balance_batch, entry_probabilities
from witbuild.dedup.urls import normalize_url, pair_key
from witbuild.stages.balance import (
    balance_arrow,
    distinct_pairs,
    kept_counts,
    kept_counts_local,
    plan_balance,
    plan_local,
    read_local_pairs,
)

T = 10
REPEATS = 5


def _rows() -> list[dict]:
    """Entry 0: 100 distinct pairs, each on ``REPEATS`` pages, the URL spelt a different way on some of them;
    entry 1: 100 pairs seen once; entry 2: 5 pairs (tail), each on 3 pages."""
    spellings = ["http://img.example/{}.jpg", "HTTP://IMG.example:80/{}.jpg", "http://img.example/{}.jpg#top"]
    rows = []
    for i in range(100):
        for k in range(REPEATS):
            url = spellings[k % len(spellings)].format(f"a{i}")
            rows.append({"url": url, "text": f"a red boat number {i}", "matched": [0], "page": f"p{i}-{k}"})
        rows.append({"url": f"http://img.example/b{i}.jpg", "text": f"a blue lake {i}", "matched": [1],
                     "page": f"q{i}"})
    for i in range(5):
        for k in range(3):
            rows.append({"url": f"http://img.example/c{i}.jpg", "text": f"an old bridge {i}", "matched": [0, 2],
                         "page": f"r{i}-{k}"})
    return rows


def _reference_kept(rows: list[dict], seed: int) -> set[str]:
    """MetaCLIP's order: one row per (normalised URL, text), then c_e over those and one draw per pair."""
    pairs = {pair_key(r["url"], r["text"]): r["matched"] for r in rows}
    counts = np.zeros(3, dtype=np.int64)
    for m in pairs.values():
        counts[m] += 1
    keep = balance_batch(list(pairs), list(pairs.values()), entry_probabilities(counts, T), seed)
    return {k for k, kept in zip(pairs, keep, strict=True) if kept}


def test_the_pair_key_is_dedups_first_layer() -> None:
    assert pair_key("HTTP://IMG.example:80/a.jpg#x", "t") == pair_key("http://img.example/a.jpg", "t")
    assert pair_key("http://img.example/a.jpg", "t") != pair_key("http://img.example/a.jpg", "t ")
    assert pair_key("http://img.example/A.jpg", "t") != pair_key("http://img.example/a.jpg", "t")  # paths keep case
    assert normalize_url("HTTP://IMG.example:80/a.jpg#x") == "http://img.example/a.jpg"


@pytest.mark.spark
def test_balance_keeps_t_distinct_pairs_per_entry_however_often_they_repeat(spark) -> None:
    rows = _rows()
    df = spark.createDataFrame(rows, "url string, text string, matched array<int>, page string")
    plan = plan_balance(df, 3, BalanceConfig(t=T, seed=3))
    assert plan.counts.tolist() == [105, 100, 5]  # distinct pairs; counted per row entry 0 would read 515
    assert (plan.pool, plan.rows) == (205, len(rows))

    schema = pa.schema([("url", pa.string()), ("text", pa.string()), ("matched", pa.list_(pa.int32())),
                        ("page", pa.string()), ("keep_probability", pa.float64())])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema.remove(4))
    p = entry_probabilities(plan.counts, plan.t)
    out = balance_arrow(batch, p, 3, StageCounts(), schema).to_pylist()
    kept = {}
    for r in out:
        kept.setdefault(pair_key(r["url"], r["text"]), []).append(r)
    assert set(kept) == _reference_kept(rows, seed=3)  # the same pairs as dedup first, then MetaCLIP's rule
    per_pair_rows = {}
    for r in rows:
        per_pair_rows[pair_key(r["url"], r["text"])] = per_pair_rows.get(pair_key(r["url"], r["text"]), 0) + 1
    assert all(len(v) == per_pair_rows[k] for k, v in kept.items())  # a pair's rows are kept or dropped together
    boats = sum(1 for v in kept.values() if v[0]["matched"] == [0])
    bridges = sum(1 for v in kept.values() if v[0]["matched"] == [0, 2])
    assert bridges == 5  # the tail entry keeps its pairs whole
    # ~t · 100/105 boats: 8 here (binomial sd ~2.9); counted per row it would be ~t/5, 2 here
    assert 4 <= boats <= 16, boats


@pytest.mark.spark
@pytest.mark.parametrize("cfg", [BalanceConfig(t=T, seed=3), BalanceConfig(target_size=60, seed=5),
                                 BalanceConfig(method="uniform", target_size=50, seed=7)],
                         ids=["t", "target", "uniform"])
def test_the_drivers_plan_is_sparks(spark, tmp_path, cfg) -> None:
    """A small pool on this machine is planned in the driver: the same counts, t, expected size and kept pairs as
    Spark's plan over the same rows, written as the stage's input is (several Parquet parts)."""
    folder = str(tmp_path / "match")
    spark.createDataFrame(_rows(), "url string, text string, matched array<int>, page string").repartition(4) \
        .write.parquet(folder)
    local = read_local_pairs(folder)
    assert local is not None and (local.rows, len(local.keys)) == (len(_rows()), 205)
    df = spark.read.parquet(folder)
    theirs, ours = plan_balance(df, 3, cfg), plan_local(local, 3, cfg)
    assert ours.counts.tolist() == theirs.counts.tolist() == [105, 100, 5]
    assert (ours.t, ours.pool, ours.rows, ours.head, ours.tail, ours.unused, ours.uniform) == (
        theirs.t, theirs.pool, theirs.rows, theirs.head, theirs.tail, theirs.unused, theirs.uniform)
    assert ours.expected_size == pytest.approx(theirs.expected_size, rel=1e-12)  # Spark sums per partition
    p = entry_probabilities(ours.counts, ours.t) if ours.uniform is None else np.full(3, ours.uniform)
    kept, n = kept_counts_local(local, p, cfg.seed, ours.uniform)
    kept_spark, n_spark = kept_counts(distinct_pairs(df), p, cfg.seed, theirs.uniform)
    assert (kept.tolist(), n) == (kept_spark.tolist(), n_spark) and 0 < n < 205


@pytest.mark.spark
def test_t_solved_on_a_sample_does_not_depend_on_the_partitions(spark, monkeypatch) -> None:
    """A pool over SOLVE_SAMPLE_ROWS pairs is solved on a sample: Spark's seeded ``sample`` draws per partition,
    so the same pool in 1, 3 or 7 partitions gave t = 43.821, 43.691, 43.691 and three datasets from one seed."""
    from witbuild.stages import balance

    monkeypatch.setattr(balance, "SOLVE_SAMPLE_ROWS", 60)  # stands for 1,000,000: 205 pairs are sampled
    df = spark.createDataFrame(_rows(), "url string, text string, matched array<int>, page string")
    cfg = BalanceConfig(target_size=60, seed=5)
    plans = [plan_balance(df.repartition(n), 3, cfg) for n in (1, 3, 7)]
    assert len({plan.t for plan in plans}) == 1 and plans[0].pool == 205
    sampled = balance.sample_pairs(distinct_pairs(df), 60 / 205, 5).count()
    assert 30 <= sampled <= 95  # about 60 of the 205 (binomial: mean 60, sd 6.6)


def test_the_balanced_schema_carries_what_balance_arrow_writes() -> None:
    """balance_arrow copies the candidate columns through; the stage's output schema has url and text."""
    names = schemas.load("balanced").arrow().names
    assert {"url", "text", "matched", "keep_probability"} <= set(names)


def test_the_pair_key_is_the_uid_of_a_url_in_normal_form() -> None:
    """So a build's draws move only for pairs whose URL normalisation rewrites."""
    from witbuild.extract import uid_of

    assert pair_key("http://img.example/a.jpg", "a red boat") == uid_of("http://img.example/a.jpg", "a red boat")
    assert pair_key("HTTP://img.example/a.jpg", "a red boat") != uid_of("HTTP://img.example/a.jpg", "a red boat")
