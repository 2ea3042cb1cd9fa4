"""Training speed on one GPU, end to end: our trainer against open_clip_train, model-step probes, a learning check.

    python benchmarks/bench_train_gpu.py [--models vit-b-32,vit-b-16] [--steps 45] [--batch-size 512] [--workers 12]
        [--skip-openclip] [--json OUT]
    python benchmarks/bench_train_gpu.py --device cpu --steps 5     # smoke run: tiny model, tiny batch

For each model (a JSON in trainer/configs/models/ or a path):

1. model step only, on random tensors already on the device (no data loading): eager (torch's default AdamW) and
   the compiled step (fused AdamW, forward and loss as one compiled function; ``--variants`` adds fused AdamW alone,
   CUDA graphs, max-autotune), built with the trainer's own ``make_step`` and run with its ``train_step``; samples/s,
   MFU, the first step's time (compilation), host syncs per step (CUDA's sync debug mode), and the losses of each
   variant against eager's on the same batches from the same initialisation (the equivalence check of the compiled
   step); ``--profile VARIANT`` adds the kernels that take a step's time; when open_clip runs, its own step on the
   same model JSON and batch, eager (``--openclip-compile``: compiled), timed the same way;
2. our trainer (``trainer/train.py``, a subprocess, as a user starts it), for every model; then, when open_clip is
   importable (here or in ``$BENCH_OPENCLIP_ENV``, see benchmarks/_openclip.py), ``open_clip_train`` on the same
   model JSON, shards, batch and loader workers (bf16 autocast on CUDA); samples/s, data-wait share and MFU of both
   after the first steps (compilation, loader warm-up);

then trains the tiny model on generated handwritten-digit shards and prints its zero-shot top-1 on the 360 held-out
digits, so that a speed change that breaks learning shows at once (the full demo build: ``make demo``).

Shards are generated locally (photo-like 224 px JPEGs, ``_openclip.write_shards``; nothing is downloaded or
installed); MFU is model FLOPs (``trainer.model.train_flops_per_sample``) over a bf16 (CUDA) or fp32 (CPU) matmul
peak measured in this run, and over ``--peak-tflops`` when given (a data-sheet figure). Results go to
benchmarks/_data/bench_train_gpu.json (``--json``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import _openclip as oc  # noqa: E402
from _machine import machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "_data" / "bench_train_gpu.json"
WORK = ROOT / "benchmarks" / "_data" / "bench-train-gpu"
TRAIN = ROOT / "trainer" / "train.py"
T_START = time.perf_counter()
DEFAULTS = {  # per device: what fits 6 minutes on one GPU, and a smoke run of seconds on a CPU
    "cuda": {"models": "vit-b-32,vit-b-16", "steps": 45, "batch_size": 512, "workers": 12, "learn_steps": 200,
             "learn_batch": 128, "shards": (24, 128, 224), "config": "vit-b-32-gpu"},
    "cpu": {"models": "tiny", "steps": 20, "batch_size": 8, "workers": 1, "learn_steps": 300, "learn_batch": 64,
            "shards": (2, 48, 64), "config": "tiny-cpu"},
}
MIN_LEARN_STEPS = 200  # fewer steps than this print the zero-shot figure without judging it
# chance is 10%; measured 97.8% (300 steps × batch 64, one CPU process, eager fp32, seed 0): a broken loss, shuffled
# pairs or a step that does not update stay near chance
MIN_ZEROSHOT = 0.7
PROBE_BATCHES = 4  # distinct random batches, cycled: the same sequence for every variant
LOSS_TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}  # relative, compiled or fused against eager on the same batches
# each tower's residual stream under the step's precision, as open_clip computes it (bf16 autocast on CUDA; none on
# a CPU); another dtype on a GPU means trainer.model.LayerNorm no longer casts back, and fails the run
STREAM_DTYPES = {"cuda": {"image": "bfloat16", "text": "float32"}, "cpu": {"image": "float32", "text": "float32"}}
AGREEMENT_STEPS = 6  # compared over the first steps: later ones drift apart by rounding alone, most in bf16


# ------------------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--models", help="Comma-separated model JSON names or paths (cuda: vit-b-32,vit-b-16; cpu: tiny).")
    ap.add_argument("--steps", type=int, help="Trainer steps per run (cuda 45, cpu 20); the probes time half as many "
                                              "after 3 warm-up steps.")
    ap.add_argument("--batch-size", type=int, help="Per-device batch (cuda 512, cpu 8).")
    ap.add_argument("--workers", type=int, help="Loader workers of both trainers (cuda 12, cpu 1).")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="Compiled step in the probes and our trainer runs (auto: on CUDA, as the trainer's own auto).")
    ap.add_argument("--cudagraphs", action="store_true", help="Also probe the compiled step with CUDA graphs "
                                                              "(compile_mode=reduce-overhead).")
    ap.add_argument("--variants", help=f"Comma-separated probe variants to run (default: eager, then compiled_step "
                                       f"when compiling, else fused_adamw; known: {', '.join(VARIANTS)}).")
    ap.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                    default="default", help="Our trainer's compile_mode in the end-to-end run.")
    ap.add_argument("--profile", help="Profile this probe variant (e.g. compiled_step) for 5 steps: GPU busy share and "
                                      "the kernels that take the time, written beside --json.")
    ap.add_argument("--skip-probes", action="store_true", help="No model-step probes.")
    ap.add_argument("--skip-ours", action="store_true", help="No end-to-end run of our trainer (the probes, "
                                                             "open_clip and the learning check still run).")
    ap.add_argument("--openclip-models", help="Comma-separated models open_clip_train runs (default: all of --models).")
    ap.add_argument("--attention", choices=("auto", "cudnn", "flash", "efficient", "math"), default="auto",
                    help="Our trainer's attention kernel in the end-to-end run (its config's attention).")
    ap.add_argument("--attention-kernels", action="store_true",
                    help="Also time each attention kernel alone (forward + backward) at each model's shapes.")
    ap.add_argument("--probe-only", action="store_true", help="Model-step probes only: no trainer runs, no learning "
                                                              "check.")
    ap.add_argument("--learn-steps", type=int, help="Steps of the learning check (cuda 200 × batch 128, cpu 300 × "
                                                    "64; 0 leaves it out).")
    ap.add_argument("--skip-openclip", action="store_true", help="Leave open_clip_train out.")
    ap.add_argument("--openclip-compile", action="store_true", help="Run open_clip_train with --torchcompile, and "
                                                                   "compile open_clip's model-step probe.")
    ap.add_argument("--clip-bpe", type=Path, help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: open_clip's copy).")
    ap.add_argument("--peak-tflops", type=float, help="Data-sheet peak per device, for a second MFU figure.")
    ap.add_argument("--work-dir", type=Path, default=WORK, help="Generated shards and run folders.")
    ap.add_argument("--json", type=Path, default=OUT)
    args = ap.parse_args(argv)
    defaults = DEFAULTS[args.device]
    for key in ("models", "steps", "batch_size", "workers", "learn_steps"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.models = [m for m in args.models.split(",") if m]
    if args.variants is not None:  # "" runs no probe
        args.variants = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(args.variants) - set(VARIANTS))
        if unknown:
            ap.error(f"unknown --variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.probe_only:
        args.skip_openclip, args.learn_steps = True, 0
    if args.skip_probes:
        args.variants = []
    args.openclip_models = args.models if args.openclip_models is None else [
        m for m in args.openclip_models.split(",") if m]
    if set(args.openclip_models) - set(args.models):
        ap.error(f"--openclip-models {sorted(set(args.openclip_models) - set(args.models))} not in --models")
    if args.profile and args.profile not in VARIANTS:
        ap.error(f"unknown --profile {args.profile!r}; known: {', '.join(VARIANTS)}")
    if args.steps < 3:
        ap.error("--steps must be at least 3 (the first are left out of the figures)")
    return args


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_flops(device) -> float:
    """The trainer's own MFU denominator: a large matmul in the training precision, measured now."""
    import torch

    from trainer.train import measure_peak_flops

    return max(measure_peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
               for _ in range(2))


