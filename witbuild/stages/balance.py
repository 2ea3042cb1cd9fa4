"""Stage balance: MetaCLIP's balancing at Spark scale.

1. c_e, distinct pairs per entry over the whole matched pool (a Spark aggregation, 64-bit);
2. t from the config, or solved by bisection for ``balance.target_size`` on a sample of the pool;
3. p_e = min(1, t / c_e), broadcast; each pair kept with P = 1 − ∏(1 − p_e), one deterministic draw
   per (pair, entry, seed) so a re-run keeps the same pairs;
4. ``_entry_counts.parquet`` beside the pairs: entry, c_e, p_e and what was kept.

Steps 1, 2 and the kept counts take Spark about six small jobs (seconds, even for ten rows); a matched pool on this
machine of at most ``DRIVER_MAX_PARQUET_BYTES`` of Parquet is planned in the driver instead (:func:`read_local_pairs`,
:func:`plan_local`), by the same functions over the same pairs in the same order, so both give the same t, the
same draws and the same counts. Only writing the kept rows runs on Spark either way.

A pair is what dedup's first layer keeps one row of, (normalised URL, text) (:func:`pair_key`): MetaCLIP
balances a deduplicated pool, and here dedup comes after. Counted once per row, an entry whose captions each
appear on k pages would keep about t / k distinct pairs instead of t. Every row of a pair gets the same draws,
so the rows of a pair are kept or dropped together, and after dedup each distinct pair is kept with P.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from witbuild import layout, schemas
from witbuild.counters import StageCounts
from witbuild.curate.balance import (
    BalanceConfig,
    balance_batch,
    count_matches,
    entry_probabilities,
    head_tail_split,
    keep_probabilities,
    solve_t,
)
from witbuild.dedup.urls import pair_key
from witbuild.spark import driver_sized, fs_and_path

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext

log = logging.getLogger(__name__)

SOLVE_SAMPLE_ROWS = 1_000_000
ENTRY_COUNTS_FILE = layout.ENTRY_COUNTS_FILE


@dataclass
class BalancePlan:
    """What balancing will do: computed before any pair is drawn (also the dry run's report)."""

    counts: np.ndarray  # c_e per entry id
    t: float
    pool: int  # distinct matched pairs (:func:`pair_key`)
    expected_size: float  # Σ P over the pool, exact
    head: int  # entries with c_e > t (sampled down)
    tail: int  # entries with 0 < c_e <= t (kept whole)
    unused: int  # entries no pair matches
    uniform: float | None = None  # method=uniform: every pair's keep probability (t then plays no part)
    rows: int | None = None  # matched rows, a pair seen on several pages once per page

    def info(self) -> dict[str, Any]:
        if self.uniform is not None:
            return {"method": "uniform", "keep_probability": round(self.uniform, 6), "pool": self.pool,
                    "pool_rows": self.rows, "expected_size": round(self.expected_size, 1)}
        return {"method": "metaclip", "t": round(self.t, 3), "pool": self.pool, "pool_rows": self.rows,
                "expected_size": round(self.expected_size, 1), "head_entries": self.head, "tail_entries": self.tail,
                "unused_entries": self.unused}

    def describe(self) -> str:
        if self.uniform is not None:
            return (f"uniform sample (no balancing): every matched pair kept with probability {self.uniform:.4f}, "
                    f"expected size {self.expected_size:,.0f} of {self.pool:,} distinct pairs{self._rows()}")
        return (f"t = {self.t:,.1f}: expected size {self.expected_size:,.0f} of {self.pool:,} distinct matched pairs"
                f"{self._rows()} ({self.expected_size / max(self.pool, 1):.1%}); head entries (c_e > t, sampled down): "
                f"{self.head:,}; tail entries (kept whole): {self.tail:,}; entries never matched: {self.unused:,}")

    def _rows(self) -> str:
        return "" if self.rows is None or self.rows == self.pool else f" ({self.rows:,} rows)"


def _pair_keys(batch: pa.RecordBatch) -> list[str]:
    return [pair_key(u, t) for u, t in zip(batch.column("url").to_pylist(), batch.column("text").to_pylist(),
                                           strict=True)]


def distinct_pairs(df: Any) -> Any:
    """(pair, matched), one row per distinct pair of a matched DataFrame (:func:`pair_key`; the rows of a pair
    share their text, so their match lists too)."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField("pair", StringType(), False), df.schema["matched"]])

    def keyed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield pa.RecordBatch.from_arrays([pa.array(_pair_keys(batch), pa.string()), batch.column("matched")],
                                             names=["pair", "matched"])

    return df.select("url", "text", "matched").mapInArrow(keyed, schema).dropDuplicates(["pair"])


def entry_counts(df: Any, n_entries: int) -> np.ndarray:
    """c_e over a DataFrame with ``matched`` (:func:`distinct_pairs`' for MetaCLIP's c_e), aggregated by Spark;
    only ≤ n_entries rows reach the driver."""
    from pyspark.sql import functions as F

    rows = df.select(F.explode("matched").alias("e")).groupBy("e").count().collect()
    c = np.zeros(n_entries, dtype=np.int64)
    for r in rows:
        c[r["e"]] = r["count"]
    return c


def _expected_size(df: Any, p: np.ndarray) -> float:
    """Σ P over the pool, computed on the executors (one float per batch comes back)."""
    p_bc = df.sparkSession.sparkContext.broadcast(p)

    def sums(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            total = float(keep_probabilities(batch.column(0).to_pylist(), p_bc.value).sum())
            yield pa.RecordBatch.from_pydict({"s": [total]}, schema=pa.schema([("s", pa.float64())]))

    total = sum(r["s"] for r in df.select("matched").mapInArrow(sums, "s double").collect())
    p_bc.unpersist()
    return total


def plan_balance(df: Any, n_entries: int, cfg: BalanceConfig) -> BalancePlan:
    """What balancing the matched rows ``df`` will do, over their distinct pairs."""
    rows = df.count()
    pairs = distinct_pairs(df).cache()
    try:
        return _plan(pairs, n_entries, cfg, rows)
    finally:
        pairs.unpersist()


def plan_matched(spark: Any, folder: str, n_entries: int, cfg: BalanceConfig) -> BalancePlan:
    """What balancing the matched rows in ``folder`` will do: in the driver or by Spark, as the stage plans them."""
    local = read_local_pairs(folder)
    if local is not None:
        return plan_local(local, n_entries, cfg)
    return plan_balance(spark.read.parquet(folder), n_entries, cfg)


def kept_counts(pairs: Any, p: np.ndarray, seed: int, uniform: float | None) -> tuple[np.ndarray, int]:
    """(kept pairs per entry, kept pairs) of :func:`distinct_pairs` ``pairs``, by the draws :func:`balance_arrow`
    gives each of their rows (they depend on the pair and its match list only): one pass over the pairs, where
    counting them back from the written rows would take a read, a hash of every row and a shuffle more."""
    p_bc = pairs.sparkSession.sparkContext.broadcast(p)
    n_entries = len(p)

    def sums(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        per_entry, kept = np.zeros(n_entries, dtype=np.int64), 0
        for batch in batches:
            matched = batch.column("matched").to_pylist()
            keep = balance_batch(batch.column("pair").to_pylist(), *_draw_inputs(matched, p_bc.value, uniform), seed)
            kept += int(keep.sum())
            ids = [e for m, k in zip(matched, keep, strict=True) if k for e in m]
            per_entry += np.bincount(np.asarray(ids, dtype=np.int64), minlength=n_entries)
        found = np.flatnonzero(per_entry)
        yield pa.RecordBatch.from_pydict({"e": np.append(found, -1), "n": np.append(per_entry[found], kept)},
                                         schema=pa.schema([("e", pa.int64()), ("n", pa.int64())]))

    rows = pairs.mapInArrow(sums, "e long, n long").groupBy("e").sum("n").collect()
    p_bc.unpersist()
    per_entry, kept = np.zeros(n_entries, dtype=np.int64), 0
    for r in rows:
        if r["e"] < 0:
            kept = int(r["sum(n)"])
        else:
            per_entry[r["e"]] = r["sum(n)"]
    return per_entry, kept


def _plan(pairs: Any, n_entries: int, cfg: BalanceConfig, rows: int) -> BalancePlan:
    counts = entry_counts(pairs, n_entries)
    pool = pairs.count()
    if cfg.method == "uniform":
        return _uniform_plan(counts, pool, cfg, rows)
    if cfg.target_size is not None:
        fraction = min(1.0, SOLVE_SAMPLE_ROWS / max(pool, 1))
        sample_df = pairs if fraction >= 1.0 else sample_pairs(pairs, fraction, cfg.seed)
        # in pair order, as the driver's plan takes them: the bisection's sums then do not depend on the partitions
        sample = [r["matched"] for r in sorted(sample_df.select("pair", "matched").collect(), key=lambda r: r["pair"])]
        t = _solve(cfg.target_size, counts, sample, pool)
    else:
        t = float(cfg.fixed_t)
    return _metaclip_plan(counts, t, pool, _expected_size(pairs, entry_probabilities(counts, t)), rows)


def sample_pairs(pairs: Any, fraction: float, seed: int) -> Any:
    """About ``fraction`` of the pairs, each chosen by a hash of the pair and the seed. Spark's own seeded
    ``sample`` draws per partition, so the same pool split otherwise gave another sample, another t and another
    dataset."""
    from pyspark.sql import functions as F

    buckets = 1 << 30
    drawn = F.pmod(F.xxhash64(F.col("pair"), F.lit(seed)), F.lit(buckets))
    return pairs.filter(drawn < F.lit(int(fraction * buckets)))


def _solve(target_size: int, counts: np.ndarray, sample: list[list[int]], pool: int) -> float:
    """t for ``target_size`` over a sample of the pool's match lists (the whole pool up to SOLVE_SAMPLE_ROWS)."""
    return solve_t(target_size * len(sample) / max(pool, 1), counts, matched=sample) if sample else 1.0


def _metaclip_plan(counts: np.ndarray, t: float, pool: int, expected: float, rows: int) -> BalancePlan:
    split = head_tail_split(counts, t)
    return BalancePlan(counts, t, pool, expected, len(split.head), len(split.tail), len(split.unused), rows=rows)


def _uniform_plan(counts: np.ndarray, pool: int, cfg: BalanceConfig, rows: int) -> BalancePlan:
    q = min(1.0, cfg.target_size / max(pool, 1))
    return BalancePlan(counts, math.inf, pool, q * pool, 0, int((counts > 0).sum()), int((counts == 0).sum()), q, rows)


# --------------------------------------------------------------------------------------------- in the driver


@dataclass
class LocalPairs:
    """A matched pool's distinct pairs (:func:`pair_key`) in pair order, with their match lists, held by the driver."""

    rows: int
    keys: list[str]
    matched: list[list[int]]


def read_local_pairs(folder: str) -> LocalPairs | None:
    """The distinct pairs of the matched rows in ``folder`` when it is on this machine and holds at most
    ``DRIVER_MAX_PARQUET_BYTES`` of Parquet (:func:`driver_sized`; tens of thousands of rows, read in well under a
    second); None otherwise, and Spark plans. The rows of a pair share their text, so their match lists too: any
    row's list is the pair's."""
    size = driver_sized(folder)
    if size is None:
        return None
    table = pq.read_table(folder.removeprefix("file://"), columns=["url", "text", "matched"])
    by_key: dict[str, list[int]] = {}
    for batch in table.to_batches():
        for key, matched in zip(_pair_keys(batch), batch.column("matched").to_pylist(), strict=True):
            by_key.setdefault(key, matched)
    if len(by_key) > SOLVE_SAMPLE_ROWS:  # t would be solved on a sample, which is Spark's to draw
        return None
    if table.num_rows:
        log.info("balance: planning over %d distinct pairs of %d rows (%.1f MB of Parquet) in the driver",
                 len(by_key), table.num_rows, size / 2**20)
    keys = sorted(by_key)
    return LocalPairs(table.num_rows, keys, [by_key[k] for k in keys])


def plan_local(pairs: LocalPairs, n_entries: int, cfg: BalanceConfig) -> BalancePlan:
    """:func:`plan_balance` over pairs held by the driver: the same functions, so the same plan."""
    counts = count_matches(pairs.matched, n_entries)
    pool = len(pairs.keys)
    if cfg.method == "uniform":
        return _uniform_plan(counts, pool, cfg, pairs.rows)
    if cfg.target_size is not None:
        if pool > SOLVE_SAMPLE_ROWS:  # more pairs than DRIVER_MAX_PARQUET_BYTES holds: Spark samples such a pool
            raise ValueError(f"{pool:,} pairs: plan a pool of over {SOLVE_SAMPLE_ROWS:,} pairs with Spark")
        t = _solve(cfg.target_size, counts, pairs.matched, pool)
    else:
        t = float(cfg.fixed_t)
    expected = float(keep_probabilities(pairs.matched, entry_probabilities(counts, t)).sum())
    return _metaclip_plan(counts, t, pool, expected, pairs.rows)


def kept_counts_local(pairs: LocalPairs, p: np.ndarray, seed: int, uniform: float | None) -> tuple[np.ndarray, int]:
    """:func:`kept_counts` over pairs held by the driver."""
    keep = balance_batch(pairs.keys, *_draw_inputs(pairs.matched, p, uniform), seed)
    ids = [e for m, k in zip(pairs.matched, keep, strict=True) if k for e in m]
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(p)), int(keep.sum())


