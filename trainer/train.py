"""Contrastive CLIP pretraining on a witbuild dataset with torch DDP.

    torchrun --nproc_per_node=N trainer/train.py --data BUILD_OUTPUT [--config tiny-cpu] [--set key=value] \\
        [--output runs/NAME] [--resume latest]

One process per device: gloo on CPU, NCCL on CUDA (bf16 autocast, fused AdamW, the step's forward and loss
compiled as one function), chosen from what the machine has. Runs without torchrun too (one process). The run
folder holds ``config.yaml``, ``tokenizer.json``, ``checkpoints/`` (atomic, ``latest.txt`` points at the newest),
``log.csv``, ``tb/`` (tensorboard) and ``eval.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import datetime
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

if __package__ in (None, ""):  # run as a script (torchrun trainer/train.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer.config import TrainConfig, config_differences, dump_yaml, load_train_config, saved_config
from trainer.data import (
    MEAN,
    STD,
    DataError,
    Split,
    StreamSpec,
    check_captions,
    epoch_steps,
    find_shards,
    read_captions,
    shards_digest,
    split_data,
    to_device_ahead,
    train_batches,
    training_sizes,
)
from trainer.evaluate import (
    MODEL_KEYS,
    check_labelled,
    evaluate,
    format_results,
    may_score_trained,
    read_checkpoint,
    read_class_counts,
    resolve_checkpoint,
)
from trainer.loss import make_loss
from trainer.model import CLIP, ModelConfig, load_model_config, train_flops_per_sample
from trainer.tokenizer import TextTokenizer, load_clip_bpe, read_clip_merges, train_bpe
from witbuild.output_folder import LockHeld, folder_problem, take_lock
from witbuild.provenance import code_revision

log = logging.getLogger("trainer")
MAX_LOGIT_SCALE = math.log(100)
CSV_FIELDS = ["step", "epoch", "loss", "logit_scale", "lr", "samples_per_s", "data_wait", "tflops", "mfu",
              "skipped", "elapsed_s"]


# ---------------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); NCCL when CUDA is there, gloo otherwise; matmul precision set for the device."""
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        configure_matmul(device)
        return 0, 1, device
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    configure_matmul(device)
    if cuda:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=30), device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size(), device


def use_tf32(device: torch.device) -> bool:
    """TF32 for fp32 matmuls and convolutions on every CUDA device, one process or many: what autocast leaves in
    fp32 runs several times faster at a precision contrastive training does not notice. Nothing to set elsewhere."""
    return device.type == "cuda"


def configure_matmul(device: torch.device) -> None:
    """The one place the run's matmul precision is set, for whichever way the run was started."""
    if use_tf32(device):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


SDPA_SWITCHES = {"cudnn": "enable_cudnn_sdp", "flash": "enable_flash_sdp", "efficient": "enable_mem_efficient_sdp",
                 "math": "enable_math_sdp"}


def configure_attention(kernel: str, device: torch.device, fallback: bool = True) -> None:
    """The one place the attention kernel is chosen: torch's switches, read when a step is traced or run. A fused
    kernel leaves the plain one on as the fallback for inputs it does not take (``fallback=False``: such inputs are
    an error, as a benchmark of that kernel wants); auto turns every kernel on."""
    if device.type != "cuda":
        return
    for name, switch in SDPA_SWITCHES.items():
        getattr(torch.backends.cuda, switch)(kernel in ("auto", name) or (name == "math" and fallback))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def after_rank0(work: Callable[[], None], rank: int) -> None:
    """Runs ``work`` on rank 0 while the others wait, as a barrier does; a ``DataError``/``ValueError``/``OSError``
    it raises is raised on every rank (its message sent to them), where a barrier would leave them waiting on a
    rank that has left."""
    failure: list[str | None] = [None]
    if rank == 0:
        try:
            work()
        except (DataError, ValueError, OSError) as exc:
            if not dist.is_initialized():
                raise
            failure[0] = str(exc)
    if dist.is_initialized():
        dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise DataError(failure[0])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, the class token and the temperature (ndim < 2), as CLIP does."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "logit_bias" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig):
    warmup, total, floor = cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul on this device in the training dtype: the MFU denominator."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps = 20 if device.type == "cuda" else 4
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def build_tokenizer(cfg: TrainConfig, split: Split, context_length: int) -> TextTokenizer:
    """CLIP's BPE, or a byte-level BPE fitted on the training captions (never on held-out ones)."""
    train_shards = split.train
    if cfg.tokenizer.kind == "clip":
        return load_clip_bpe(cfg.tokenizer.clip_vocab_path, context_length)
    texts = read_captions(train_shards, cfg.data.caption_key, holdout_fraction=split.fraction)
    if not texts:
        raise DataError(f"no captions to fit the tokenizer in {train_shards[0].parent}")
    log.info("fitting a byte-level BPE of %d tokens on %d captions", cfg.tokenizer.vocab_size, len(texts))
    return train_bpe(texts, cfg.tokenizer.vocab_size, context_length, cfg.tokenizer.min_frequency)


