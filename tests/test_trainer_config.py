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


# ---------------------------------------------------------------------------------------------- nonsense numbers


@pytest.mark.parametrize("setting, field", [
    ("optim.grad_clip=-1", "optim.grad_clip"),  # clip_grad_norm_ with a negative max flips every gradient
    ("data.crop_scale=[0, 0]", "data.crop_scale"),  # no crop has an area: each falls back to the centre square
    ("data.crop_scale=[1.5, 0.2]", "data.crop_scale"),
    ("data.crop_scale=[0.8, 0.5]", "data.crop_scale"),
    ("data.crop_scale=[0.5, 1.2]", "data.crop_scale"),
    ("peak_flops=0", "peak_flops"),
    ("peak_flops=-1e12", "peak_flops"),
    ("optim.eps=0", "optim.eps"),
    ("optim.eps=-1e-8", "optim.eps"),
    ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("optim.betas=[-0.1, 0.98]", "optim.betas"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.grad_clip=.nan", "optim.grad_clip"),
    ("data.caption_key=''", "data.caption_key"),
])
def test_a_value_outside_its_range_is_a_one_line_error_naming_the_field(setting, field):
    from trainer.config import load_train_config
    from witbuild.yaml_io import ConfigError

    with pytest.raises(ConfigError) as err:
        load_train_config("tiny-cpu", [setting])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{field}: "), message


def test_the_edges_of_each_range_and_the_defaults_still_load():
    from trainer.config import TrainConfig, load_train_config

    cfg = load_train_config(None, ["data.crop_scale=[1, 1]", "optim.betas=[0, 0.999]", "peak_flops=1e9",
                                   "optim.grad_clip=null"])
    assert cfg.data.crop_scale == (1.0, 1.0) and cfg.optim.betas == (0.0, 0.999) and cfg.optim.grad_clip is None
    assert load_train_config(None, ["optim.grad_clip=0"]).optim.grad_clip == 0  # 0 still means no clipping
    default = TrainConfig()
    assert (default.optim.grad_clip, default.optim.eps, default.optim.betas, default.data.crop_scale,
            default.peak_flops) == (1.0, 1e-6, (0.9, 0.98), (0.9, 1.0), None)
    for name in ("tiny-cpu", "vit-b-32-gpu"):
        load_train_config(name, ["tokenizer.clip_vocab_path=/vocab.txt.gz"])


def test_a_config_error_is_one_line_not_pydantics_report():
    """pydantic's own message takes four lines (and a link): each config error is one ``error:`` line."""
    from trainer.config import load_train_config, saved_config
    from witbuild.yaml_io import ConfigError

    with pytest.raises(ConfigError, match=r"^steps: Input should be a valid integer[^\n]*$"):
        load_train_config(None, ["steps=abc"])
    saved = load_train_config(None).model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"^the resumed run's config: optim\.eps: [^\n]*$"):
        load_train_config(None, ["optim.eps=-1"], base=saved)
    saved["data"]["crop_scale"] = [0, 0]
    with pytest.raises(ConfigError, match=r"^the checkpoint's config: data\.crop_scale: [^\n]*$"):
        saved_config(saved)
