"""A bad option or input to trainer/train.py or trainer/evaluate.py: one ``error:`` line and exit status 2, found
before any work (a training run, an encoding pass), never a traceback; under torchrun every rank stops so."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, VENV_BIN
from tests.helpers.shards import write_shards

TRAIN = ROOT / "trainer" / "train.py"
EVALUATE = ROOT / "trainer" / "evaluate.py"
SMALL = ["--set", "data.batch_size=8", "--set", "data.workers=0", "--set", "tokenizer.vocab_size=300",
         "--set", "data.shuffle_buffer=20", "--set", "optim.warmup_steps=0", "--set", "steps=2",
         "--set", "data.holdout_shards=0"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # the trainer's logging format


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)[0].parent


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A labelled folder of two classes, two pictures each."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("labelled")
    for c, label in enumerate(("3", "7")):
        (folder / label).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (60 * i, 100, 200 * c)).save(folder / label / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint as trainer/train.py writes it (the tiny model untrained): what evaluate.py reads."""
    from trainer.config import TrainConfig
    from trainer.model import CLIP, load_model_config
    from trainer.tokenizer import train_bpe

    tok = train_bpe(["a handwritten digit three", "the number 7 written by hand"] * 20, 300, 16)
    mcfg = load_model_config("tiny")
    mcfg.text_cfg.vocab_size, mcfg.text_cfg.eot_id = tok.vocab_size, tok.eot_id
    path = tmp_path_factory.mktemp("run") / "step_00000001.pt"
    torch.save({"step": 1, "model": CLIP(mcfg).state_dict(), "model_config": mcfg.to_dict(),
                "tokenizer": tok.to_json(), "config": TrainConfig().model_dump(mode="json")}, path)
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train(data: Path, out: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = ([str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1
                else [sys.executable])
    return subprocess.run([*launcher, str(TRAIN), "--data", str(data), "--config", "tiny-cpu", "--output", str(out),
                           *SMALL, *args], capture_output=True, text=True, timeout=180, env=env(), cwd=ROOT)


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EVALUATE), *args], capture_output=True, text=True, timeout=180,
                          env=env(), cwd=ROOT)


def assert_one_error(proc: subprocess.CompletedProcess, *says: str) -> str:
    """Exit status 2, no traceback, and besides log lines exactly one line on stderr: ``error: ...``."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------- train.py


@pytest.mark.parametrize("setting, says", [
    ("optim.grad_clip=-1", "optim.grad_clip: Input should be greater than or equal to 0"),
    ("data.crop_scale=[0, 0]", "data.crop_scale: "),
    ("steps=abc", "steps: Input should be a valid integer"),
])
def test_a_bad_setting_is_one_error_line_before_any_work(shards, tmp_path, setting, says):
    run = tmp_path / "run"
    assert_one_error(train(shards, run, "--set", setting), says)
    assert not run.exists()


@pytest.mark.parametrize("settings, says", [
    (["eval.zeroshot_dir={missing}"], "no class folders in"),
    (["eval.class_counts={missing}.json"], "not a readable JSON object of class counts"),
    (["eval.zeroshot_dir={labelled}", "eval.class_counts={counts}"], "class counts lack 1 evaluated classes: 7"),
    (["eval.zeroshot_dir={broken_meta}"], "zeroshot.json: not a readable JSON object"),
])
def test_evaluation_inputs_are_checked_before_training(shards, labelled, tmp_path, settings, says):
    """Read after the last step, a missing labelled folder or class-count file used to end a finished run."""
    import shutil

    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"3": 10}))
    broken_meta = tmp_path / "broken"
    shutil.copytree(labelled, broken_meta)
    (broken_meta / "zeroshot.json").write_text("{not json")
    sets = [item for s in settings for item in ("--set", s.format(missing=tmp_path / "missing", labelled=labelled,
                                                                  counts=counts, broken_meta=broken_meta))]
    run = tmp_path / "run"
    assert_one_error(train(shards, run, *sets), says)
    assert not run.exists()


@pytest.mark.parametrize("content, says", [
    (b"\x1f\x8b\x08\x00 not a gzip stream", "cannot be read"),
    (gzip.compress(b"#version: 0.2\na b\nthis is prose, not merges\n"), "line 3 is not a pair of symbols"),
], ids=["corrupt", "not_merges"])
def test_a_clip_vocabulary_that_is_not_clips_is_one_error_line(shards, tmp_path, content, says):
    """Read by rank 0 alone when the tokenizer is made: checked first on every rank, so none waits on it."""
    vocab = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    vocab.write_bytes(content)
    run = tmp_path / "run"
    assert_one_error(train(shards, run, "--set", "tokenizer.kind=clip", "--set", f"tokenizer.clip_vocab_path={vocab}"),
                     f"CLIP vocabulary {vocab}", says)
    assert not run.exists()


def test_an_output_that_is_a_file_is_one_error_line(shards, tmp_path):
    file = tmp_path / "file"
    file.write_text("not a folder")
    assert_one_error(train(shards, file), f"run folder {file} is a file")
    assert_one_error(train(shards, file / "run"), f"{file} is a file")


@pytest.mark.parametrize("content", [b"checkpoint", bytes(range(256)) * 4, b""])
def test_resuming_from_a_file_that_is_no_checkpoint_is_one_error_line(shards, tmp_path, content):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(content)
    assert_one_error(train(shards, tmp_path / "run", "--resume", str(bad)), f"{bad}: not a readable checkpoint")


def test_resuming_from_a_torch_file_that_is_no_run_checkpoint_is_one_error_line(shards, tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"model": {}}, other)
    assert_one_error(train(shards, tmp_path / "run", "--resume", str(other)),
                     f"{other}: not a checkpoint of trainer/train.py (it lacks model_config, tokenizer")


@pytest.mark.parametrize("case", ["output_is_a_file", "corrupt_resume"])
def test_under_torchrun_both_ranks_stop_with_status_2_and_one_error_line(shards, tmp_path, case):
    """Each rank finds the error itself, before any collective: rank 0 says it once, and no rank waits on one
    that left. torchrun then reports the workers' status 2 (with a traceback of its own launcher)."""
    file = tmp_path / "file"
    file.write_text("checkpoint")
    args = [] if case == "output_is_a_file" else ["--resume", str(file)]
    proc = train(shards, file if case == "output_is_a_file" else tmp_path / "run", *args, ranks=2)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(file) in errors[0], proc.stderr[-3000:]
    assert len(re.findall(r"exitcode\s+: 2 \(pid", proc.stderr)) == 2, proc.stderr[-3000:]  # both ranks, status 2
    assert not re.search(r'File "[^"]*trainer/', proc.stderr), proc.stderr[-3000:]  # no traceback of the trainer


