"""open_clip as a benchmark peer for our CLIP trainer (imported by bench_train.py; also a small CLI).

Why: "samples/s against open_clip" only means something for the same architecture, on the same shards, in the
same torch build. open_clip (package open-clip-torch) requires torchvision, which pulls a CUDA torch, so it
lives in a side virtualenv (default ``/work/.benchenv-openclip``, or ``$BENCH_OPENCLIP_ENV``) where our trainer
is installed too (``pip install -e . --no-deps``), and both run there.

What is here:

- ``write_shards``: img2dataset-layout WebDataset tars (``{shard:05d}.tar`` holding ``KEY.jpg``, ``KEY.txt``,
  ``KEY.json``) of generated JPEGs and captions, so both trainers read identical bytes.
- ``train`` (CLI, ``python benchmarks/_openclip.py train --model-config X.json --model-name N -- ARGS``): registers
  one of our model JSONs (open_clip's own format) with ``open_clip.add_model_config`` and then runs
  ``open_clip_train.main.main(ARGS)`` in that process, so ``--model N`` resolves without touching the installed
  package. It also runs under ``torchrun``.
- ``run_openclip_train`` / ``parse_train_log``: a fixed-step CPU run and its samples/s and data-time share.
- ``openclip_loss``, ``openclip_forward_flops`` and ``clip_tokenizer_ids_match``: reference points for our loss,
  FLOP count and CLIP-BPE tokenizer.
- ``model_step`` (CLI ``step``): open_clip's training step alone, on random batches already on the device, the
  peer of our trainer's model-step probe.

What a like-for-like run needs (measured on 2 cores): ``OMP_NUM_THREADS=1`` for both trainers (torch's default
of one intra-op thread per core plus 2 loader workers ran open_clip 3-4× slower); open_clip's step time includes
the loader wait (``Data (t)``) but not the loader workers' CPU, which competes with compute. ``train`` patches two
incompatibilities in this process only: webdataset 0.2.111's end-of-shard marker (open_clip wants ≤ 0.2.86) and
``DDP(device_ids=[cpu])``, which torch refuses (so open_clip's CPU DDP needs the shim).

torch, open_clip and tokenizers are imported inside functions: the module imports with the standard library
alone, so a script in the project's own environment can still build command lines and parse logs.

    $ENV/bin/python benchmarks/_openclip.py shards                     # 10 × 256 samples under benchmarks/_data
    $ENV/bin/python benchmarks/_openclip.py bench --steps 30 --batch-size 64 --workers 2 [--nproc 2]
    $ENV/bin/python benchmarks/_openclip.py check                      # loss, FLOPs, tokenizer
    $ENV/bin/python benchmarks/_openclip.py step --model-config M.json --batch-size 64 --steps 10  # per model
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "benchmarks" / "_data"
DEFAULT_ENV = Path(os.environ.get("BENCH_OPENCLIP_ENV", "/work/.benchenv-openclip"))
DEFAULT_SHARDS = DATA_DIR / "train-shards"
TINY_CONFIG = DATA_DIR / "openclip-models" / "tiny-clipvocab.json"
TINY = {  # a tiny test model (ViT 64 px / patch 8, 4 layers each side) with CLIP's vocabulary, which open_clip needs
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 4, "head_width": 64, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}
CLIP_VOCAB_SIZE = 49408  # 256 bytes × 2 (with and without "</w>") + 48,894 merges + 2 specials
MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
LOG_LINE = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) \(\d+%\)\] "
    r"Data \(t\): (?P<data>[\d.]+) Batch \(t\): (?P<batch>[\d.]+), (?P<sps>[\d.eE+-]+)/s, [\d.eE+-]+/s/gpu "
    r"LR: (?P<lr>[\d.eE+-]+) Logit Scale: (?P<scale>[\d.]+) (?P<losses>.*)$"
)

# ---------------------------------------------------------------------------------------------------- shards

ADJECTIVES = ["red", "small", "old", "wooden", "bright", "quiet", "green", "broken", "tall", "striped", "shiny",
              "blue", "empty", "busy", "golden", "foggy", "modern", "tiny", "heavy", "white"]
NOUNS = ["cat", "bicycle", "house", "boat", "mountain", "teapot", "bridge", "dog", "tree", "car", "lamp", "chair",
         "street", "window", "garden", "horse", "train", "market", "river", "clock"]
PLACES = ["in the morning", "near the lake", "on a table", "at night", "under the rain", "in Paris",
          "by the sea", "in a field", "on the street", "in winter", "at the station", "in 1998"]


def _caption(rng: Any) -> str:
    words = [rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES)]
    if rng.random() < 0.5:
        words.insert(0, rng.choice(["A photo of a", "Picture: a", "The", "An image of the", "a"]))
    return " ".join(str(w) for w in words)


def _jpeg(rng: Any, size: int, quality: int = 90) -> bytes:
    """A photo-like JPEG (smooth colour field plus grain) so decoding costs what real photos cost."""
    import numpy as np
    from PIL import Image

    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
    img = img + rng.normal(0.0, 10.0, size=img.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_shards(out_dir: Path = DEFAULT_SHARDS, shards: int = 10, per_shard: int = 256, image_size: int = 224,
                 seed: int = 0, workers: int = 1) -> list[Path]:
    """Write img2dataset-layout tars once (kept while shards/per_shard/size/seed match), return their paths.

    Keys are img2dataset's: shard number (5 digits) then index in shard (4 digits); ``.json`` carries its fields.
    Each shard draws from its own seeded generator, so ``workers`` processes write the same bytes as one.
    """
    out_dir = Path(out_dir)
    spec = {"shards": shards, "per_shard": per_shard, "image_size": image_size, "seed": seed, "version": 1}
    paths = [out_dir / f"{s:05d}.tar" for s in range(shards)]
    meta = out_dir / "_generated.json"
    if meta.exists() and json.loads(meta.read_text()) == spec and all(p.exists() for p in paths):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(path, s, per_shard, image_size, seed) for s, path in enumerate(paths)]
    if workers > 1 and shards > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, shards)) as pool:
            list(pool.map(_write_shard, *zip(*jobs, strict=True)))
    else:
        for job in jobs:
            _write_shard(*job)
    (out_dir / "sizes.json").write_text(json.dumps({p.name: per_shard for p in paths}))  # open_clip reads it
    meta.write_text(json.dumps(spec))
    return paths


def _write_shard(path: Path, s: int, per_shard: int, image_size: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng([seed, s])
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            jpg, caption = _jpeg(rng, image_size), _caption(rng)
            record = {"url": f"https://example.com/img/{key}.jpg", "key": key, "status": "success",
                      "error_message": None, "caption": caption, "width": image_size, "height": image_size,
                      "original_width": image_size, "original_height": image_size, "exif": "{}",
                      "sha256": hashlib.sha256(jpg).hexdigest()}
            _add(tar, f"{key}.jpg", jpg)
            _add(tar, f"{key}.txt", caption.encode())
            _add(tar, f"{key}.json", json.dumps(record).encode())
    tmp.replace(path)


def shard_pattern(paths: Sequence[Path]) -> str:
    """``dir/{00000..00009}.tar`` for consecutive img2dataset shard names (what open_clip's --train-data takes)."""
    nums = sorted(int(p.stem) for p in paths)
    if nums != list(range(nums[0], nums[0] + len(nums))):
        return "::".join(str(p) for p in sorted(paths))
    return f"{Path(paths[0]).parent}/{{{nums[0]:05d}..{nums[-1]:05d}}}.tar"


# ------------------------------------------------------------------------------------------- model configs


def load_model_config(path: Path) -> dict:
    """Read one of our model JSONs and check it is in open_clip's format and tokenizable by open_clip."""
    cfg = json.loads(Path(path).read_text())
    missing = [k for k in MODEL_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{path}: not an open_clip model config, missing {missing}")
    if cfg["text_cfg"].get("vocab_size", CLIP_VOCAB_SIZE) < CLIP_VOCAB_SIZE and "hf_tokenizer_name" not in cfg[
            "text_cfg"]:
        raise ValueError(f"{path}: vocab_size {cfg['text_cfg']['vocab_size']} < {CLIP_VOCAB_SIZE}; open_clip feeds "
                         "CLIP BPE ids, which would overflow the token embedding (see openclip_ready_config)")
    return cfg


def with_clip_vocab(cfg: dict) -> dict:
    """The same architecture with CLIP's vocabulary, so open_clip's tokenizer fits (our trainer must match)."""
    out = json.loads(json.dumps(cfg))
    out["text_cfg"]["vocab_size"] = CLIP_VOCAB_SIZE
    return out


def write_model_config(cfg: dict, name: str, folder: Path) -> Path:
    """Store ``cfg`` as ``folder/NAME.json``: open_clip names a registered config after its file stem."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def openclip_ready_config(src: Path, folder: Path = DATA_DIR / "openclip-models") -> tuple[Path, dict]:
    """``src`` as open_clip can train it: a config whose vocabulary is smaller than CLIP's (ours, trained on
    captions) gets CLIP's, written to ``folder/STEM-clipvocab.json``, so our trainer must then use the CLIP BPE
    tokenizer and that file too for a like-for-like run. Returns the path to use and the config."""
    cfg = json.loads(Path(src).read_text())
    if cfg.get("text_cfg", {}).get("vocab_size", CLIP_VOCAB_SIZE) >= CLIP_VOCAB_SIZE:
        return Path(src), load_model_config(Path(src))
    cfg = with_clip_vocab(cfg)
    return write_model_config(cfg, f"{Path(src).stem}-clipvocab", folder), cfg


def register_model_config(path: Path, name: str | None = None) -> str:
    """Make ``open_clip`` (in this process) resolve ``--model NAME`` to our JSON; return NAME.

    open_clip keeps a registry keyed by file stem, filled from ``_MODEL_CONFIG_PATHS``; ``add_model_config``
    appends a file or folder and rescans. A copy under a temporary folder gives it the requested name.
    """
    import open_clip

    path = Path(path)
    name = name or path.stem
    cfg = load_model_config(path)
    if path.stem != name:
        path = write_model_config(cfg, name, Path(tempfile.mkdtemp(prefix="openclip-cfg-")))
    open_clip.add_model_config(path)
    if open_clip.get_model_config(name) != cfg:
        raise RuntimeError(f"open_clip did not register {name} from {path}")
    return name


def _cpu_ddp_shim() -> None:
    """open_clip wraps the model as ``DDP(model, device_ids=[device])`` even on CPU, which torch refuses for CPU
    modules; drop ``device_ids`` there so its gloo path can be measured without editing the package."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel

    class CpuDDP(ddp):
        def __init__(self, module: Any, device_ids: Any = None, *args: Any, **kwargs: Any) -> None:
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuDDP  # main.py looks it up on the module at call time


def _webdataset_eof_shim() -> bool:
    """open_clip 3.3 supports webdataset ≤ 0.2.86 (its ``training`` extra); from later 0.2.x on,
    ``tar_file_expander`` ends each shard with an empty-dict marker that open_clip's own grouping
    (``group_by_keys_nothrow``) indexes with ``["fname"]`` and dies on. Our trainer pins 0.2.111 and both run in
    one environment, so open_clip gets the 0.2.86 behaviour back (no marker; its grouping already splits samples
    on a key change). Workers inherit the patch by fork. Returns whether it was needed."""
    import inspect
    from functools import partial

    import open_clip_train.data as ocd
    from webdataset import tariterators

    if "eof_value" not in inspect.signature(tariterators.tar_file_expander).parameters:
        return False
    ocd.tar_file_expander = partial(tariterators.tar_file_expander, eof_value=None)
    return True


def train_entry(argv: Sequence[str]) -> int:
    """CLI ``train``: register the config, then hand the remaining arguments to open_clip_train."""
    ap = argparse.ArgumentParser(prog="_openclip.py train")
    ap.add_argument("--model-config", type=Path, required=True)
    ap.add_argument("--model-name", default=None)
    ap.add_argument("--cpu-ddp-shim", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    register_model_config(args.model_config, args.model_name)
    _webdataset_eof_shim()
    if args.cpu_ddp_shim:
        _cpu_ddp_shim()
    from open_clip_train.main import main as openclip_main

    return int(openclip_main(list(rest)) or 0)


# ----------------------------------------------------------------------------------------------- train runs


@dataclass
class OpenClipRun:
    """One fixed-step open_clip_train run and what its log says."""

    command: list[str]
    returncode: int
    wall_s: float
    steps: int
    world_size: int
    batch_size: int
    log_path: str
    stats: dict = field(default_factory=dict)
    tail: str = ""


def openclip_train_argv(model_name: str, train_data: str, *, steps: int, batch_size: int, workers: int,
                        world_size: int, logs: Path, name: str, lr: float = 5e-4, warmup: int = 10,
                        precision: str = "fp32", seed: int = 0, extra: Sequence[str] = ()) -> list[str]:
    """open_clip_train arguments for ``steps`` optimizer steps of one epoch on CPU, logging every step.

    open_clip runs ``ceil(ceil(samples / global batch) / workers) × workers`` steps, so ``steps`` should be a
    multiple of ``workers``. No checkpoint (``--save-frequency 0``), no tensorboard/wandb, no zero-shot.
    """
    return [
        "--model", model_name, "--train-data", train_data, "--dataset-type", "webdataset",
        "--train-num-samples", str(steps * batch_size * world_size), "--batch-size", str(batch_size),
        "--workers", str(workers), "--epochs", "1", "--precision", precision, "--device", "cpu",
        "--lr", str(lr), "--warmup", str(warmup), "--save-frequency", "0", "--report-to", "",
        "--log-every-n-steps", "1", "--logs", str(logs), "--name", name, "--seed", str(seed),
        "--zeroshot-frequency", "0", "--val-frequency", "0", *extra,
    ]


def openclip_command(model_config: Path, model_name: str, openclip_args: Sequence[str], *, nproc: int = 1,
                     python: Path | None = None, cpu_ddp_shim: bool = True) -> list[str]:
    """The full command: this file's ``train`` entry under python (1 process) or torchrun (gloo, nproc)."""
    python = Path(python or DEFAULT_ENV / "bin" / "python")
    head = [str(python)] if nproc == 1 else [str(python), "-m", "torch.distributed.run", "--standalone",
                                              f"--nproc_per_node={nproc}"]
    shim = ["--cpu-ddp-shim"] if nproc > 1 and cpu_ddp_shim else []
    return [*head, str(Path(__file__).resolve()), "train", "--model-config", str(model_config), "--model-name",
            model_name, *shim, "--", *openclip_args]


def parse_train_log(text: str, batch_size: int, world_size: int = 1, skip_steps: int = 5) -> dict:
    """samples/s and data-time share from open_clip's "Train Epoch" lines, steps ≤ ``skip_steps`` dropped.

    Each line reports averages over the steps since the previous line (its meters reset after logging) and
    samples/s of the last step only; weighting each line by its window gives exact totals for any
    ``--log-every-n-steps`` (3-decimal seconds; with one step per line the 6-digit samples/s is used instead).
    ``Batch (t)`` is the whole step, data wait included; ``Data (t)`` is the wait for the loader.
    """
    global_batch = batch_size * world_size
    steps, prev = [], 0
    for line in text.splitlines():
        m = LOG_LINE.search(line)
        if not m:
            continue
        step = int(m["seen"]) // global_batch
        window = step - prev
        prev = step
        if window <= 0:
            continue
        batch_t = global_batch / float(m["sps"]) if window == 1 else float(m["batch"])
        steps.append({"step": step, "window": window, "data_s": float(m["data"]) * window,
                      "batch_s": batch_t * window, "losses": m["losses"].strip()})
    kept = [s for s in steps if s["step"] > skip_steps]
    n_kept = sum(s["window"] for s in kept)
    batch_s = sum(s["batch_s"] for s in kept)
    data_s = sum(s["data_s"] for s in kept)
    per_step = sorted(s["batch_s"] / s["window"] for s in kept)
    return {
        "steps_logged": steps[-1]["step"] if steps else 0,
        "steps_measured": n_kept,
        "skipped_steps": skip_steps,
        "samples_per_s": round(n_kept * global_batch / batch_s, 2) if batch_s else None,
        "data_share": round(data_s / batch_s, 4) if batch_s else None,
        "step_s_mean": round(batch_s / n_kept, 4) if n_kept else None,
        "step_s_median": round(per_step[len(per_step) // 2], 4) if per_step else None,
        "warmup_s": round(sum(s["batch_s"] for s in steps if s["step"] <= skip_steps), 3),
        "last_losses": steps[-1]["losses"] if steps else None,
    }


def run_openclip_train(model_config: Path, train_data: str, *, steps: int = 30, batch_size: int = 64,
                       workers: int = 2, nproc: int = 1, skip_steps: int = 5, model_name: str | None = None,
                       logs: Path | None = None, python: Path | None = None, timeout_s: float = 1800,
                       threads: int | None = 1, extra: Sequence[str] = (), env: dict | None = None) -> OpenClipRun:
    """Run open_clip_train for ``steps`` steps in a subprocess; wall time covers start-up to exit.

    ``threads`` sets ``OMP_NUM_THREADS`` for every process (None leaves torch's default, one per core): on a
    small machine intra-op threads fight the loader workers for cores, so our trainer must run with the same.
    """
    model_name = model_name or f"wb-{Path(model_config).stem}"
    logs = Path(logs or tempfile.mkdtemp(prefix="openclip-logs-"))
    name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-n{nproc}"
    steps = math.ceil(steps / max(1, workers)) * max(1, workers)
    argv = openclip_train_argv(model_name, train_data, steps=steps, batch_size=batch_size, workers=workers,
                               world_size=nproc, logs=logs, name=name, extra=extra)
    cmd = openclip_command(model_config, model_name, argv, nproc=nproc, python=python)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        child_env["OMP_NUM_THREADS"] = str(threads)
    child_env.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=child_env, cwd=ROOT)
    wall = time.perf_counter() - t0
    log_path = logs / name / "out.log"
    text = log_path.read_text() if log_path.exists() else proc.stdout + proc.stderr
    tail = (proc.stdout + proc.stderr)[-3000:]
    return OpenClipRun(cmd, proc.returncode, round(wall, 2), steps, nproc, batch_size, str(log_path),
                       parse_train_log(text, batch_size, nproc, skip_steps), tail)


# ------------------------------------------------------------------------------------------ model step only


def random_step_batches(model: Any, batch_size: int, device: Any, n: int = 4, seed: int = 0) -> list[tuple]:
    """``n`` batches as open_clip's loader hands them to its step: float32 images, normalised (its transforms run in
    the loader), and token ids ending in CLIP's end token (the largest id, where open_clip pools), zeros after."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = model.visual.image_size
    hw = tuple(size[-2:]) if isinstance(size, (tuple, list)) else (size, size)
    ctx, eot = model.context_length, model.vocab_size - 1
    out = []
    for _ in range(n):
        images = torch.randn((batch_size, 3, *hw), generator=g)
        out.append((images.to(device), random_tokens(batch_size, ctx, eot, g).to(device)))
    return out


def random_tokens(batch_size: int, context_length: int, eot: int, g: Any) -> Any:
    """Token ids in [1, eot), each row ending in ``eot`` at a random position and padded with zeros after it."""
    import torch

    tokens = torch.randint(1, eot, (batch_size, context_length), generator=g)
    ends = torch.randint(2, context_length, (batch_size,), generator=g)
    positions = torch.arange(context_length).expand(batch_size, context_length)
    tokens[positions == ends[:, None]] = eot
    tokens[positions > ends[:, None]] = 0
    return tokens


def openclip_optimizer(model: Any, lr: float = 5e-4, wd: float = 0.2) -> Any:
    """open_clip_train's AdamW (``main.py``, no ``--opt`` given): gains, biases and the logit scale without weight
    decay, the rest with it; torch's default (foreach) implementation, betas and eps of its ViT defaults."""
    import torch

    def exclude(n: str, p: Any) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def model_step(model_config: Path, *, batch_size: int, steps: int, device: str = "cpu", precision: str = "fp32",
               compile: bool = False, warmup: int = 3) -> dict:
    """open_clip's training step alone, as ``open_clip_train.train.train_one_epoch`` runs it with one process and
    ``accum_freq`` 1: its model and ``ClipLoss`` under its autocast, backward, AdamW, the logit scale clamped, on
    random batches already on the device (no loader). ``steps`` are timed after ``warmup``; ``compile`` wraps the
    model in ``torch.compile`` as ``--torchcompile`` does. The peer of our trainer's model-step probe."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    from open_clip_train.precision import get_autocast

    name = register_model_config(model_config, f"step-{Path(model_config).stem}")
    dev = torch.device(device)
    torch.manual_seed(0)
    model = open_clip.create_model(name, precision="fp32", device=dev, output_dict=True)
    model.train()
    optimizer, loss_fn = openclip_optimizer(model), ClipLoss()
    step_model = torch.compile(model) if compile else model
    autocast = get_autocast(precision, device_type=dev.type)
    batches = random_step_batches(model, batch_size, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    losses: list[Any] = []
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t1 = time.perf_counter()
        images, texts = batches[i % len(batches)]
        optimizer.zero_grad()
        with autocast():
            out = step_model(images, texts)
            loss = loss_fn(**out, output_dict=True)["contrastive_loss"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach().float())
        if i == 0:
            sync()
            first = time.perf_counter() - t0
    sync()
    seconds = time.perf_counter() - t1
    return {"model": name, "batch_size": batch_size, "steps": steps, "precision": precision, "compile": compile,
            "samples_per_s": round(steps * batch_size / seconds, 2), "step_ms": round(1000 * seconds / steps, 3),
            "first_step_s": round(first, 2), "losses": [round(x, 6) for x in torch.stack(losses).tolist()],
            "open_clip": open_clip.__version__, "torch": torch.__version__}


def release_memory(device: Any) -> None:
    """Free the last model's memory (compiled graphs hold their model) before the next one is timed."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def openclip_loss(image_features: Any, text_features: Any, logit_scale: Any) -> float:
    """open_clip's contrastive loss on one process: normalized features, ``logit_scale`` already exp'd.

    ``ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1)`` and
    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)``: the mean of
    the image→text and text→image cross-entropies over ``logit_scale * I @ T.T``, labels ``arange(batch)``.
    """
    import torch
    from open_clip.loss import ClipLoss

    scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale))
    with torch.no_grad():
        return float(ClipLoss()(image_features, text_features, scale))


def openclip_forward_flops(model_config: Path, batch_size: int = 1) -> dict:
    """Forward FLOPs per sample counted the way ``open_clip_train.profiler`` does (``--profiler torch``):
    ``torch.utils.flop_counter.FlopCounterMode`` over a forward on ones, a matmul of m×k by k×n = 2mkn, for the
    whole model and each tower; a training step is roughly 3× that. The profiler's own functions print a table
    that needs ``tabulate``, so the same count is taken here with ``display=False``."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    name = register_model_config(model_config, f"flops-{Path(model_config).stem}")
    model = open_clip.create_model(name, device="cpu").eval()
    size = model.visual.image_size
    image = torch.ones((batch_size, 3, *(size[-2:] if isinstance(size, (tuple, list)) else (size, size))))
    text = torch.ones((batch_size, model.context_length), dtype=torch.long)

    def count(fn: Any, *inputs: Any) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn(*inputs)
        return counter.get_total_flops() / batch_size / 1e9

    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "mparams": round(params / 1e6, 3),
            "gflops": round(count(model, image, text), 4), "image_gflops": round(count(model.encode_image, image), 4),
            "text_gflops": round(count(model.encode_text, text), 4)}


def clip_bpe_path() -> Path:
    """CLIP's BPE merges file as shipped inside the open_clip wheel."""
    import open_clip.tokenizer as oct

    return Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")


SAMPLE_CAPTIONS = [
    "A photo of a cat sitting on a wooden table.",
    "Two dogs playing in the snow, 2019",
    "The Eiffel Tower at night — Paris, France",
    "close-up of a RED rose with water droplets",
    "I'm sure they'll love it; we've tried it & it's great!",
    "Café au lait and croissants on a marble counter",
    "東京の夜景 (Tokyo skyline at night)",
    "Москва, Красная площадь зимой",
    "  multiple    spaces\tand\ttabs\nand newlines  ",
    "Price: $19.99 — 50% off!!!",
    "emoji test 😀🎉 party time",
    "Fish &amp; chips with a pint",
    "naïve coöperation résumé façade",
    "user@example.com posted https://example.com/a_b?c=1",
    "3D-printed model of the Apollo 11 lunar module",
    "A black-and-white photograph of a 1950s diner",
    "Ελληνικά γράμματα και αριθμοί 12345",
    "CamelCaseWords and snake_case_words",
    "Family reunion '98 — Grandma's 80th birthday",
    "",
]


def clip_tokenizer_ids_match(captions: Sequence[str] = tuple(SAMPLE_CAPTIONS), context_length: int = 77) -> dict:
    """Compare the trainer's CLIP tokenizer (``trainer.tokenizer.load_clip_bpe``, Hugging Face ``tokenizers``)
    with open_clip's ``SimpleTokenizer`` on ``captions``: the raw BPE ids and the padded
    ``(n, context_length)`` tensor each feeds its model."""
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from trainer.tokenizer import clip_clean, load_clip_bpe

    ref = SimpleTokenizer(context_length=context_length)
    tok = load_clip_bpe(clip_bpe_path(), context_length)
    mismatches = []
    for cap in captions:
        ours = tok.tok.encode(clip_clean(cap), add_special_tokens=False).ids
        theirs = ref.encode(cap)
        if ours != theirs:
            mismatches.append({"caption": cap, "ours": ours, "open_clip": theirs})
    return {"captions": len(captions), "ids_equal": not mismatches,
            "padded_equal": bool(torch.equal(tok(list(captions)), ref(list(captions), context_length))),
            "eot_id": tok.eot_id, "vocab_size": tok.vocab_size, "bpe_path": str(clip_bpe_path()),
            "mismatches": mismatches}


# ---------------------------------------------------------------------------------------------------- CLI


def _bench(args: argparse.Namespace) -> dict:
    paths = write_shards(args.shards, args.num_shards, args.per_shard)
    if args.model_config is None:
        write_model_config(TINY, TINY_CONFIG.stem, TINY_CONFIG.parent)
    cfg_path = args.model_config or TINY_CONFIG
    run = run_openclip_train(cfg_path, shard_pattern(paths), steps=args.steps, batch_size=args.batch_size,
                             workers=args.workers, nproc=args.nproc, skip_steps=args.skip_steps,
                             threads=args.threads or None)
    out = asdict(run)
    if run.returncode != 0:
        print(run.tail, file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train_entry(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sh = sub.add_parser("shards", help="write the img2dataset-layout test shards")
    sub.add_parser("train", help="register --model-config, then run open_clip_train with the arguments after --")
    b = sub.add_parser("bench", help="one fixed-step open_clip_train run on the test shards; prints JSON")
    for p in (sh, b):
        p.add_argument("--shards", type=Path, default=DEFAULT_SHARDS)
        p.add_argument("--num-shards", type=int, default=10)
        p.add_argument("--per-shard", type=int, default=256)
    b.add_argument("--model-config", type=Path, default=None, help="default: the tiny test config")
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--nproc", type=int, default=1)
    b.add_argument("--skip-steps", type=int, default=5)
    b.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process; 0: torch's default")
    st = sub.add_parser("step", help="open_clip's training step alone on random batches, per model config; "
                                     "prints JSON")
    st.add_argument("--model-config", type=Path, action="append", required=True, help="repeat for several models")
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--steps", type=int, default=10, help="timed steps, after 3 warm-up steps")
    st.add_argument("--device", default="cpu")
    st.add_argument("--precision", default="fp32", help="open_clip_train's --precision (amp_bf16 on a GPU)")
    st.add_argument("--torchcompile", action="store_true")
    st.add_argument("--json", type=Path, help="also write the figures here")
    c = sub.add_parser("check", help="loss, FLOPs and tokenizer reference checks; prints JSON")
    c.add_argument("--model-config", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "shards":
        t0 = time.perf_counter()
        paths = write_shards(args.shards, args.num_shards, args.per_shard)
        size = sum(p.stat().st_size for p in paths)
        print(json.dumps({"pattern": shard_pattern(paths), "bytes": size, "s": round(time.perf_counter() - t0, 1)}))
    elif args.cmd == "bench":
        print(json.dumps(_bench(args), indent=1))
    elif args.cmd == "step":
        runs = {}
        for path in args.model_config:  # one process for every model: open_clip and torch import once
            try:
                runs[str(path)] = model_step(path, batch_size=args.batch_size, steps=args.steps, device=args.device,
                                             precision=args.precision, compile=args.torchcompile)
            except Exception as exc:  # out of memory at a large batch, a bad config: the next model still runs
                runs[str(path)] = {"error": f"{type(exc).__name__}: {str(exc)[-3000:]}"}
            release_memory(args.device)
        print(json.dumps(runs, indent=1))
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1))
    else:
        import torch

        write_model_config(TINY, TINY_CONFIG.stem, TINY_CONFIG.parent)
        g = torch.Generator().manual_seed(0)
        img = torch.nn.functional.normalize(torch.randn(64, 128, generator=g), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(64, 128, generator=g), dim=-1)
        report = {"loss_random_64x128_scale_1_over_0.07": openclip_loss(img, txt, 1 / 0.07),
                  "flops": openclip_forward_flops(args.model_config or TINY_CONFIG),
                  "tokenizer": clip_tokenizer_ids_match()}
        print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