# ---------------------------------------------------------------------------------------------------------------------
# one run per folder, and stopping
# ---------------------------------------------------------------------------------------------------------------------

RUN_LOCK = "_train.lock"
_HELD_LOCKS: dict[str, IO[str]] = {}  # real path of a locked run folder -> its open lock file


def lock_run(run_dir: Path) -> None:
    """Hold ``RUN/_train.lock`` (an exclusive POSIX lock, ``lockf``) until the process ends or ``release_run_locks``:
    two runs into one folder would interleave their log rows and overwrite each other's checkpoints. The kernel
    drops the lock when its holder ends, however it ends (kill -9 too), so no stale lock is left. A ``ValueError``
    naming the holder's pid when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _HELD_LOCKS:
        return
    path = run_dir / RUN_LOCK
    try:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the run's life)
    except OSError as exc:
        raise ValueError(f"cannot open the run folder's lock file {path}: {exc.strerror}") from None
    _lockf(fh, run_dir)
    _HELD_LOCKS[key] = fh


def _lockf(fh: IO[str], run_dir: Path) -> bool:
    """Take the lock (True); False where the filesystem has no locks; a ``ValueError`` where another run holds it."""
    try:
        locked = take_lock(fh)
    except LockHeld as held:
        fh.close()
        pid = f" (pid {held.holder})" if held.holder else ""
        raise ValueError(f"run folder {run_dir} is in use by another run{pid}: two runs into one folder overwrite "
                         f"each other's checkpoints and log; wait for it to end, or choose another --output") from None
    except OSError as exc:
        fh.close()
        raise ValueError(f"cannot lock {fh.name}: {exc.strerror}") from None
    if not locked:
        log.warning("run folder %s: its filesystem has no file locks; not locked against a second run", run_dir)
    return locked


def release_run_locks(discard: Path | None = None) -> None:
    """Let go of the run folders this process holds; ``discard``: a folder this run made and wrote nothing else into
    (it stopped on a bad input), removed with its lock file, as if the run had never started."""
    for fh in _HELD_LOCKS.values():
        fh.close()
    _HELD_LOCKS.clear()
    if discard is not None:
        (discard / RUN_LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            discard.rmdir()


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies. torchrun starts each rank in a session of its own, so a launcher
    killed with -9 would leave its ranks training on, unseen, into the run folder. Linux only; elsewhere, or where
    ``prctl`` cannot be called, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call: the kernel will send nothing
        os.kill(os.getpid(), signal.SIGTERM)


class Interrupted(BaseException):
    """The run was told to stop by SIGTERM; a BaseException, as KeyboardInterrupt is, so that no ``except
    Exception`` takes it for a failure of its own."""


@dataclass
class Stop:
    """The first stop signal this process received (its name) and the pid that handles it. Kept besides the
    exception: a rank whose peer stopped first may meet the peer's departure (a failed collective) before its own
    signal's exception."""

    pid: int = 0
    signal: str | None = None
    deferred: bool = False

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """A stop signal that arrives inside takes effect at the end: a batch from a DataLoader worker comes with its
        tensors' file descriptors, fetched over a socket, and a rank that left half-way through made the worker
        print a traceback."""
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False
        if self.signal is not None:
            raise KeyboardInterrupt if self.signal == "SIGINT" else Interrupted(self.signal)


STOP = Stop()


