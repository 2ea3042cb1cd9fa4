"""Balancing at Spark scale: counting + planning + balancing ``--rows`` synthetic matched pairs in ``local[2]``.

The stage code is the real one (``witbuild.stages.balance``): ``entry_counts`` (c_e, a Spark aggregation),
``plan_balance`` (c_e again, the pool size, t, and the exact expected size Σ P computed on the executors) once
with the fixed ``t`` (default 20,000) and once with a ``target_size`` (t solved by bisection on a sample of up to
1,000,000 pairs collected to the driver), and the balancing pass wired as ``run_balance`` wires it: p_e broadcast,
``df.mapInArrow(counted(task, counts_dir), out_schema.spark())`` with ``balance_arrow`` per Arrow batch, written
to Parquet. The pipeline's ``run_balance`` itself needs a whole build (query list, stage folders); this runs the
same calls on a synthetic pool.

Synthetic pool (generated inside Spark, written once to ``benchmarks/_data/balance-input-…`` and reused; the key
holds every parameter): ``spark.range(rows)`` → ``mapInArrow`` → per row a ``uid`` (32 hex characters, like the
real BLAKE2b uids) and ``matched``: 1..``--max-matched`` (uniform) distinct entry ids, each drawn from a Zipf law
of exponent ``--zipf`` over ``--entries`` (default 500,000) entries (entry id = frequency rank), sorted as the
Matcher gives them. The pool holds only these two columns (``matched``'s schema types: ``uid`` string,
``matched`` list<int32>); balancing reads each pair's (normalised URL, text), so the timed DataFrame adds a
``url`` and a ``text`` made from the uid (every pair distinct: the distinct-pair shuffle at its largest). The
output holds ``uid``, ``matched``, ``url``, ``text`` and ``keep_probability``: the real ``balanced`` table also
carries the other candidate columns (page_url, …), which ``balance_arrow`` copies through untouched, so the
real stage writes more bytes than this does.

Reported per phase: wall seconds, rows/s (pairs of the pool per second of wall time on the 2 cores of
``local[2]``), and the peak RSS of the whole process tree (this driver, the Spark JVM and its Python workers:
psutil over this process and its children, recursively, sampled every 0.2 s; forked workers share pages, so the
sum over-counts a little). Then the kept count against the plan's expected size.

    .venv/bin/python benchmarks/bench_balance.py --rows 200000     # smoke test (~1 min)
    .venv/bin/python benchmarks/bench_balance.py                   # 10M pairs (minutes; the first run generates)

Prints a table and writes ``benchmarks/_data/bench_balance.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402

from witbuild.config import SparkConfig  # noqa: E402
from witbuild.curate.balance import BalanceConfig, entry_probabilities  # noqa: E402
from witbuild.schemas import Field, TableSchema  # noqa: E402
from witbuild.spark import counted, get_session, read_task_counts  # noqa: E402
from witbuild.stages.balance import balance_arrow, entry_counts, plan_balance  # noqa: E402

DATA_DIR = ROOT / "benchmarks" / "_data"
MB = 2**20

POOL = TableSchema(
    "bench_matched",
    1,
    "Synthetic matched pool: the columns balancing reads.",
    (
        Field("uid", "string", False, "32 hex characters"),
        Field("matched", "list<int32>", False, "sorted distinct entry ids"),
    ),
)
BALANCED = TableSchema(
    "bench_balanced",
    1,
    "The pool's columns plus keep_probability (the balanced schema's own column).",
    (*POOL.fields, Field("url", "string", False, "http://img.example/{uid}.jpg"),
     Field("text", "string", False, "the uid"), Field("keep_probability", "float64", False, "P = 1 - prod(1 - p_e)")),
)


# --------------------------------------------------------------------------- memory sampling


class TreeRss:
    """Samples the RSS of this process and all its descendants every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = 0
        self.phase_peak = 0
        self.current = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = 0
        procs = [self.proc]
        with suppress(psutil.Error):
            procs += self.proc.children(recursive=True)
        for p in procs:
            with suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.sample()
            self.current = rss
            self.peak = max(self.peak, rss)
            self.phase_peak = max(self.phase_peak, rss)
            self._stop.wait(self.interval)

    def start(self) -> TreeRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reset_phase(self) -> None:
        self.phase_peak = self.sample()