# ------------------------------------------------------------------------------------------- model step only (probe)


@dataclass(frozen=True)
class Variant:
    name: str
    fused: bool
    compile: bool
    mode: str = "default"
    attention: str = "auto"


VARIANTS = {v.name: v for v in (
    Variant("eager", False, False), Variant("fused_adamw", True, False), Variant("compiled_step", True, True),
    Variant("compiled_step_cudagraphs", True, True, "reduce-overhead"),
    Variant("compiled_step_autotune", True, True, "max-autotune-no-cudagraphs"),
    *(Variant(f"compiled_step_{kernel}", True, True, attention=kernel) for kernel in ("cudnn", "flash", "efficient",
                                                                                       "math")))}


def variants(args: argparse.Namespace) -> list[Variant]:
    if args.variants is not None:
        return [VARIANTS[name] for name in args.variants]
    compiled = args.compile == "on" or (args.compile == "auto" and args.device == "cuda")
    names = ["eager"] + (["compiled_step"] if compiled else ["fused_adamw"])
    names += ["compiled_step_cudagraphs"] if compiled and args.cudagraphs else []
    return [VARIANTS[name] for name in names]


def random_batches(mcfg, batch: int, device, n: int = PROBE_BATCHES) -> list[tuple]:
    """``n`` batches as the loader hands them over: uint8 images and padded token ids ending in the end token."""
    import torch

    g = torch.Generator().manual_seed(0)
    size, ctx = mcfg.vision_cfg.image_size, mcfg.text_cfg.context_length
    vocab = mcfg.text_cfg.vocab_size
    eot = vocab - 1 if mcfg.text_cfg.eot_id is None else mcfg.text_cfg.eot_id
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
        out.append((images.to(device), oc.random_tokens(batch, ctx, eot, g).to(device)))
    return out


def host_syncs(step, batches: list[tuple], device, n: int = 3) -> float | None:
    """Host syncs per training step, counted by CUDA's sync debug mode (None on a CPU, which has none to count)."""
    import torch

    from trainer.train import train_step

    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(n):
                train_step(step, *batches[i % len(batches)])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message) for w in caught) / n


