"""Trainer settings that must not be silently ignored: --config with --resume, TF32 on every CUDA run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.helpers.shards import write_shards
from trainer.config import CONFIG_DIR

TRAIN = ROOT / "trainer" / "train.py"

# --------------------------------------------------------------------------------------------- --config + --resume


def run_train(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), "--data", str(data), "--output", str(out), *args,
                           "--set", "data.batch_size=8", "--set", "data.workers=0", "--set", "tokenizer.vocab_size=300",
                           "--set", "data.shuffle_buffer=20", "--set", "optim.warmup_steps=0"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # trains in a subprocess
def test_config_that_disagrees_with_the_resumed_run_is_an_error(tmp_path):
    data = tmp_path / "shards"
    write_shards(data, n_shards=2, per_shard=16)
    run = tmp_path / "run"
    first = run_train(data, run, "--config", "tiny-cpu", "--set", "steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    other = yaml.safe_load((CONFIG_DIR / "tiny-cpu.yaml").read_text())
    other["optim"]["lr"] = 0.02
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))

    proc = run_train(data, run, "--config", str(other_path), "--set", "steps=2", "--resume", "latest")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--config {other_path} differs" in errors[0]
    assert "optim.lr: 0.001 → 0.02" in errors[0] and "leave out --config" in errors[0]
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step_00000001.pt"]  # nothing trained

    same = run_train(data, run, "--config", "tiny-cpu", "--set", "steps=2", "--resume", "latest")
    assert same.returncode == 0, same.stderr[-3000:]  # the same command line continues the run
    without = run_train(data, run, "--set", "steps=3", "--resume", "latest")
    assert without.returncode == 0, without.stderr[-3000:]
    assert "resuming" in without.stderr and "at step 2" in without.stderr


def test_help_says_what_config_does_with_resume():
    out = subprocess.run([sys.executable, str(TRAIN), "--help"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert "A resumed run keeps the config saved with it" in " ".join(out.split())


# ---------------------------------------------------------------------------------------------------------- TF32


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_is_decided_by_the_device_alone():
    from trainer.train import use_tf32

    assert use_tf32(torch.device("cuda")) and use_tf32(torch.device("cuda", 3))
    assert not use_tf32(torch.device("cpu"))


def test_a_single_process_cuda_run_enables_tf32(monkeypatch, restore_tf32):
    """Started without torchrun on a machine with CUDA: the same TF32 setting as a torchrun rank."""
    from trainer.train import init_distributed

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this machine has no GPU; the choice is the test
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert init_distributed() == (0, 1, torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.backends.cuda.matmul.allow_tf32 = False
    assert init_distributed() == (0, 1, torch.device("cpu"))
    assert not torch.backends.cuda.matmul.allow_tf32