def _draw_inputs(matched: list[list[int]], p: np.ndarray, uniform: float | None
                 ) -> tuple[list[list[int]], np.ndarray]:
    """The match lists and entry probabilities a batch's draws take: with ``uniform``, one draw per pair, the draw
    of entry 0 whatever the pair matched, kept below ``uniform``."""
    if uniform is None:
        return matched, p
    return [[0]] * len(matched), np.array([uniform])


def balance_arrow(batch: pa.RecordBatch, p: np.ndarray, seed: int, counts: StageCounts,
                  out_schema: pa.Schema, uniform: float | None = None) -> pa.RecordBatch:
    """The rows of ``batch`` whose pair MetaCLIP's draws keep; with ``uniform`` those whose one draw (the draw of
    entry 0, whatever the pair matched) falls below it, so the sample is as seeded and reproducible as balancing."""
    counts.rows_in += batch.num_rows
    matched, p = _draw_inputs(batch.column("matched").to_pylist(), p, uniform)
    keep = balance_batch(_pair_keys(batch), matched, p, seed)
    prob = keep_probabilities(matched, p)
    n = int(keep.sum())
    counts.rows_out += n
    counts.drop("balanced_out", batch.num_rows - n)
    mask = pa.array(keep)
    kept = batch.filter(mask)
    columns = {name: kept.column(name) for name in kept.schema.names}
    columns["keep_probability"] = pa.array(prob[keep], type=pa.float64())
    return pa.RecordBatch.from_pydict(columns, schema=out_schema)


