"""Near-duplicate dedup: verdict quality on labelled image pairs, and LSH scaling over synthetic pHashes.

Quality (first; ``--quality-only`` stops there, ``--skip-quality`` skips it): a labelled pair set generated at
run time (``witbuild.demo.dup_pairs``: true copies — resized, re-encoded, PNG→JPEG, JPEG→PNG, 1-5% crops,
±6-10% brightness — and hard negatives — colour variants of one outline and distinct single-shape drawings,
both mined within the pHash threshold, and two views of one photo when scikit-image is installed). It prints,
per kind and overall, what pHash alone removes (before) and what pHash + the colour check removes (after):
precision and recall, the ΔE spread behind the config defaults, how many removals leave no image of their
original in one deduplicated set (chains), and finalize's per-image CPU cost before and after (decode + pHash
[+ thumbnail], and the verdicts) on that set and on a web-like set with few near pairs.

Scaling: over synthetic pHashes at n, 2n, 4n items, time and memory (the aim: linear).

Default n = 1M, so 1M, 2M and 4M items (``--n`` to change). Each size runs in a fresh subprocess and times
``near_duplicate_keep_mask(keys, hashes)`` at the default config (threshold 4, 5 bands, ``MAX_BUCKET``,
``MAX_DEPTH``), as its two halves: ``near_duplicate_groups`` (the LSH search) and ``keep_smallest_key``.

Synthetic hashes (seeded): 95% uniform random 64-bit values (distinct images) and 5% planted near
duplicates, each a copy of a random distinct image with 0..threshold random bits flipped (uniform count,
so 1/(threshold+1) of them are identical hashes; an image can get several copies: clusters). Random pairs
fall within 4 bits with probability 679,121 / 2^64 ≈ 3.7e-14, so at 4M items about 0.3 accidental pairs are
expected: the truth is the planted clusters, and the script checks every copy landed in its original's
group, and counts the groups and dropped items against the planted ones.

Measured per size: wall and CPU seconds (best of ``--repeat``), peak RSS growth during the call (VmHWM,
reset through /proc/self/clear_refs where allowed, else a psutil sampling thread), and the search's
counters (candidate pairs compared, pairs verified, pairs pruned as already joined, buckets re-banded).
For reference, one plain ``np.argsort`` of the same hashes is timed too: on a small-cache machine even that
grows faster than n, and the search does ~30 sort-and-gather passes.

    .venv/bin/python benchmarks/bench_dedup.py                 # quality, then 1M, 2M, 4M
    .venv/bin/python benchmarks/bench_dedup.py --n 250000      # quality, then 250k, 500k, 1M
    .venv/bin/python benchmarks/bench_dedup.py --quality-only --per-kind 80 --quality-seed 1

Prints a table and writes ``benchmarks/_data/bench_dedup.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from _machine import status_kb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from witbuild.dedup import phash  # noqa: E402

DATA_DIR = ROOT / "benchmarks" / "_data"
DUP_FRACTION = 0.05


def synthetic(n: int, threshold: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, source of each planted copy, index of each copy): copies are the last items."""
    rng = np.random.default_rng(seed)
    n_copies = int(n * DUP_FRACTION)
    n_base = n - n_copies
    base = rng.integers(0, 2**64, n_base, dtype=np.uint64)
    src = rng.integers(0, n_base, n_copies)
    copies = base[src].copy()
    flips = rng.integers(0, threshold + 1, n_copies)
    for k in range(threshold):  # k-th flip for copies that get more than k flips (distinct bits)
        has = flips > k
        bits = rng.integers(0, 64, has.sum(), dtype=np.uint64)
        prev = copies[has]
        while True:  # redraw bits already flipped, so the distance is exactly flips[i]
            same = (base[src[has]] ^ prev) & (np.uint64(1) << bits) != 0
            if not same.any():
                break
            bits[same] = rng.integers(0, 64, same.sum(), dtype=np.uint64)
        copies[has] = prev ^ (np.uint64(1) << bits)
    hashes = np.concatenate([base, copies])
    return hashes, src, np.arange(n_base, n)