def on_stop_signal(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM become KeyboardInterrupt and ``Interrupted``, once: a second one while the run stops is
    ignored, not a second exception in its clean-up. torchrun signals the rank's whole process group, so its DataLoader
    workers die too: torch's own SIGCHLD handler would report that as a failure, with a traceback, so it is let go
    first. In a forked worker the signal is a KeyboardInterrupt, on which the worker leaves quietly."""
    if os.getpid() != STOP.pid:
        raise KeyboardInterrupt
    if STOP.signal is not None:
        return
    STOP.signal = signal.Signals(signum).name
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if not STOP.deferred:
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(STOP.signal)


@dataclass
class Progress:
    """How far the run got, for the message of a stopped run: the steps done and the last checkpoint."""

    step: int = 0
    checkpoint: Path | None = None


def report_interrupt(rank: int, why: str, progress: Progress) -> int:
    """One line on rank 0 (the others say nothing more) and 128 + the signal's number, as a shell reports it."""
    if rank == 0:
        last = (f"the last checkpoint is {progress.checkpoint}" if progress.checkpoint
                else "no checkpoint was written yet")
        print(f"error: training interrupted by {why} at step {progress.step}: {last}; continue with --resume latest",
              file=sys.stderr, flush=True)
    return 128 + int(signal.Signals[why])


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def save_checkpoint(run: Path, state: dict, keep: int) -> Path:
    """Write to a temporary name, rename, then move ``latest.txt``: a kill never leaves a half checkpoint as latest."""
    folder = run / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    try:
        torch.save(state, tmp)
    except BaseException:  # a stop in the middle of the write leaves no partial file behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    pointer = folder / "latest.txt.tmp"
    pointer.write_text(path.name)
    os.replace(pointer, folder / "latest.txt")
    older = sorted((p for p in checkpoint_files(run) if _step_of(p) < state["step"]), key=_step_of)
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


def _step_of(path: Path) -> int:
    return int(path.stem.split("_")[1])


def checkpoint_files(run: Path) -> list[Path]:
    """The run's checkpoints (``step_00000300.pt``), the newest first."""
    found = [p for p in (run / "checkpoints").glob("step_*.pt") if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(found, key=_step_of, reverse=True)


def drop_checkpoints_after(run: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: their old checkpoints would be another history."""
    for p in checkpoint_files(run):
        if _step_of(p) > step:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------------------------------------------------


class RunLog:
    """CSV and tensorboard on rank 0; a resumed run drops rows past its checkpoint so the curve stays one curve."""

    def __init__(self, run: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path = run / "log.csv"
        rows = []
        if start_step and self.path.is_file():
            with self.path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start_step]
        with self.path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:
            log.warning("tensorboard is not installed; logging to log.csv only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, CSV_FIELDS).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, int | float):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------------



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Contrastive CLIP pretraining on WebDataset shards (torch DDP).")
    ap.add_argument("--data", required=True, help="Build output (its stages/finalize shards) or a folder of *.tar.")
    ap.add_argument("--config", help="Name in trainer/configs/ or a YAML path (default: built-in defaults). A resumed "
                                     "run keeps the config saved with it: --config may then be given only when it "
                                     "agrees with that config (so the same command line starts and continues a run), "
                                     "else it is an error naming the fields that differ; change a resumed run's "
                                     "values with --set.")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override a config value.")
    ap.add_argument("--output", help="Run folder (default: the config's output, else runs/<config name>).")
    ap.add_argument("--resume", help="'latest' (continue this run folder's newest checkpoint: the one latest.txt "
                                     "names, else the highest step that loads; or start the run when it has none) or "
                                     "a checkpoint path; the run goes on with its saved config, --set on top (not on "
                                     "model, tokenizer.* or a holdout beyond the run's own).")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    STOP.pid, STOP.signal, STOP.deferred = os.getpid(), None, False
    previous = {s: signal.signal(s, on_stop_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress, rank = Progress(), int(os.environ.get("RANK", 0))
    try:
        if "RANK" in os.environ:  # started by torchrun
            die_with_parent()
        rank, world, device = init_distributed()
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
        return run(args, rank, world, device, progress)
    except BaseException as exc:
        if STOP.signal or isinstance(exc, KeyboardInterrupt | Interrupted):
            return report_interrupt(rank, STOP.signal or ("SIGTERM" if isinstance(exc, Interrupted) else "SIGINT"),
                                    progress)
        if not isinstance(exc, DataError | FileNotFoundError | ValueError):
            raise
        if rank == 0:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        release_run_locks()
        if dist.is_initialized() and STOP.signal is None:  # a stopped rank's peers may be gone: it just leaves
            dist.destroy_process_group()
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Step:
    """What one optimiser step runs, built once by ``make_step`` (the GPU benchmark builds its probes with it too)."""

    model: CLIP
    forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 images, tokens) on the device → loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    grad_clip: float | None
    device: torch.device
    cudagraphs: bool = False  # the compiled step replays CUDA graphs: each step must be marked


@dataclass
class Trainer:
    """Everything the training loop and the final evaluation use, built once by ``setup``."""

    cfg: TrainConfig
    mcfg: ModelConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    split: Split
    tokenizer: TextTokenizer
    model: CLIP
    stepper: Step
    bf16: bool
    start_step: int
    batches: Iterator = field(default_factory=lambda: iter(()))
    steps_per_epoch: int = 1
    data_id: dict = field(default_factory=dict)  # the training data, as data_identity says: kept in checkpoints
    flops_per_sample: float = 0.0
    peak: float = 1.0
    progress: Progress = field(default_factory=Progress)  # steps done and the last checkpoint, as training goes

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.world

    def state(self, step: int) -> dict:
        """What a checkpoint holds: enough to continue the run exactly, loadable with ``weights_only=True``."""
        return {"step": step, "epoch": step // self.steps_per_epoch, "model": self.model.state_dict(),
                "optimizer": self.stepper.optimizer.state_dict(), "scheduler": self.stepper.scheduler.state_dict(),
                "config": self.cfg.model_dump(mode="json"), "model_config": self.mcfg.to_dict(),
                "tokenizer": self.tokenizer.to_json(), "world_size": self.world,
                "data": self.data_id}


def run(args: argparse.Namespace, rank: int, world: int, device: torch.device, progress: Progress) -> int:
    """Set up, train to ``cfg.steps`` (checkpointing and logging on the way), then evaluate on rank 0."""
    t = setup(args, rank, world, device, progress)
    step, skipped_total = train_loop(t)
    if skipped_total:
        log.warning("skipped on rank %d: %s", rank, skipped_total)
    # the other ranks leave now: waiting in a collective while rank 0 evaluates could outlast its timeout
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        final_evaluation(t, step, skipped_total)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------------


def setup(args: argparse.Namespace, rank: int, world: int, device: torch.device, progress: Progress) -> Trainer:
    """The run's config, data split, tokenizer, model, optimiser (restored when resuming) and batch stream. The run
    folder is locked on rank 0 before anything in it is read or written; a folder this run made is removed again
    when the inputs turn out unusable."""
    cfg, run_dir = run_config(args)
    new_folder = not run_dir.exists()
    after_rank0(lambda: lock_run(run_dir), rank)
    try:
        cfg, ckpt, progress.checkpoint = resolve_run(args, cfg, run_dir)
        check_inputs(cfg, resumed=ckpt is not None)
        split = split_data(find_shards(args.data), cfg.data.holdout_shards, cfg.data.holdout_fraction)
        check_captions(split.train, cfg.data.caption_key)
    except BaseException:
        if rank == 0 and new_folder:
            release_run_locks(discard=run_dir)
        raise
    if rank == 0:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    tokenizer, mcfg = tokenizer_and_model_config(cfg, ckpt, split, run_dir, rank)
    if cfg.loss == "clip" and mcfg.init_logit_bias is not None:
        raise ValueError("the model has a logit bias (a SigLIP model) but loss is 'clip', which does not use it; "
                         "set loss=siglip")
    torch.manual_seed(cfg.seed)
    model = CLIP(mcfg).to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    configure_attention(cfg.attention, device)
    stepper, start_step = make_step(cfg, model, device, bf16, world, ckpt)
    progress.step = start_step
    if ckpt is not None and rank == 0:
        drop_checkpoints_after(run_dir, start_step)
    t = Trainer(cfg, mcfg, run_dir, rank, world, device, split, tokenizer, model, stepper, bf16, start_step,
                progress=progress)
    samples = start_stream(t)
    t.data_id = data_identity(split.train, t.steps_per_epoch, cfg.data.workers)
    if ckpt is not None and rank == 0:
        warn_if_data_changed(ckpt.get("data"), t.data_id)
    t.flops_per_sample = train_flops_per_sample(mcfg)
    t.peak = cfg.peak_flops or measure_peak_flops(device, torch.bfloat16 if bf16 else torch.float32)
    held = (f"{len(split.heldout)} held out" if not split.fraction
            else f"{split.fraction:.1%} of the samples held out by key")
    log.info("model %s: %.2fM parameters, %.3f GFLOP per sample (train); %d train shards (%d samples), "
             "%s; %d rank(s) × batch %d; %d steps per epoch; %s%s, %s AdamW, %s, attention %s; peak %.1f TFLOP/s "
             "per device",
             cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, t.flops_per_sample / 1e9, len(split.train),
             samples, held, world, cfg.data.batch_size, t.steps_per_epoch, device.type, " bf16" if bf16 else " fp32",
             "fused" if cfg.optim.use_fused(device.type) else "default",
             f"compiled {cfg.compile_scope} ({cfg.compile_mode})" if cfg.use_compile(device.type) else "eager",
             cfg.attention if device.type == "cuda" else "auto", t.peak / 1e12)
    return t


def data_identity(shards: list[Path], steps_per_epoch: int, workers: int) -> dict:
    """What a resumed run needs unchanged to see the batches an uninterrupted one would: the training shards (by
    name and size), the epoch length they gave and the loader workers per rank (an epoch is cut into one share per
    worker). ``evaluate.py`` reads it to tell other data from the run's."""
    return {"shards": len(shards), "shards_digest": shards_digest(shards), "steps_per_epoch": steps_per_epoch,
            "workers": workers}


def warn_if_data_changed(saved: dict | None, now: dict) -> None:
    """Say so when the data a run resumes on is not the data it was trained on, or is cut into other shares: it goes
    on (more data is a fair reason to resume), but its batches are no longer those of an uninterrupted run."""
    if saved is None:  # a checkpoint from before the data was recorded
        return
    changed = [f"{k} {saved.get(k)} → {now[k]}" for k in ("shards", "steps_per_epoch") if saved.get(k) != now[k]]
    if not changed and saved.get("shards_digest") != now["shards_digest"]:
        changed = ["the training shards' names or sizes"]
    if "workers" not in saved:  # recorded since an epoch is cut into one share per worker
        log.warning("the checkpoint was trained on the earlier data stream (each worker drew shards with "
                    "replacement, from their start); the run goes on reading every sample once an epoch, so its "
                    "batches are not those the earlier run would have seen")
    elif saved["workers"] != now["workers"]:
        changed.append(f"data.workers {saved['workers']} → {now['workers']}")
    if changed:
        log.warning("resuming on other data than the checkpoint was trained on (%s): the run goes on, but does not "
                    "see the batches an uninterrupted run would", "; ".join(changed))


def run_config(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The config the command line gives (``--config``, ``--set``) and the run folder, checked to be writable."""
    cfg = load_train_config(args.config, args.set)
    run_dir = Path(args.output or cfg.output or f"runs/{Path(args.config).stem if args.config else 'default'}")
    check_run_folder(run_dir)
    return cfg, run_dir


def resolve_run(args: argparse.Namespace, cfg: TrainConfig,
                run_dir: Path) -> tuple[TrainConfig, dict | None, Path | None]:
    """(config, checkpoint to resume or None, its file). A resumed run's config is the one saved with it, ``--set``
    on top."""
    ckpt, path = None, None
    if args.resume:
        path, ckpt = resume_point(args.resume, run_dir)
        if ckpt is None:
            log.info("no checkpoint in %s yet: starting the run", run_dir)
        else:
            saved = load_train_config(None, args.set, base=ckpt["config"])  # the run's own config, --set on top
            if args.config:
                check_config_agrees(args.config, cfg, saved, path)
            check_resume_keeps(saved_config(ckpt["config"]), saved, path, int(ckpt["step"]))
            cfg = saved
            log.info("resuming %s at step %d", path, ckpt["step"])
    elif checkpoint_files(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints of a run: continue it with --resume latest, "
                         f"or choose another --output")
    cfg.output = str(run_dir)
    return cfg, ckpt, path


RESUME_KEYS = (*MODEL_KEYS, "step", "config", "optimizer", "scheduler")


def resume_point(resume: str, run_dir: Path) -> tuple[Path | None, dict | None]:
    """The checkpoint ``--resume`` names and its contents: a path, or for ``latest`` the one ``latest.txt`` points
    at; (None, None) for a run folder without checkpoints, which starts the run."""
    if resume != "latest" or (run_dir / "checkpoints" / "latest.txt").exists():
        path = resolve_checkpoint(run_dir if resume == "latest" else resume)
        return path, read_checkpoint(path, RESUME_KEYS)
    return newest_loadable(run_dir)


def newest_loadable(run_dir: Path) -> tuple[Path | None, dict | None]:
    """Without ``latest.txt`` (lost in a copy, or never moved) a folder's checkpoints are still its run's: the
    highest step that loads continues it, said in a warning, rather than a new run written over them."""
    found = checkpoint_files(run_dir)
    problems = []
    for path in found:
        try:
            ckpt = read_checkpoint(path, RESUME_KEYS)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        log.warning("%s has no latest.txt: resuming from its newest checkpoint that loads, %s",
                    run_dir / "checkpoints", path.name)
        return path, ckpt
    if found:
        raise ValueError(f"--resume latest: {run_dir / 'checkpoints'} has no latest.txt and none of its checkpoints "
                         f"loads ({'; '.join(problems)})")
    return None, None


def check_resume_keeps(before: TrainConfig, after: TrainConfig, path: Path, step: int) -> None:
    """What ``--set`` cannot change on resume. The model and tokenizer: the checkpoint's weights and vocabulary fix
    them (the run would go on with those, recording the new values). The holdout, unless the new one lies within the
    old (fewer of the same last shards, a smaller share by the same key hash) or holds out nothing: otherwise the run's
    retrieval would score pairs it trained on as held out."""
    fixed = [d for d in config_differences(before, after)
             if d.split(":", 1)[0] == "model" or d.startswith("tokenizer.")]
    if fixed:
        raise ValueError(f"the checkpoint {path} fixes the model and tokenizer of the run it continues "
                         f"({'; '.join(fixed)}): a resumed run keeps them; train a new run (another --output) "
                         f"to change them")
    old = (before.data.holdout_shards, before.data.holdout_fraction)
    new = (after.data.holdout_shards, after.data.holdout_fraction)
    if new != old and any(new) and may_score_trained(old, new):
        raise ValueError(f"data.holdout_shards, data.holdout_fraction {old[0]}, {old[1]:g} → {new[0]}, {new[1]:g} on "
                         f"resume: the run may have trained on some of the new held-out pairs in its {step} steps, "
                         f"so its retrieval would be no held-out figure; keep its holdout, or one within it (fewer of "
                         f"the same last shards, a smaller share)")


def check_run_folder(run_dir: Path) -> None:
    """The run folder can be made and written. Checked on every rank: rank 0 alone makes the folder, and its
    failure there would leave the other ranks waiting."""
    if problem := folder_problem(run_dir):
        raise ValueError(f"run folder {problem}; choose another --output")


def check_inputs(cfg: TrainConfig, resumed: bool) -> None:
    """Files the run reads later, read now on every rank: the final evaluation's labelled folder and class counts
    (read after the last step) and a new run's CLIP vocabulary (read on rank 0 alone; a resumed run has its
    tokenizer in the checkpoint). Each missing or malformed one ends every rank with the same error before any
    work, not a finished training run or ranks waiting on rank 0."""
    if not resumed and cfg.tokenizer.kind == "clip":
        if not Path(cfg.tokenizer.clip_vocab_path).is_file():
            raise FileNotFoundError(f"tokenizer.clip_vocab_path {cfg.tokenizer.clip_vocab_path} is not a file")
        read_clip_merges(cfg.tokenizer.clip_vocab_path)  # a corrupt file: every rank's error, not rank 0's alone
    counts = read_class_counts(cfg.eval.class_counts) if cfg.eval.class_counts else None
    if cfg.eval.zeroshot_dir:
        check_labelled(cfg.eval.zeroshot_dir, counts)


def check_config_agrees(name: str, given: TrainConfig, saved: TrainConfig, checkpoint: Path) -> None:
    """A resumed run trains on with the config saved in its checkpoint: a ``--config`` that says otherwise would be
    ignored, so it is an error naming what differs (the same config, as in a restart after a crash, is fine)."""
    differences = config_differences(saved, given)
    if differences:
        raise ValueError(f"--config {name} differs from the config of the run resumed from {checkpoint} "
                         f"({'; '.join(differences)}): a resumed run keeps its own config; leave out --config "
                         f"and change values with --set")


def tokenizer_and_model_config(cfg: TrainConfig, ckpt: dict | None, split: Split, run_dir: Path,
                               rank: int) -> tuple[TextTokenizer, ModelConfig]:
    """A resumed run's own tokenizer and architecture; a new run's tokenizer fitted on rank 0 and shared by file."""
    if ckpt is not None:
        return TextTokenizer.from_json(ckpt["tokenizer"]), ModelConfig.from_dict(ckpt["model_config"])
    mcfg = load_model_config(cfg.model)
    after_rank0(lambda: build_tokenizer(cfg, split, mcfg.text_cfg.context_length).save(run_dir / "tokenizer.json"),
                rank)
    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    mcfg.text_cfg.vocab_size, mcfg.text_cfg.eot_id = tokenizer.vocab_size, tokenizer.eot_id
    if cfg.loss == "siglip" and mcfg.init_logit_bias is None:
        mcfg.init_logit_scale, mcfg.init_logit_bias = math.log(10), -10.0
    return tokenizer, mcfg


def make_optimizer(cfg: TrainConfig, model: CLIP, ckpt: dict | None, world: int,
                   fused: bool = False) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int]:
    """AdamW (``fused``: the fused kernel, else torch's default implementation) and its schedule, restored from
    ``ckpt`` with the run's config (and any --set) deciding the hyper-parameters; the step to start at."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if ckpt is None:
        return optimizer, scheduler, 0
    optimizer.load_state_dict(ckpt["optimizer"])
    set_fused(optimizer, fused)
    scheduler.load_state_dict(ckpt["scheduler"])
    start_step = int(ckpt["step"])
    # the run's config (with any --set) decides the hyper-parameters, not the values stored in the optimiser
    for group, wd in zip(optimizer.param_groups, (cfg.optim.weight_decay, 0.0), strict=True):
        group.update(weight_decay=wd, betas=cfg.optim.betas, eps=cfg.optim.eps)
    scheduler.base_lrs = [cfg.optim.lr] * len(optimizer.param_groups)
    for group, lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = lr * scheduler.lr_lambdas[0](start_step)
    if ckpt.get("world_size", world) != world:
        log.warning("resuming a run of %d rank(s) with %d: the data stream differs from an uninterrupted run",
                    ckpt["world_size"], world)
    return optimizer, scheduler, start_step


def set_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """The implementation this run's config asks for, whatever the checkpoint's groups say (a run saved on a GPU,
    fused, resumes on a CPU): the flag, and each parameter's step count where that implementation keeps it (fused:
    on the parameter's device; the others: on the CPU, where reading it costs no device sync)."""
    for group in optimizer.param_groups:
        group["fused"] = fused or None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)


def make_forward_loss(ddp_model: torch.nn.Module, model: CLIP, loss_fn: Callable, device: torch.device,
                      bf16: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The step's forward as one function of (uint8 images, tokens) on the device: normalisation, both towers and
    the loss, so that compiling it gives one graph. CLIP's mean and std live on the device once: building them per
    step from host values would be a blocking host-to-device copy, a host sync in every CUDA step."""
    mean = torch.as_tensor(MEAN, device=device).view(3, 1, 1)
    std = torch.as_tensor(STD, device=device).view(3, 1, 1)

    def forward_loss(images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        images = (images.float() / 255.0 - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features = ddp_model(images, tokens)
            return loss_fn(image_features, text_features, model.logit_scale.exp(), model.logit_bias)

    return forward_loss


def make_step(cfg: TrainConfig, model: CLIP, device: torch.device, bf16: bool, world: int = 1,
              ckpt: dict | None = None) -> tuple[Step, int]:
    """The optimiser (fused per ``optim.fused``), DDP around the model when there are several ranks, and the
    forward + loss, compiled per ``compile``; the step to start at.

    With ``compile_scope: step`` the function that calls the DDP-wrapped model and the loss is compiled: in one
    process that is one graph; under DDP, Dynamo runs DDP's forward eagerly (its reducer's bookkeeping) and compiles
    the model inside it split at DDP's gradient buckets (DDPOptimizer, torch's documented DDP + compile path), so
    the gradients are still all-reduced bucket by bucket during the backward."""
    optimizer, scheduler, start_step = make_optimizer(cfg, model, ckpt, world, fused=cfg.optim.use_fused(device.type))
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = cfg.use_compile(device.type)
    if compiled and cfg.compile_scope == "model":
        ddp_model = torch.compile(ddp_model, mode=cfg.compile_mode)
    forward_loss = make_forward_loss(ddp_model, model, make_loss(cfg.loss), device, bf16)
    if compiled and cfg.compile_scope == "step":
        forward_loss = torch.compile(forward_loss, mode=cfg.compile_mode, dynamic=False)
    cudagraphs = compiled and device.type == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")
    return Step(model, forward_loss, optimizer, scheduler, cfg.optim.grad_clip, device, cudagraphs), start_step


def start_stream(t: Trainer) -> int:
    """Open the rank's batch stream at the run's start step; the training samples an epoch is sized by."""
    cfg = t.cfg
    sizes = training_sizes(t.split.train, cfg.data.caption_key, t.split.fraction)
    samples = cfg.data.epoch_samples or max(1, sum(sizes.values()))
    spe = t.steps_per_epoch = epoch_steps(samples, t.global_batch, cfg.data.workers)
    spec = StreamSpec(shards=[str(s) for s in t.split.train], sizes=[sizes[s.name] for s in t.split.train],
                      batch_size=cfg.data.batch_size, batches_per_worker=spe // max(1, cfg.data.workers),
                      image_size=t.mcfg.vision_cfg.image_size, seed=cfg.seed, rank=t.rank, world=t.world,
                      start_epoch=t.start_step // spe, skip_batches=t.start_step % spe,
                      shuffle_buffer=cfg.data.shuffle_buffer, caption_key=cfg.data.caption_key,
                      crop_scale=cfg.data.crop_scale, holdout_fraction=t.split.fraction)
    t.batches = to_device_ahead(train_batches(spec, t.tokenizer, cfg.data.workers, pin_memory=t.device.type == "cuda"),
                                t.device)
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------


def train_loop(t: Trainer) -> tuple[int, dict[str, int]]:
    """Steps from the start step to ``cfg.steps``; (last step, samples skipped on this rank by reason)."""
    cfg = t.cfg
    runlog = RunLog(t.run_dir, t.start_step, t.rank == 0)
    t.model.train()
    skipped_total: dict[str, int] = {}
    window = Window()
    t_start = time.perf_counter()
    step = t.start_step
    while step < cfg.steps:
        t0 = time.perf_counter()
        with STOP.deferring():
            images, tokens, skipped = next(t.batches)
        window.wait += time.perf_counter() - t0
        for k, v in skipped.items():
            skipped_total[k] = skipped_total.get(k, 0) + v
            window.skipped += v
        loss, lr_used = train_step(t.stepper, images, tokens)
        step = t.progress.step = step + 1
        window.steps += 1
        window.loss += loss.detach()
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if checkpoint or step % cfg.log_every == 0:  # a row at each checkpoint: a resumed run's windows line up
            runlog.write(log_window(t, window, step, lr_used, t_start))
            window = Window()
        if checkpoint:
            snapshot = t.state(step) if t.rank == 0 else None
            if t.rank == 0:
                t.progress.checkpoint = save_checkpoint(t.run_dir, snapshot, cfg.keep_checkpoints)
                log.info("checkpoint %s", t.progress.checkpoint)
            barrier()
    runlog.close()
    return step, skipped_total


def train_step(s: Step, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One optimiser step on a batch; (the loss, the learning rate the step used). Nothing here waits for the device:
    the loss stays a device tensor (the log reads it every ``log_every`` steps), the learning rate is a Python float,
    gradient clipping and the optimiser never read a value back."""
    model = s.model
    if s.cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    loss = s.forward_loss(images.to(s.device, non_blocking=True), tokens.to(s.device, non_blocking=True))
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    s.optimizer.step()
    lr_used = s.optimizer.param_groups[0]["lr"]
    s.scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss, lr_used


# ---------------------------------------------------------------------------------------------------------------------
# logging and evaluation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """What the steps since the last log row add up to on this rank."""

    t0: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    steps: int = 0
    loss: torch.Tensor | float = 0.0
    skipped: int = 0


def log_window(t: Trainer, window: Window, step: int, lr_used: float, t_start: float) -> dict:
    """The log row of a window, averaged over ranks (a collective: every rank calls it at the same step)."""
    device, world = t.device, t.world
    loss = window.loss / window.steps if torch.is_tensor(window.loss) else torch.tensor(window.loss, device=device)
    stats = torch.stack([loss, torch.tensor(window.wait, device=device),
                         torch.tensor(float(window.skipped), device=device)]).float()
    if world > 1:
        dist.all_reduce(stats)
        stats[:2] /= world
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - window.t0
    sps = window.steps * t.global_batch / elapsed
    achieved = sps * t.flops_per_sample
    row = {"step": step, "epoch": step // t.steps_per_epoch, "loss": round(stats[0].item(), 6),
           "logit_scale": round(t.model.logit_scale.exp().item(), 4),
           "lr": lr_used, "samples_per_s": round(sps, 2),
           "data_wait": round(stats[1].item() / elapsed, 4), "tflops": round(achieved / 1e12, 4),
           "mfu": round(achieved / (t.peak * world), 4), "skipped": int(stats[2].item()),
           "elapsed_s": round(time.perf_counter() - t_start, 2)}
    log.info("step %d/%d epoch %d loss %.4f scale %.2f lr %.2e %.1f samples/s data wait %.1f%% "
             "%.3f TFLOP/s MFU %.1f%%", step, t.cfg.steps, row["epoch"], row["loss"], row["logit_scale"],
             row["lr"], sps, 100 * row["data_wait"], row["tflops"], 100 * row["mfu"])
    return row


def final_evaluation(t: Trainer, step: int, skipped_total: dict[str, int]) -> None:
    """Zero-shot, linear probe and retrieval on the held-out pairs, into ``RUN/eval.json`` and the console."""
    cfg = t.cfg
    if not (cfg.eval.zeroshot_dir or (cfg.eval.retrieval and t.split.heldout)):
        return
    results = evaluate(t.model, t.tokenizer, t.device, cfg.eval.zeroshot_dir, t.split.heldout, cfg.eval.retrieval,
                       cfg.eval.linear_probe, cfg.eval.max_retrieval_pairs, cfg.data.caption_key,
                       holdout_fraction=t.split.fraction, batch_size=cfg.eval.batch_size,
                       class_counts=read_class_counts(cfg.eval.class_counts) if cfg.eval.class_counts else None)
    results["step"], results["skipped_rank0"], results["code"] = step, skipped_total, code_revision()
    (t.run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    print(format_results(results), flush=True)


def exit_process(code: int) -> None:
    """Leave a distributed worker without the interpreter's finalization.

    gloo's worker threads drop their finished collectives on their own; a collective run inside autograd's backward
    holds a Python reference, and when that drop comes after the interpreter began finalizing, taking the GIL ends
    the thread inside a noexcept destructor: ``terminate called without an active exception`` (SIGABRT) once every
    ~15 runs, after all the work was done. Everything the run writes is written and closed by now, so the process
    flushes its streams and exits at once."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    if "RANK" in os.environ:  # started by torchrun
        exit_process(exit_code)
    sys.exit(exit_code)