def run_balance(ctx: StageContext) -> StageCounts:
    from witbuild.curate.querylist_artifact import prepare_querylist

    cfg = ctx.cfg
    entries, manifest = prepare_querylist(ctx.spark, cfg, None)
    df = ctx.spark.read.parquet(ctx.previous)
    local = read_local_pairs(ctx.previous)
    pairs = distinct_pairs(df).cache() if local is None else None  # planned over, then counted again as kept
    try:
        plan = (plan_local(local, len(entries), cfg.balance) if local is not None
                else _plan(pairs, len(entries), cfg.balance, df.count()))
        log.info("balance: %s", plan.describe())
        p = _probabilities(plan, len(entries))
        counts = _write_kept(ctx, df, p, plan)
        seed = cfg.balance.seed
        kept, pairs_out = (kept_counts_local(local, p, seed, plan.uniform) if local is not None
                           else kept_counts(pairs, p, seed, plan.uniform))
    finally:
        if pairs is not None:
            pairs.unpersist()
    table = schemas.load("entry_counts").table({
        "entry_id": list(range(len(entries))), "entry": entries, "count": plan.counts.tolist(),
        "probability": p.tolist(), "kept": kept.tolist()})
    fs, out = fs_and_path(ctx.output)
    with fs.open(f"{out}/{ENTRY_COUNTS_FILE}", "wb") as fh:
        pq.write_table(table, fh)

    counts.info.update({**plan.info(), "pairs_out": pairs_out, "seed": cfg.balance.seed,
                        "querylist_version": manifest["version"]})
    return counts


def _probabilities(plan: BalancePlan, n_entries: int) -> np.ndarray:
    return entry_probabilities(plan.counts, plan.t) if plan.uniform is None else np.full(n_entries, plan.uniform)


def _write_kept(ctx: StageContext, df: Any, p: np.ndarray, plan: BalancePlan) -> StageCounts:
    """The rows whose pair the draws keep, written by Spark with their keep probability."""
    p_bc = ctx.spark.sparkContext.broadcast(p)
    seed, uniform = ctx.cfg.balance.seed, plan.uniform
    arrow_schema = schemas.load("balanced").arrow()

    def task(batches: Iterator[pa.RecordBatch], counts: StageCounts) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield balance_arrow(batch, p_bc.value, seed, counts, arrow_schema, uniform)

    try:
        return ctx.map_batches(task, df)
    finally:
        p_bc.unpersist()