class PeakRss:
    """Peak RSS growth over a block: VmHWM after resetting it, or a psutil sampling thread."""

    def __enter__(self) -> PeakRss:
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm = status_kb("VmHWM") is not None
        except OSError:
            self.hwm = False
        self.sampled = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.sampled = max(self.sampled, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        peak = status_kb("VmHWM") * 1024 if self.hwm else self.sampled
        self.method = "VmHWM" if self.hwm else "psutil sampling (5 ms)"
        self.growth_mb = (max(peak, self.sampled) - self.base) / 2**20


def _argsort_cpu(a: np.ndarray) -> float:
    t = time.process_time()
    np.argsort(a)
    return time.process_time() - t


def run_one(n: int, threshold: int, seed: int, repeat: int) -> dict:
    """One size, in this process."""
    hashes, src, copy_idx = synthetic(n, threshold, seed)
    keys = [f"{i:010d}" for i in range(n)]  # img2dataset-like sample keys
    best: dict = {}
    for _ in range(repeat):
        stats = phash.LshStats()
        with PeakRss() as mem:
            w0, c0 = time.perf_counter(), time.process_time()
            labels = phash.near_duplicate_groups(hashes, threshold, stats=stats)
            w1, c1 = time.perf_counter(), time.process_time()
            keep = phash.keep_smallest_key(keys, labels)
            w2, c2 = time.perf_counter(), time.process_time()
        run = {
            "wall_s": w2 - w0, "cpu_s": c2 - c0, "groups_wall_s": w1 - w0, "groups_cpu_s": c1 - c0,
            "keep_wall_s": w2 - w1, "peak_rss_growth_mb": mem.growth_mb, "rss_method": mem.method,
            "stats": dataclasses.asdict(stats),
        }  # fmt: skip
        if not best or run["cpu_s"] < best["cpu_s"]:
            best = run
    sort_s = min(_argsort_cpu(hashes) for _ in range(3))  # the machine's own n log n + cache reference
    n_base = n - copy_idx.size
    planted_clusters = np.unique(src).size
    multi = np.bincount(labels, minlength=int(labels.max()) + 1) > 1
    return {
        "n": n,
        **best,
        "argsort_cpu_s": sort_s,
        "planted_copies": int(copy_idx.size),
        "planted_clusters": int(planted_clusters),
        "dropped": int(n - keep.sum()),
        "groups": int(labels.max()) + 1,
        "groups_with_duplicates": int(multi.sum()),
        "copies_with_their_original": int((labels[copy_idx] == labels[src]).sum()),
        "originals_merged_with_another": int(n_base - np.unique(labels[:n_base]).size),
    }


def machine() -> dict:
    model = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu_model": model,
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="smallest size; runs n, 2n, 4n (default 1M)")
    ap.add_argument("--threshold", type=int, default=phash.DEFAULT_THRESHOLD)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2, help="runs per size; the lowest CPU time is kept")
    ap.add_argument("--per-kind", type=int, default=60, help="labelled pairs per kind (quality)")
    ap.add_argument("--quality-seed", type=int, default=0, help="seed of the labelled pairs")
    ap.add_argument("--quality-only", action="store_true", help="measure verdict quality only")
    ap.add_argument("--skip-quality", action="store_true", help="measure LSH scaling only")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threshold, args.seed, args.repeat)))
        return
    if not args.skip_quality:
        import _dedup_quality

        from witbuild.dedup.near import ColourLimits
        from witbuild.dedup.urls import DedupConfig

        cfg = DedupConfig(phash_threshold=args.threshold)
        quality = _dedup_quality.run(args.per_kind, args.quality_seed, args.threshold,
                                     ColourLimits(cfg.colour_max_mean, cfg.colour_max_tail))
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path = DATA_DIR / "bench_dedup_quality.json"
        path.write_text(json.dumps({"benchmark": "bench_dedup quality", "machine": machine(), **quality},
                                   indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}\n")
        if args.quality_only:
            return

    info = machine()
    print(f"near_duplicate_keep_mask, threshold {args.threshold}, bands {args.threshold + 1}, "
          f"max_bucket {phash.MAX_BUCKET}, max_depth {phash.MAX_DEPTH}; {DUP_FRACTION:.0%} planted copies")  # fmt: skip
    print(f"{info['cpu_model']}, {info['nproc']} cores, load average {info['loadavg_at_start'][0]:.1f} at start; "
          f"best of {args.repeat} (lowest CPU)\n")  # fmt: skip
    rows = []
    for n in (args.n, 2 * args.n, 4 * args.n):
        cmd = [sys.executable, __file__, "--one", str(n), "--threshold", str(args.threshold),
               "--seed", str(args.seed), "--repeat", str(args.repeat)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    t0, c0 = rows[0]["wall_s"], rows[0]["cpu_s"]
    head = (f"{'items':>9} {'wall s':>7} {'cpu s':>7} {'µs/item':>8} {'t/t(n)':>7} {'cpu/cpu(n)':>10} "
            f"{'peak MB':>8} {'B/item':>7} {'candidates':>11} {'verified':>9} {'pruned':>9} {'split':>6} "
            f"{'groups>1':>9} {'planted':>8} {'dropped':>8} {'planted':>8} {'copies ok':>10}")  # fmt: skip
    print(head)
    for r in rows:
        st = r["stats"]
        print(f"{r['n']:>9,} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {1e6 * r['cpu_s'] / r['n']:>8.2f} "
              f"{r['wall_s'] / t0:>7.2f} {r['cpu_s'] / c0:>10.2f} {r['peak_rss_growth_mb']:>8.0f} "
              f"{r['peak_rss_growth_mb'] * 2**20 / r['n']:>7.0f} {st['candidates']:>11,} {st['verified']:>9,} "
              f"{st['pruned']:>9,} {st['split_buckets']:>6,} {r['groups_with_duplicates']:>9,} "
              f"{r['planted_clusters']:>8,} {r['dropped']:>8,} {r['planted_copies']:>8,} "
              f"{r['copies_with_their_original']:>10,}")  # fmt: skip
    print("\nitems: total (95% random, 5% planted copies); µs/item: CPU; t/t(n): wall time over the smallest "
          "size's (linear: 1, 2, 4);\npeak MB: peak RSS growth during the call; candidates/verified: pairs "
          "compared / within the threshold\n(repeats across bands included); pruned: pairs skipped as already "
          "in one group; split: buckets re-banded;\ngroups>1 vs planted: groups with duplicates vs originals "
          "that got copies; dropped vs planted: items not kept vs copies;\ncopies ok: copies grouped with "
          "their original.")  # fmt: skip
    for r in rows:
        print(f"  {r['n']:>9,}: groups {r['groups_wall_s']:.2f}s + keep_smallest_key {r['keep_wall_s']:.2f}s wall; "
              f"largest bucket {r['stats']['largest_bucket']}, identical {r['stats']['identical']:,}, "
              f"originals merged {r['originals_merged_with_another']}; RSS by {r['rss_method']}")  # fmt: skip
    ratios = {
        "wall_2n_over_n": rows[1]["wall_s"] / t0, "wall_4n_over_n": rows[2]["wall_s"] / t0,
        "cpu_2n_over_n": rows[1]["cpu_s"] / c0, "cpu_4n_over_n": rows[2]["cpu_s"] / c0,
        "peak_mb_4n_over_n": rows[2]["peak_rss_growth_mb"] / max(rows[0]["peak_rss_growth_mb"], 1e-9),
        "argsort_2n_over_n": rows[1]["argsort_cpu_s"] / rows[0]["argsort_cpu_s"],
        "argsort_4n_over_n": rows[2]["argsort_cpu_s"] / rows[0]["argsort_cpu_s"],
    }  # fmt: skip
    print("\nscaling: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("(argsort_*: one np.argsort of the n hashes, CPU: what n log n and the caches cost on this machine)")
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "bench_dedup",
        "function": "witbuild.dedup.phash.near_duplicate_keep_mask (near_duplicate_groups + keep_smallest_key)",
        "params": {"n": args.n, "threshold": args.threshold, "bands": args.threshold + 1, "seed": args.seed,
                   "repeat": args.repeat, "dup_fraction": DUP_FRACTION, "max_bucket": phash.MAX_BUCKET,
                   "max_depth": phash.MAX_DEPTH, "exact_bucket_limit": phash.EXACT_BUCKET_LIMIT},
        "machine": info,
        "rows": rows,
        "scaling": ratios,
    }  # fmt: skip
    path = DATA_DIR / "bench_dedup.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