@contextmanager
def phase(results: list[dict], name: str, rows: int, rss: TreeRss, **extra):
    rss.reset_phase()
    before = rss.phase_peak
    print(f"  {name} ...", flush=True)
    t0 = time.perf_counter()
    record: dict = {"phase": name, "rows": rows, **extra}
    yield record
    record["seconds"] = time.perf_counter() - t0
    record["rows_per_s"] = rows / record["seconds"] if record["seconds"] > 0 else None
    time.sleep(rss.interval * 1.5)  # one more sample of the phase's end
    record["rss_before_mb"] = before / MB
    record["peak_rss_mb"] = rss.phase_peak / MB
    results.append(record)
    print(f"  {name}: {record['seconds']:.1f} s, peak RSS {record['peak_rss_mb']:,.0f} MB", flush=True)


# --------------------------------------------------------------------------- synthetic pool


def make_generator(n_entries: int, zipf: float, max_matched: int, seed: int):
    """mapInArrow function: ``id`` batches of spark.range → (uid, matched) batches, deterministic per batch."""
    schema = POOL.arrow()

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cdf = None
        for batch in batches:
            n = batch.num_rows
            if not n:
                continue
            if cdf is None:
                cdf = np.cumsum(np.arange(1, n_entries + 1, dtype=np.float64) ** -zipf)
                cdf /= cdf[-1]
            first = int(batch.column(0)[0].as_py())
            rng = np.random.default_rng([seed, first])
            k = rng.integers(1, max_matched + 1, n)
            draws = np.minimum(np.searchsorted(cdf, rng.random((n, max_matched)), side="right"), n_entries - 1)
            cols = np.arange(max_matched)
            draws[cols[None, :] >= k[:, None]] = n_entries  # unused draws sort last
            draws.sort(axis=1)
            keep = draws < n_entries
            keep[:, 1:] &= draws[:, 1:] != draws[:, :-1]  # distinct ids per pair
            lens = keep.sum(axis=1)
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(lens, out=offsets[1:])
            matched = pa.ListArray.from_arrays(pa.array(offsets), pa.array(draws[keep].astype(np.int32)))
            hexes = rng.bytes(16 * n).hex()
            uids = pa.array([hexes[i : i + 32] for i in range(0, 32 * n, 32)], type=pa.string())
            yield pa.RecordBatch.from_arrays([uids, matched], schema=schema)

    return generate


def ensure_pool(spark, args: argparse.Namespace) -> tuple[Path, dict]:
    key = f"balance-input-{args.rows}r-{args.entries}e-z{args.zipf:g}-k{args.max_matched}-seed{args.seed}"
    path = DATA_DIR / f"{key}.parquet"
    meta_path = DATA_DIR / f"{key}.meta.json"
    if (path / "_SUCCESS").exists() and meta_path.exists() and not args.regenerate:
        print(f"using cached pool {path.name}", flush=True)
        return path, json.loads(meta_path.read_text())
    print(f"generating {args.rows:,} pairs -> {path.name} ...", flush=True)
    t0 = time.perf_counter()
    n_parts = max(2, math.ceil(args.rows / 1_000_000)) * 2
    gen = make_generator(args.entries, args.zipf, args.max_matched, args.seed)
    (spark.range(args.rows, numPartitions=n_parts).mapInArrow(gen, POOL.spark())
     .write.mode("overwrite").parquet(str(path)))
    size = sum(f.stat().st_size for f in path.glob("*.parquet"))
    meta = {"rows": args.rows, "entries": args.entries, "zipf": args.zipf, "max_matched": args.max_matched,
            "seed": args.seed, "files": n_parts, "parquet_mb": round(size / 1e6, 1),
            "generate_seconds": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta, indent=2))
    print(f"  {meta['parquet_mb']:,} MB of Parquet in {meta['generate_seconds']} s", flush=True)
    return path, meta