def probe(mcfg_path: Path, variant: Variant, args: argparse.Namespace, device, peak: float,
          text: dict | None = None) -> dict:
    """Train steps of the trainer's own step on random batches already on the device: the model's ceiling.

    ``text``: the text tower's ``vocab_size`` and ``eot_id`` as the trainer sets them from its tokenizer (see
    :func:`trainer_text_config`), so that the probe compiles the very graph the trainer compiles next and the
    trainer's run finds it in torch's compile cache."""
    import torch

    from trainer.config import TrainConfig
    from trainer.model import CLIP, train_flops_per_sample
    from trainer.train import configure_attention, configure_matmul, make_step, train_step

    cfg = TrainConfig.model_validate({"model": str(mcfg_path), "compile": variant.compile,
                                      **({"compile_mode": variant.mode} if variant.compile else {}),
                                      "attention": variant.attention,
                                      "optim": {"fused": variant.fused, "warmup_steps": 10}})
    mcfg = probe_model_config(cfg.model, text)
    configure_matmul(device)
    configure_attention(cfg.attention, device, fallback=False)  # a kernel that refuses the shape is an error
    torch.manual_seed(0)
    model = CLIP(mcfg).to(device).train()
    step, _ = make_step(cfg, model, device, bf16=device.type == "cuda")
    batches = random_batches(mcfg, args.batch_size, device)
    streams = stream_dtypes(model, batches[0], device)
    warmup, timed = 3, max(3, args.steps // 2)
    losses = []
    t0 = time.perf_counter()
    for i in range(warmup + timed):
        if i == warmup:
            sync(device)
            t1 = time.perf_counter()
        loss, _ = train_step(step, *batches[i % len(batches)])
        losses.append(loss.detach().float().clone())  # a CUDA-graph replay reuses its output buffer
        if i == 0:
            sync(device)
            first = time.perf_counter() - t0
    sync(device)
    seconds = time.perf_counter() - t1
    sps = timed * args.batch_size / seconds
    out = {"samples_per_s": round(sps, 2), "mfu": round(sps * train_flops_per_sample(mcfg) / peak, 4),
           "step_ms": round(1000 * seconds / timed, 3), "first_step_s": round(first, 2),
           "losses": [round(x, 6) for x in torch.stack(losses).tolist()],
           "host_syncs_per_step": host_syncs(step, batches, device), "stream_dtypes": streams}
    if args.profile == variant.name:
        out["profile"] = profile_steps(step, batches, device, args.json.with_name(
            f"{args.json.stem}-profile-{mcfg_path.stem}-{variant.name}.txt"))
    del step, model, batches
    release(device)
    configure_attention("auto", device)
    return out


def probe_model_config(model: str, text: dict | None):
    """The model the trainer builds from this JSON: its text tower's vocabulary and end token from the tokenizer."""
    from trainer.model import load_model_config

    mcfg = load_model_config(model)
    for key, value in (text or {}).items():
        setattr(mcfg.text_cfg, key, value)
    return mcfg


def stream_dtypes(model, batch: tuple, device) -> dict[str, str]:
    """The dtype of each tower's residual stream (its first block's output) under the step's autocast, on this
    device: open_clip keeps the image tower's in bf16 and the text tower's in float32 (CUDA's autocast computes
    ``layer_norm`` in float32; ``trainer.model.LayerNorm`` casts back), which only a CUDA run can show."""
    import torch

    seen = {}

    def record(key: str):
        def hook(_module, _inputs, out) -> None:  # returns None: the block's output stays as it is
            seen[key] = str(out.dtype).removeprefix("torch.")
        return hook

    towers = {"image": model.visual.transformer.blocks[0], "text": model.text.transformer.blocks[0]}
    hooks = [block.register_forward_hook(record(key)) for key, block in towers.items()]
    images, tokens = batch[0][:2].float() / 255.0, batch[1][:2]
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(images, tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen


def profile_steps(step, batches: list[tuple], device, path: Path, n: int = 5) -> dict:
    """``n`` steps under torch's profiler: the share of the wall time the device was busy (kernel time over wall
    time; a low share means the host cannot launch work fast enough) and the kernels that take the time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainer.train import train_step

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            train_step(step, *batches[i % len(batches)])
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    # kernels only: an op's launch lists its kernel too, and annotations (the optimizer's, a compiled graph's) span
    # kernels already counted
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    busy = sum(getattr(e, attr) for e in kernels) / 1e6  # µs of kernel time
    table = events.table(sort_by=attr, row_limit=40, max_name_column_width=90)
    path.write_text(f"{n} steps, {wall:.4f} s wall, {busy:.4f} s of device kernels ({busy / wall:.1%} busy)\n{table}")
    return {"steps": n, "wall_s": round(wall, 4), "device_busy_s": round(busy, 4),
            "busy_share": round(busy / wall, 4), "table": str(path)}


def attention_kernels(mcfg, args: argparse.Namespace, device) -> dict:
    """Each attention kernel alone, forward + backward, at the model's two shapes (the image tower's patches + 1
    tokens, both ways; the text tower's context, causal) and this batch, in the training precision: ms per layer and
    per training step (× layers). The fused kernels run eagerly and must take the shape (an error otherwise, no
    silent fallback); ``math`` is the plain attention compiled, with every fused kernel switched off."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from trainer.train import configure_attention

    v, t = mcfg.vision_cfg, mcfg.text_cfg
    shapes = {"vision": ((v.image_size // v.patch_size) ** 2 + 1, v.width // v.head_width, v.head_width, False,
                         v.layers),
              "text": (t.context_length, t.heads, t.width // t.heads, True, t.layers)}
    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    for tower, (n, heads, head_dim, causal, layers) in shapes.items():
        torch.manual_seed(0)
        q, k, v_, grad = (torch.randn(args.batch_size, heads, n, head_dim, device=device, dtype=dtype)
                          for _ in range(4))
        q, k, v_ = (x.requires_grad_() for x in (q, k, v_))
        row = {}
        for name, backend in kernels.items():
            def attend(q, k, v, backend=backend, causal=causal):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            try:
                if name == "math":
                    configure_attention("math", device)  # the trainer's own switch, as attention: math sets it
                    fn = torch.compile(attend, dynamic=False, fullgraph=True)
                else:
                    fn = attend
                ms = time_forward_backward(fn, (q, k, v_), grad, device)
            except RuntimeError as exc:
                row[name] = {"error": _last_line(str(exc))[:300]}
                continue
            finally:
                configure_attention("auto", device)
            row[name] = {"ms_per_layer": round(ms, 4), "ms_per_step": round(ms * layers, 3)}
        out[tower] = {"tokens": n, "heads": heads, "head_dim": head_dim, "causal": causal, "layers": layers,
                      "kernels": row}
    release(device)
    return out


def time_forward_backward(fn, inputs: tuple, grad, device, warmup: int = 3, n: int = 20) -> float:
    """Milliseconds per forward + backward of ``fn`` after ``warmup`` calls (compilation, kernel selection)."""
    import torch

    for i in range(warmup + n):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        torch.autograd.backward(fn(*inputs), grad)
        for x in inputs:
            x.grad = None
    sync(device)
    return (time.perf_counter() - t0) / n * 1000


def release(device) -> None:
    """Free the last probe's memory (compiled graphs hold their model) before the next one."""
    oc.release_memory(device)


def loss_agreement(runs: dict[str, dict], precision: str) -> dict:
    """Each variant's losses against eager's, step by step, on the same batches from the same initialisation."""
    if "error" in runs.get("eager", {"error": "not run"}):
        return {}
    eager = runs["eager"]["losses"]
    out = {}
    for name, run in runs.items():
        if name == "eager" or "error" in run:
            continue
        pairs = list(zip(run["losses"], eager, strict=True))[:AGREEMENT_STEPS]
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in pairs]
        out[name] = {"max_rel_diff": float(f"{max(diffs):.3g}"), "steps": len(diffs),
                     "tolerance": LOSS_TOLERANCE[precision], "equal": max(diffs) <= LOSS_TOLERANCE[precision]}
    return out


# ------------------------------------------------------------------------------------------------------------ data


def speed_shards(args: argparse.Namespace, workers: int = 1) -> list[Path]:
    """Photo-like JPEG shards in img2dataset's layout (bench_train.py's generator and seed), written once per spec;
    at least one per loader worker (open_clip_train refuses fewer)."""
    shards, per_shard, size = DEFAULTS[args.device]["shards"]
    shards = max(shards, args.workers)
    folder = args.work_dir / f"shards-{shards}x{per_shard}-{size}px"
    return oc.write_shards(folder, shards, per_shard, size, workers=workers)


def generate_data(args: argparse.Namespace) -> list[Path]:
    """The speed shards, and the learning check's digits beside them, on all cores before the device is used (forked
    workers, before CUDA starts); the paths of the speed shards."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool:
        digits = pool.submit(learning_data, args.work_dir) if args.learn_steps else None
        shards = speed_shards(args, workers=max(1, (os.cpu_count() or 2) - 1))
        if digits is not None:
            digits.result()
    return shards


def learning_data(work_dir: Path) -> tuple[Path, Path]:
    """The learning check's training shards and held-out digits, each written once."""
    from witbuild.demo.eval_images import write_eval_digits

    eval_dir = work_dir / "eval-digits"
    if not (eval_dir / "zeroshot.json").exists():
        write_eval_digits(eval_dir, size=64)
    return digit_shards(work_dir / "digits"), eval_dir


def digit_caption(index: int) -> str:
    from witbuild.demo.images import DIGIT_WORDS, digit_label

    label = digit_label(index)
    forms = (f"a handwritten digit {DIGIT_WORDS[label]}", f"the number {label} written by hand",
             f"scan of a handwritten {DIGIT_WORDS[label]} on paper", f"handwritten {DIGIT_WORDS[label]}")
    return forms[index % len(forms)]


def digit_shards(folder: Path, per_shard: int = 256, size: int = 64) -> Path:
    """The demo web's digits (never the held-out ones) with captions, as shards; written once."""
    import io
    import tarfile

    from witbuild.demo.images import digit_image, encode, web_digit_indices

    done = folder / "sizes.json"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    indices = web_digit_indices()
    sizes = {}
    for s in range(math.ceil(len(indices) / per_shard)):
        path = folder / f"{s:05d}.tar"
        chunk = indices[s * per_shard:(s + 1) * per_shard]
        with tarfile.open(path, "w") as tf:
            for index in chunk:
                for ext, payload in (("jpg", encode(digit_image(index, (size, size)), "jpg", 90)),
                                     ("txt", digit_caption(index).encode())):
                    info = tarfile.TarInfo(f"{index:09d}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        sizes[path.name] = len(chunk)
    done.write_text(json.dumps(sizes))
    return folder


# ------------------------------------------------------------------------------------------------- trainer runs


def trainer_command(args: argparse.Namespace, data: Path, out: Path, config: str, sets: dict) -> list[str]:
    cmd = [sys.executable, str(TRAIN), "--data", str(data), "--config", config, "--output", str(out)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def log_plan(steps: int) -> tuple[int, int]:
    """(log_every, steps left out): about six log rows, the first third of the run (compilation, warm-up) left out;
    one log row per ``log_every`` steps keeps the loss read-back off every other step."""
    every = max(1, steps // 6)
    return every, every * max(1, (steps // every) // 3)


def window_figures(rows: list[dict], skip: int, global_batch: int) -> dict:
    """samples/s and data-wait share over the log rows after step ``skip``, from the trainer's own log.csv."""
    before = [r for r in rows if int(r["step"]) <= skip]
    kept = [r for r in rows if int(r["step"]) > skip]
    if not before or not kept:
        raise RuntimeError(f"log.csv has no rows on both sides of step {skip}: {[r['step'] for r in rows]}")
    span = float(kept[-1]["elapsed_s"]) - float(before[-1]["elapsed_s"])
    steps = int(kept[-1]["step"]) - int(before[-1]["step"])
    times = [float(b["elapsed_s"]) - float(a["elapsed_s"]) for a, b in zip([before[-1], *kept[:-1]], kept,
                                                                           strict=True)]
    wait = sum(float(r["data_wait"]) * t for r, t in zip(kept, times, strict=True))
    return {"samples_per_s": round(steps * global_batch / span, 2), "data_wait": round(wait / span, 4),
            "steps_measured": steps, "mfu_logged": float(kept[-1]["mfu"]), "last_loss": float(kept[-1]["loss"])}


def run_ours(args: argparse.Namespace, model_json: Path, shards: Path, tokenizer: dict, flops: float,
             peak: float) -> dict:
    """Our trainer as a user starts it (one process, the device's config), measured from its log.csv."""
    out = args.work_dir / "runs" / f"ours-{model_json.stem}"
    shutil.rmtree(out, ignore_errors=True)
    every, skip = log_plan(args.steps)
    sets = {"model": model_json, "steps": args.steps, "log_every": every, "checkpoint_every": args.steps,
            "data.batch_size": args.batch_size, "data.workers": args.workers, "data.holdout_shards": 0,
            "data.holdout_fraction": 0.0, "optim.warmup_steps": 10, "eval.retrieval": "false",
            "compile": {"on": "true", "off": "false"}.get(args.compile, "auto"), **tokenizer}
    if args.compile_mode != "default" and args.compile != "off":
        sets["compile_mode"] = args.compile_mode
    if args.attention != "auto":
        sets["attention"] = args.attention
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # as bench_train.py: intra-op threads next to loader workers fight for cores
    cmd = trainer_command(args, shards, out, DEFAULTS[args.device]["config"], sets)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"our trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with (out / "log.csv").open() as fh:
        figures = window_figures(list(csv.DictReader(fh)), skip, args.batch_size)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a ViT-B checkpoint with its optimiser is ~2 GB
    return {**figures, "mfu": round(figures["samples_per_s"] * flops / peak, 4), "wall_s": round(wall, 1),
            "skipped_steps": skip, "log_every": every}


# ------------------------------------------------------------------------------------------------------- open_clip


BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


@dataclass
class OpenClipCheck:
    """The check that open_clip_train can run, started in the background: importing it takes seconds."""
    python: Path | None
    why: str = ""
    proc: subprocess.Popen | None = None


def start_openclip_check(args: argparse.Namespace) -> OpenClipCheck:
    """Start importing what open_clip_train needs in the python that would run it (this one when open_clip is
    importable here, else the side environment's)."""
    if args.skip_openclip:
        return OpenClipCheck(None, "--skip-openclip")
    here = importlib.util.find_spec("open_clip") is not None
    python = Path(sys.executable) if here else oc.DEFAULT_ENV / "bin" / "python"
    if not python.exists():
        return OpenClipCheck(None, f"open_clip is not importable here and there is no side environment at "
                                   f"{oc.DEFAULT_ENV}")
    check = "import open_clip, open_clip_train.main, webdataset, braceexpand, torch"
    if args.device == "cuda":
        check += "; assert torch.cuda.is_available(), 'its torch sees no CUDA device'"
    proc = subprocess.Popen([str(python), "-c", check], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return OpenClipCheck(python, proc=proc)


def finish_openclip_check(check: OpenClipCheck) -> tuple[Path | None, str]:
    """(the python that runs open_clip_train, or None and why not)."""
    if check.proc is None:
        return check.python, check.why
    try:
        _, err = check.proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        check.proc.kill()
        return None, f"{check.python}: importing open_clip_train took over 300 s"
    if check.proc.returncode != 0:
        return None, f"{check.python}: {(err.strip().splitlines() or ['failed'])[-1]}"
    return check.python, ""


def clip_bpe(args: argparse.Namespace) -> Path | None:
    """CLIP's BPE file: --clip-bpe, else open_clip's copy (importable here, or in the side environment)."""
    if args.clip_bpe:
        return args.clip_bpe
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin and (Path(spec.origin).parent / BPE_FILE).exists():
        return Path(spec.origin).parent / BPE_FILE
    found = sorted(oc.DEFAULT_ENV.glob(f"lib/python*/site-packages/open_clip/{BPE_FILE}"))
    return found[0] if found else None


def run_theirs(args: argparse.Namespace, python: Path, model_json: Path, shards: list[Path], flops: float,
               peak: float) -> dict:
    """open_clip_train on the same model JSON, shards, batch and workers; its log parsed past the same steps."""
    every, skip = log_plan(args.steps)
    # resampled: each worker draws shards with replacement, endlessly, as large open_clip runs do; without it a worker
    # stops after one pass over its shards, fewer samples than a run of large batches needs
    extra = ["--log-every-n-steps", str(every), "--dataset-resampled"]
    if args.device == "cuda":
        extra += ["--device", "cuda", "--precision", "amp_bf16"]  # later flags win over _openclip's CPU defaults
    if args.openclip_compile:
        extra.append("--torchcompile")
    run = oc.run_openclip_train(model_json, oc.shard_pattern(shards), steps=args.steps, batch_size=args.batch_size,
                                workers=args.workers, skip_steps=skip, python=python,
                                threads=1 if args.device == "cpu" else None, extra=extra,
                                logs=args.work_dir / "runs" / "open_clip")
    if run.returncode != 0 or not run.stats.get("samples_per_s"):
        why = "" if run.returncode else "it exited 0 but logged no timed training steps\n"
        raise RuntimeError(f"open_clip_train failed ({run.returncode}):\n{_without_torch_log(run.tail)}\n{why}".strip())
    s = run.stats
    return {"samples_per_s": s["samples_per_s"], "data_wait": s["data_share"], "steps_measured": s["steps_measured"],
            "mfu": round(s["samples_per_s"] * flops / peak, 4), "wall_s": run.wall_s, "skipped_steps": skip,
            "last_losses": s["last_losses"], "flags": extra}


def run_theirs_step(args: argparse.Namespace, python: Path, models: dict[str, dict], peak: float) -> dict:
    """open_clip's model step alone (``_openclip.model_step``) for each model, in one process of the python that runs
    open_clip_train: as many timed steps as our probes, on random batches already on the device, bf16 autocast on
    CUDA, compiled with ``--openclip-compile``; {model: figures or error}."""
    out = args.work_dir / "runs" / "open_clip_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [str(python), str(ROOT / "benchmarks" / "_openclip.py"), "step", "--batch-size", str(args.batch_size),
           "--steps", str(max(3, args.steps // 2)), "--device", args.device,
           "--precision", "amp_bf16" if args.device == "cuda" else "fp32", "--json", str(out),
           *(["--torchcompile"] if args.openclip_compile else [])]
    for m in models.values():
        cmd += ["--model-config", m["model_json"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if args.device == "cpu" else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"open_clip's model step failed ({proc.returncode}):\n"
                           f"{_without_torch_log((proc.stdout + proc.stderr)[-3000:])}")
    runs = json.loads(out.read_text())
    result = {}
    for name, m in models.items():
        r = runs[m["model_json"]]
        if "error" not in r:
            r["mfu"] = round(r["samples_per_s"] * m["train_gflop_per_sample"] * 1e9 / peak, 4)
        result[name] = r
    return result


# -------------------------------------------------------------------------------------------------- learning check


def learning_check(args: argparse.Namespace) -> dict:
    """The tiny model trained by our trainer (this device, its default levers) on generated digit shards; zero-shot
    top-1 on the held-out digits, which training never sees."""
    data, eval_dir = learning_data(args.work_dir)
    out = args.work_dir / "runs" / "learning"
    shutil.rmtree(out, ignore_errors=True)
    batch = DEFAULTS[args.device]["learn_batch"]
    sets = {"steps": args.learn_steps, "log_every": max(1, args.learn_steps // 5), "checkpoint_every": args.learn_steps,
            "data.batch_size": batch, "data.workers": min(args.workers, 4), "data.holdout_shards": 0,
            "data.holdout_fraction": 0.0, "optim.warmup_steps": min(50, args.learn_steps // 5),
            "eval.zeroshot_dir": eval_dir, "eval.retrieval": "false", "eval.linear_probe": "false"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(trainer_command(args, data, out, "tiny-cpu", sets), capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the learning check's training failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    zs = json.loads((out / "eval.json").read_text())["zeroshot"]
    judged = args.learn_steps >= MIN_LEARN_STEPS
    return {"steps": args.learn_steps, "batch_size": batch, "zeroshot_top1": zs["top1"], "images": zs["images"],
            "classes": zs["classes"], "chance": round(1 / zs["classes"], 4),
            "wall_s": round(time.perf_counter() - t0, 1), "threshold": MIN_ZEROSHOT if judged else None,
            "ok": zs["top1"] >= MIN_ZEROSHOT if judged else None}


# ------------------------------------------------------------------------------------------------------------ main


def model_and_tokenizer(name: str, args: argparse.Namespace, python: Path | None,
                        bpe: Path | None) -> tuple[Path, dict, dict]:
    """(model JSON to train, its config, tokenizer settings): CLIP's BPE and vocabulary when open_clip runs too (its
    tokenizer needs them) or the model already has that vocabulary; else a BPE fitted on the captions."""
    from trainer.model import load_model_config

    src = Path(name) if Path(name).is_file() else ROOT / "trainer" / "configs" / "models" / f"{name}.json"
    vocab = load_model_config(str(src)).text_cfg.vocab_size  # a clear error for an unknown name
    if bpe is not None and (python is not None or vocab >= oc.CLIP_VOCAB_SIZE):
        model_json, raw = oc.openclip_ready_config(src, args.work_dir / "models")
        return model_json, raw, {"tokenizer.kind": "clip", "tokenizer.clip_vocab_path": bpe}
    return src, json.loads(src.read_text()), {"tokenizer.kind": "bpe"}


def trainer_text_config(tokenizer: dict, context_length: int) -> dict:
    """The text tower's fields the trainer takes from its tokenizer (``tokenizer_and_model_config``): with CLIP's BPE
    its vocabulary and end token. A fitted BPE's depend on the captions, known only inside the trainer's run."""
    if tokenizer["tokenizer.kind"] != "clip":
        return {}
    from trainer.tokenizer import load_clip_bpe

    tok = load_clip_bpe(tokenizer["tokenizer.clip_vocab_path"], context_length)
    return {"vocab_size": tok.vocab_size, "eot_id": tok.eot_id}


def attempt(what: str, fn, *a, **kw) -> dict:
    """``fn``'s figures, or its error: one failing run (out of memory at a large batch) leaves the others to run.
    Prints progress: on a GPU machine the whole script runs for minutes."""
    t0 = time.perf_counter()
    try:
        out = fn(*a, **kw)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"  {what} failed: {_last_line(str(exc))}", flush=True)
        return {"error": str(exc)[-3000:]}
    figures = (f"{out['samples_per_s']} samples/s, MFU {out.get('mfu')}" if "samples_per_s" in out
               else f"zero-shot top-1 {out.get('zeroshot_top1')}")
    print(f"  {what}: {figures} ({time.perf_counter() - t0:.0f} s; {time.perf_counter() - T_START:.0f} s since the "
          f"start)", flush=True)
    return out


def attempt_step(args: argparse.Namespace, python: Path, models: dict[str, dict], peak: float) -> dict:
    """:func:`run_theirs_step`'s figures per model, or its error for all of them; prints each model's figures."""
    t0 = time.perf_counter()
    try:
        runs = run_theirs_step(args, python, models, peak)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"  open_clip's model step failed: {_last_line(str(exc))}", flush=True)
        return {"error": str(exc)[-3000:]}
    for name, r in runs.items():
        print(f"  {name}: " + (f"failed: {_last_line(r['error'])}" if "error" in r else
                               f"{r['samples_per_s']} samples/s, MFU {r['mfu']}"), flush=True)
    print(f"  ({time.perf_counter() - t0:.0f} s; {time.perf_counter() - T_START:.0f} s since the start)", flush=True)
    return runs


def bench_model(name: str, args: argparse.Namespace, device, peak: float, shards: list[Path],
                python: Path | None, bpe: Path | None, result: dict, save) -> None:
    """Probes and our trainer for one model, into ``result``; ``save()`` after each part, so that a run cut short by a
    time limit keeps what it measured."""
    from trainer.model import CLIP, ModelConfig, train_flops_per_sample

    model_json, raw, tokenizer = model_and_tokenizer(name, args, python, bpe)
    mcfg = ModelConfig.from_dict(raw)
    flops = train_flops_per_sample(mcfg)
    text = trainer_text_config(tokenizer, mcfg.text_cfg.context_length)
    result.update({"model_json": str(model_json), "parameters": sum(p.numel() for p in CLIP(mcfg).parameters()),
                   "train_gflop_per_sample": round(flops / 1e9, 4), "tokenizer": tokenizer["tokenizer.kind"],
                   "probe": {}, "loss_agreement": {}, "ours": None, "open_clip": None, "open_clip_step": None})
    if args.attention_kernels:
        print("  attention kernels …", flush=True)
        result["attention_kernels"] = attention_kernels(mcfg, args, device)
        save()
    for v in variants(args):
        result["probe"][v.name] = attempt(f"probe {v.name}", probe, model_json, v, args, device, peak, text)
        if "error" in result["probe"][v.name]:
            from trainer.train import configure_attention

            release(device)
            configure_attention("auto", device)
        result["loss_agreement"] = loss_agreement(result["probe"], "bf16" if device.type == "cuda" else "fp32")
        save()
    if not (args.probe_only or args.skip_ours):
        result["ours"] = attempt("our trainer", run_ours, args, model_json, shards[0].parent, tokenizer, flops, peak)
        save()


def failures(result: dict) -> list[str]:
    """What failed on our side (open_clip's own failures are reported, not counted)."""
    out = [f"{name} {part}" for name, m in result["models"].items()
           for part, r in [*m["probe"].items(), ("ours", m["ours"] or {})] if "error" in r]
    out += [f"{name} loss {v}" for name, m in result["models"].items()
            for v, a in m["loss_agreement"].items() if not a["equal"]]
    expected = STREAM_DTYPES[result["settings"]["device"]]
    out += [f"{name} {v} residual stream {p['stream_dtypes']} (expected {expected})"
            for name, m in result["models"].items() for v, p in m["probe"].items()
            if "stream_dtypes" in p and p["stream_dtypes"] != expected]
    learning = result["learning"] or {}
    if "error" in learning or learning.get("ok") is False:
        out.append("learning check")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu for the smoke run)",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one intra-op thread per process, as the trainer runs here (OMP_NUM_THREADS=1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    check = start_openclip_check(args)
    shards = generate_data(args)
    peak = peak_flops(device)
    python, why = finish_openclip_check(check)
    bpe = clip_bpe(args)
    result = {"machine": machine_info(), "torch": torch.__version__, "device": device_name(device),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "shards": oc.shard_pattern(shards), "peak_tflops_measured": float(f"{peak / 1e12:.4g}"),
              "setup_s": round(time.perf_counter() - t_start, 1),  # data written, open_clip checked, peak measured
              "open_clip": {"python": str(python) if python else None, "skipped": why or None}, "models": {}}
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))

    result["learning"] = None
    for name in args.models:  # ours for every model first, then open_clip's runs: a time limit cuts theirs
        print(f"{name} …", flush=True)
        result["models"][name] = {}
        bench_model(name, args, device, peak, shards, python, bpe, result["models"][name], save)
    for name in args.openclip_models if python is not None else []:
        m = result["models"].get(name)
        if m and "model_json" in m:
            print(f"{name}, open_clip …", flush=True)
            flops = m["train_gflop_per_sample"] * 1e9
            m["open_clip"] = attempt("open_clip_train", run_theirs, args, python, Path(m["model_json"]), shards,
                                     flops, peak)
            save()
    step_models = {name: m for name in (args.openclip_models if python is not None and variants(args) else [])
                   if "model_json" in (m := result["models"].get(name, {}))}
    if step_models:
        print("open_clip, model step only …", flush=True)
        theirs = attempt_step(args, python, step_models, peak)
        for name, m in step_models.items():
            m["open_clip_step"] = theirs.get(name, theirs)  # its figures, or the error of the whole run
        save()
    result["learning"] = attempt("learning check", learning_check, args) if args.learn_steps else None
    save()
    report(result, args)
    failed = failures(result)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({machine_info()['cpu_model']})"


def report(result: dict, args: argparse.Namespace) -> None:
    """The figures as tables on the console."""
    spec = args.peak_tflops * 1e12 if args.peak_tflops else None
    peak = result["peak_tflops_measured"] * 1e12
    print(f"\n{result['device']}, torch {result['torch']}; batch {args.batch_size}, {args.workers} loader workers, "
          f"{args.steps} steps per trainer run; matmul peak {result['peak_tflops_measured']:.3g} TFLOP/s measured"
          + (f", {args.peak_tflops:.0f} TFLOP/s given" if spec else ""))
    for name, m in result["models"].items():
        report_model(name, m, result["open_clip"]["skipped"], peak, spec)
    learning = result["learning"]
    if learning and "error" in learning:
        print(f"\nlearning check failed: {_last_line(learning['error'])}")
    elif learning:
        verdict = {True: "ok", False: "FAILED: learning is broken", None: "too few steps to judge"}[learning["ok"]]
        print(f"\nlearning check: tiny model, {learning['steps']} steps × batch {learning['batch_size']} on generated "
              f"digits: zero-shot top-1 {learning['zeroshot_top1']:.1%} on {learning['images']} held-out digits "
              f"(chance {learning['chance']:.0%}; at least {MIN_ZEROSHOT:.0%} expected after {MIN_LEARN_STEPS} "
              f"steps): {verdict}")
    print(f"\n{result['wall_s']:.0f} s in all; wrote {args.json}")


ROW = "  {:<34} {:>11} {:>9} {:>7} {:>10}"


def report_model(name: str, m: dict, why_no_openclip: str | None, peak: float, spec: float | None) -> None:
    print(f"\n{name}: {m['parameters']:,} parameters, {m['train_gflop_per_sample']} GFLOP per sample (train), "
          f"tokenizer {m['tokenizer']}")
    for tower, a in m.get("attention_kernels", {}).items():
        cells = [f"{k} " + (f"{r['ms_per_step']:.2f}" if "error" not in r else "n/a")
                 for k, r in a["kernels"].items()]
        print(f"  attention alone, {tower} ({a['tokens']} tokens{', causal' if a['causal'] else ''}), ms per step "
              f"(fwd + bwd × {a['layers']} layers): " + ", ".join(cells))
    print(ROW.format("model step only (random tensors)", "samples/s", "MFU", "", "1st step s"))
    for v, p in m["probe"].items():
        if "error" in p:
            print(f"  {v:<34} failed: {_last_line(p['error'])}")
        else:
            print(ROW.format(v, f"{p['samples_per_s']:.1f}", _mfu(p["mfu"], peak, spec), "",
                             f"{p['first_step_s']:.1f}"))
    theirs = m.get("open_clip_step")
    if theirs and "error" in theirs:
        print(f"  {'open_clip, its own step':<34} failed: {_last_line(theirs['error'])}")
    elif theirs:
        how = "compiled" if theirs["compile"] else "eager"
        print(ROW.format(f"open_clip, its own step ({how})", f"{theirs['samples_per_s']:.1f}",
                         _mfu(theirs["mfu"], peak, spec), "", f"{theirs['first_step_s']:.1f}"))
        ours = {v: p["samples_per_s"] for v, p in m["probe"].items() if "samples_per_s" in p}
        if ours:
            print("  ours / open_clip's step: " + ", ".join(f"{v} {sps / theirs['samples_per_s']:.2f}×"
                                                        for v, sps in ours.items()))
    for v, a in m["loss_agreement"].items():
        print(f"  loss {v} vs eager, same batches: max rel. diff {a['max_rel_diff']:.2e} over the first {a['steps']} "
              f"steps ({'within' if a['equal'] else 'OUTSIDE'} {a['tolerance']:g})")
    streams = next((p["stream_dtypes"] for p in m["probe"].values() if "stream_dtypes" in p), None)
    if streams:
        print("  residual stream under the step's autocast: " + ", ".join(f"{k} {d}" for k, d in streams.items()))
    syncs = {v: p["host_syncs_per_step"] for v, p in m["probe"].items() if p.get("host_syncs_per_step") is not None}
    if syncs:
        print("  host syncs per step: " + ", ".join(f"{v} {n:g}" for v, n in syncs.items()))
    print(ROW.format("end to end (same shards)", "samples/s", "MFU", "wait", "wall s"))
    for who, r in (("ours", m["ours"]), ("open_clip_train", m["open_clip"])):
        if r is None:
            why = (why_no_openclip or "not in --openclip-models") if who == "open_clip_train" else "not run"
            print(f"  {who:<34} skipped: {why}")
        elif "error" in r:
            print(f"  {who:<34} failed: {_last_line(r['error'])}")
        else:
            print(ROW.format(who, f"{r['samples_per_s']:.1f}", _mfu(r["mfu"], peak, spec), f"{r['data_wait']:.1%}",
                             f"{r['wall_s']:.0f}"))
            if "mfu_logged" in r:  # the trainer's denominator is the peak it measured itself, in its own process
                print(f"    its own log: MFU {r['mfu_logged']:.1%} over its last {r['log_every']} steps")


def _without_torch_log(text: str) -> str:
    """``text`` less torch's own glog-style lines (``I1204 10:28:35.8 …``), which bury the error they follow."""
    return "\n".join(line for line in text.splitlines() if not re.match(r"[IW]\d{4} \d\d:\d\d:\d\d", line))


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no message)"


def _mfu(mfu: float, peak: float, spec: float | None) -> str:
    """MFU against the measured peak, and against a given data-sheet peak in brackets."""
    return f"{mfu:.1%}" + (f" ({mfu * peak / spec:.1%})" if spec else "")


if __name__ == "__main__":
    sys.exit(main())