# ------------------------------------------------------------------------------------------------- evaluate.py


@pytest.mark.parametrize("content", [b"checkpoint", bytes(range(256)) * 4])
def test_evaluating_a_file_that_is_no_checkpoint_is_one_error_line(tmp_path, content):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(content)
    assert_one_error(evaluate("--checkpoint", str(bad)), f"{bad}: not a readable checkpoint")


def test_an_out_that_is_a_folder_is_refused_before_the_evaluation(checkpoint, labelled, tmp_path):
    assert_one_error(evaluate("--checkpoint", str(checkpoint), "--zeroshot", str(labelled), "--out", str(tmp_path)),
                     f"--out {tmp_path}: a folder")


def test_a_labelled_folder_without_class_folders_is_one_error_line(checkpoint, tmp_path):
    (tmp_path / "0.png").write_bytes(b"a picture outside any class folder")
    assert_one_error(evaluate("--checkpoint", str(checkpoint), "--zeroshot", str(tmp_path)),
                     f"no class folders in {tmp_path}")


@pytest.mark.parametrize("args, says", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--data", "{shards}", "--holdout-shards", "-1"], "--holdout-shards must be 0 or more"),
    (["--holdout-shards", "1"], "give --data"),
    (["--data", "{shards}", "--holdout-shards", "1", "--holdout-fraction", "0.1"], "give one"),
    (["--benchmarks-only"], "give at least one"),
    (["--device", "nodevice"], "--device nodevice"),
    (["--out", "{tmp}/missing/eval.json"], "does not exist"),
    (["--out", "/proc/eval.json"], "cannot be written"),  # a folder no one may write to, root included
])
def test_bad_evaluation_options_are_one_error_line(checkpoint, shards, tmp_path, capsys, args, says):
    """Each used to be a traceback (batch size -3, an unknown device, an --out that cannot be written, after the
    evaluation) or a silent evaluation of something else (a negative holdout, nothing at all)."""
    from trainer.evaluate import main

    argv = ["--checkpoint", str(checkpoint), *(a.format(shards=shards, tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says in err, err


@pytest.mark.parametrize("problem", ["zeroshot_json", "class_counts", "benchmark"])
def test_evaluation_inputs_are_checked_before_any_picture_is_encoded(checkpoint, labelled, tmp_path, capsys,
                                                                    monkeypatch, problem):
    import shutil

    import trainer.evaluate as ev

    folder = tmp_path / "labelled"
    shutil.copytree(labelled, folder)
    args = ["--checkpoint", str(checkpoint), "--zeroshot", str(folder)]
    if problem == "zeroshot_json":
        (folder / "zeroshot.json").write_text(json.dumps({"classnames": ["three"]}))  # two class folders
        says = "lists 1 class names for 2 class folders"
    elif problem == "class_counts":
        (tmp_path / "counts.json").write_text(json.dumps({"3": 5}))
        args += ["--class-counts", str(tmp_path / "counts.json")]
        says = "class counts lack 1 evaluated classes: 7"
    else:
        args += ["--benchmark", str(tmp_path / "no_benchmark")]
        says = "not a clip_benchmark WebDataset folder"

    def encoded(*_args, **_kwargs):
        raise AssertionError("pictures were encoded before the inputs were checked")

    monkeypatch.setattr(ev, "encode_stream", encoded)
    assert ev.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says in err, err


def _rank0_fails(rank: int, port: int, results) -> None:
    """One gloo rank of the test below: rank 0's work fails, every rank must learn of it."""
    import torch.distributed as dist

    from trainer.data import DataError
    from trainer.train import after_rank0

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        def work() -> None:
            raise ValueError("no captions to fit the tokenizer in /data")

        after_rank0(work, rank)
        results.put((rank, "returned"))
    except DataError as exc:
        results.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


def test_work_that_fails_on_rank_0_ends_every_rank_with_its_error():
    """Rank 0 fits the tokenizer while the others wait: its failure used to leave them at the barrier until gloo's
    timeout, and then a traceback of theirs."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank0_fails, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = dict(results.get(timeout=5) for _ in procs)
    assert got == {0: "no captions to fit the tokenizer in /data", 1: "no captions to fit the tokenizer in /data"}