# --------------------------------------------------------------------------- the benchmark


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="matched pairs in the synthetic pool")
    ap.add_argument("--entries", type=int, default=500_000, help="query list size (entry ids 0..entries-1)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the entry frequencies")
    ap.add_argument("--max-matched", type=int, default=4, help="each pair matches 1..this many entries")
    ap.add_argument("--t", type=int, default=20_000, help="fixed per-entry cap")
    ap.add_argument("--target-size", type=int, default=None, help="target size to solve t for (default rows / 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--regenerate", action="store_true", help="regenerate the cached pool")
    ap.add_argument("--out", type=Path, default=DATA_DIR / "bench_balance.json")
    args = ap.parse_args()
    target_size = args.target_size or max(1, args.rows // 4)

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    rss = TreeRss().start()
    t0 = time.perf_counter()
    spark = get_session(SparkConfig(master=args.master, app_name="bench_balance"))
    startup_s = time.perf_counter() - t0
    pool_path, pool_meta = ensure_pool(spark, args)

    work = DATA_DIR / f"balance-run-{args.rows}r"
    out_path, counts_dir = work / "balanced.parquet", work / "counts"
    shutil.rmtree(work, ignore_errors=True)
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(pool_path))
    df = df.select("uid", "matched", F.concat(F.lit("http://img.example/"), "uid", F.lit(".jpg")).alias("url"),
                   F.col("uid").alias("text"))
    n = args.rows
    results: list[dict] = []
    print(f"timing ({args.master}) ...", flush=True)

    with phase(results, "count", n, rss) as rec:
        counts = entry_counts(df, args.entries)
        rec["matches"] = int(counts.sum())
        rec["entries_matched"] = int((counts > 0).sum())

    with phase(results, f"plan (t = {args.t:,})", n, rss) as rec:
        plan = plan_balance(df, args.entries, BalanceConfig(t=args.t))
        rec["plan"] = plan.info()

    with phase(results, f"plan (target_size = {target_size:,})", n, rss) as rec:
        plan_target = plan_balance(df, args.entries, BalanceConfig(target_size=target_size))
        rec["plan"] = plan_target.info()

    with phase(results, f"balance (t = {args.t:,}) -> Parquet", n, rss) as rec:
        # run_balance's wiring: p_e broadcast, mapInArrow(counted(task)), balance_arrow per batch, Parquet
        p = entry_probabilities(plan.counts, plan.t)
        p_bc = spark.sparkContext.broadcast(p)
        seed = BalanceConfig().seed
        arrow_schema = BALANCED.arrow()

        def task(batches: Iterator[pa.RecordBatch], stage_counts) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                yield balance_arrow(batch, p_bc.value, seed, stage_counts, arrow_schema)

        df.mapInArrow(counted(task, str(counts_dir)), BALANCED.spark()).write.mode("overwrite").parquet(
            str(out_path))
        p_bc.unpersist()

    rss.stop()
    stage_counts = read_task_counts(str(counts_dir))
    kept = spark.read.parquet(str(out_path)).count()
    spark.stop()

    expected = plan.expected_size
    z = (kept - expected) / math.sqrt(expected) if expected else float("nan")
    report = {
        "machine": {"nproc": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average_1min_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)]},
        "versions": {"python": platform.python_version(), "pyspark": _version("pyspark"),
                     "pyarrow": _version("pyarrow"), "numpy": _version("numpy")},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_size": target_size,
        "pool": pool_meta,
        "spark_startup_seconds": round(startup_s, 1),
        "phases": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
        "peak_rss_mb": round(rss.peak / MB, 1),
        "balance": {"kept": kept, "expected_size": round(expected, 1),
                    "kept_minus_expected": round(kept - expected, 1),
                    "z_vs_sqrt_expected": round(z, 2), "rows_in": stage_counts.rows_in,
                    "rows_out": stage_counts.rows_out, "dropped": dict(stage_counts.dropped)},
        "plan_fixed_t": plan.info(),
        "plan_target_size": plan_target.info(),
    }

    print(f"\nSpark {args.master} ({report['machine']['nproc']} cores, {report['machine']['memory_gb']} GB), pyspark "
          f"{report['versions']['pyspark']}; session start {startup_s:.1f} s")
    print(f"pool: {n:,} pairs, {results[0]['matches']:,} matches over {results[0]['entries_matched']:,} of "
          f"{args.entries:,} entries (Zipf {args.zipf:g}, 1..{args.max_matched} per pair), "
          f"{pool_meta['parquet_mb']:,} MB Parquet\n")
    print(f"{'phase':<34}{'seconds':>9}{'rows/s':>13}{'peak RSS (tree)':>18}")
    for r in results:
        print(f"{r['phase']:<34}{r['seconds']:>9.1f}{r['rows_per_s']:>13,.0f}{r['peak_rss_mb']:>15,.0f} MB")
    total = sum(r["seconds"] for r in results)
    print(f"{'total':<34}{total:>9.1f}{'':>13}{rss.peak / MB:>15,.0f} MB")
    print(f"\nfixed t: {plan.describe()}")
    print(f"target_size {target_size:,}: {plan_target.describe()}")
    print(f"kept {kept:,} pairs vs expected {expected:,.1f}: {kept - expected:+,.1f} ({z:+.2f} sqrt(expected))")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
