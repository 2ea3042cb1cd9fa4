"""Training throughput: our trainer vs open_clip's ``open_clip_train``, same architecture, same shards, one run.

    /work/.benchenv-openclip/bin/python benchmarks/bench_train.py [--steps 40] [--batch-size 64] [--workers 2]

Both trainers run in the side environment that has open-clip-torch (see benchmarks/_openclip.py;
started from the project's own environment, this script re-runs itself there). Like for like:
the model JSON (``trainer/configs/models/tiny.json`` with CLIP's vocabulary, which open_clip's
tokenizer needs), CLIP's BPE (our tokenizer gives open_clip's ids, checked here), the shards
(10 × 256 photo-like 224 px JPEGs), batch size, loader workers, fp32 on CPU, AdamW with the same
LR/warmup/weight decay, ``OMP_NUM_THREADS=1``, a log line every step; the runs alternate
(ours, open_clip, ours, open_clip, …) and the median per trainer is reported; the first steps
(start-up, loader warm-up) are left out. Also printed: the data-wait share, achieved FLOP/s next
to a matmul peak measured in this run, and our ClipLoss against open_clip's on identical features.
Results go to benchmarks/_data/bench_train.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import _openclip as oc  # noqa: E402
from _machine import machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "_data" / "bench_train.json"


def ensure_side_env() -> None:
    """Re-run this script with the side environment's python when open_clip is not importable here."""
    if importlib.util.find_spec("open_clip") is not None:
        return
    python = oc.DEFAULT_ENV / "bin" / "python"
    if not python.exists():
        print(f"error: open_clip is not installed here and the side environment {oc.DEFAULT_ENV} is missing; "
              "create it as benchmarks/README.md says (or set BENCH_OPENCLIP_ENV)", file=sys.stderr)
        sys.exit(2)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def matmul_peak(threads: int = 1, n: int = 1024, reps: int = 8) -> float:
    """fp32 FLOP/s of an n×n matmul with ``threads`` intra-op threads (each trainer process has one)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run_ours(model_config: Path, shards: Path, *, steps: int, batch_size: int, workers: int, skip: int,
             nproc: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-train-ours-"))
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    sets = {"model": str(model_config), "tokenizer.kind": "clip", "tokenizer.clip_vocab_path": str(oc.clip_bpe_path()),
            "steps": steps, "log_every": 1, "checkpoint_every": 10**9, "data.batch_size": batch_size,
            "data.workers": workers, "data.holdout_fraction": 0.0,
            "data.crop_scale": "[0.9, 1.0]",
            "data.shuffle_buffer": 1000, "optim.lr": 5e-4, "optim.warmup_steps": 10, "optim.weight_decay": 0.2,
            "eval.retrieval": "false"}
    cmd = [*launcher, str(ROOT / "trainer" / "train.py"), "--data", str(shards), "--config", "tiny-cpu",
           "--output", str(out)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"our trainer failed:\n{proc.stderr[-3000:]}")
    with (out / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    kept = [r for r in rows if int(r["step"]) > skip]
    t_span = float(rows[-1]["elapsed_s"]) - float(rows[skip - 1]["elapsed_s"])
    step_times = [float(b["elapsed_s"]) - float(a["elapsed_s"]) for a, b in zip(rows[skip - 1:], kept, strict=False)]
    wait = sum(float(r["data_wait"]) * t for r, t in zip(kept, step_times, strict=True))
    return {"samples_per_s": round(len(kept) * batch_size * nproc / t_span, 2), "data_share": round(wait / t_span, 4),
            "steps_measured": len(kept), "wall_s": round(wall, 1), "last_loss": float(rows[-1]["loss"]),
            "mfu_logged": float(rows[-1]["mfu"])}


def run_theirs(model_config: Path, pattern: str, *, steps: int, batch_size: int, workers: int, skip: int,
               nproc: int) -> dict:
    run = oc.run_openclip_train(model_config, pattern, steps=steps, batch_size=batch_size, workers=workers,
                                nproc=nproc, skip_steps=skip, threads=1)
    if run.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{run.tail}")
    s = run.stats
    return {"samples_per_s": s["samples_per_s"], "data_share": s["data_share"], "steps_measured": s["steps_measured"],
            "wall_s": run.wall_s, "last_losses": s["last_losses"]}


def loss_check() -> dict:
    import torch

    from trainer.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n, d, scale in ((64, 128, 1 / 0.07), (256, 512, 100.0), (7, 16, 1.0)):
        img = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
        ours = ClipLoss()(img, txt, torch.tensor(scale, dtype=torch.float64)).item()
        theirs = oc.openclip_loss(img, txt, torch.tensor(scale, dtype=torch.float64))
        worst = max(worst, abs(ours - theirs))
    return {"max_abs_diff": worst, "equal": worst < 1e-9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=8, help="First steps left out (start-up, loader warm-up).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=1, help="Processes per trainer (gloo DDP when > 1).")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default=str(ROOT / "trainer" / "configs" / "models" / "tiny.json"))
    args = ap.parse_args()  # --help needs no side environment
    ensure_side_env()

    import torch

    from trainer.model import ModelConfig, train_flops_per_sample

    paths = oc.write_shards()
    config_path, cfg_dict = oc.openclip_ready_config(Path(args.model))
    cfg = ModelConfig.from_dict(cfg_dict)
    flops = train_flops_per_sample(cfg)
    tokenizer = oc.clip_tokenizer_ids_match()
    loss = loss_check()
    # same architecture: open_clip's model has exactly our parameter count (its FLOP counter undercounts
    # nn.MultiheadAttention's fused inference path, so parameters are the comparison that holds)
    from trainer.model import CLIP

    params = {"ours": sum(p.numel() for p in CLIP(cfg).parameters()),
              "open_clip": oc.openclip_forward_flops(config_path)["params"]}
    steps = -(-args.steps // args.workers) * args.workers  # open_clip runs whole rounds of loader workers
    kw = dict(steps=steps, batch_size=args.batch_size, workers=args.workers, skip=args.skip, nproc=args.nproc)
    ours, theirs = [], []
    for i in range(args.repeats):
        ours.append(run_ours(config_path, paths[0].parent, **kw))
        print(f"ours     run {i + 1}: {ours[-1]}", flush=True)
        theirs.append(run_theirs(config_path, oc.shard_pattern(paths), **kw))
        print(f"open_clip run {i + 1}: {theirs[-1]}", flush=True)
    peak = matmul_peak() * args.nproc
    med = {name: statistics.median(r["samples_per_s"] for r in runs) for name, runs in (("ours", ours),
                                                                                      ("open_clip", theirs))}
    wait = {name: statistics.median(r["data_share"] for r in runs) for name, runs in (("ours", ours),
                                                                                     ("open_clip", theirs))}
    result = {
        "machine": machine_info(), "torch": torch.__version__, "model": Path(args.model).stem,
        "model_config": cfg_dict, "train_gflop_per_sample": round(flops / 1e9, 4),
        "parameters": params, "shards": oc.shard_pattern(paths),
        "settings": {**kw, "repeats": args.repeats, "threads_per_process": 1, "precision": "fp32"},
        "ours": ours, "open_clip": theirs, "median_samples_per_s": med, "median_data_share": wait,
        "ratio_ours_over_open_clip": round(med["ours"] / med["open_clip"], 3),
        "peak_matmul_tflops": round(peak / 1e12, 4),
        "achieved_tflops": {k: round(v * flops / 1e12, 4) for k, v in med.items()},
        "mfu": {k: round(v * flops / peak, 4) for k, v in med.items()},
        "loss_check": loss, "tokenizer_check": {k: v for k, v in tokenizer.items() if k != "mismatches"},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"\nmodel {result['model']} ({result['train_gflop_per_sample']} GFLOP/sample train; parameters "
          f"{params['ours']:,} ours, {params['open_clip']:,} open_clip), {kw['steps']} steps × batch "
          f"{args.batch_size} × {args.nproc} process(es), {args.workers} loader workers, OMP_NUM_THREADS=1, "
          f"{args.repeats} alternating runs each")
    for name in ("ours", "open_clip"):
        print(f"  {name:<10} {med[name]:8.1f} samples/s  data wait {wait[name]:6.1%}  "
              f"{result['achieved_tflops'][name]:.4f} TFLOP/s  MFU {result['mfu'][name]:.1%}")
    print(f"  ratio ours / open_clip: {result['ratio_ours_over_open_clip']:.2f}x   "
          f"(matmul peak {result['peak_matmul_tflops']:.4f} TFLOP/s measured in this run)")
    print(f"  ClipLoss vs open_clip ClipLoss: max |diff| {loss['max_abs_diff']:.2e}; "
          f"CLIP tokenizer ids equal open_clip's: {tokenizer['ids_equal'] and tokenizer['padded_equal']}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
