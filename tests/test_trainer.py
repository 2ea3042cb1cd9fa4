"""The trainer on small digit shards: data stream, tokenizer, checkpoints, resume after SIGKILL,
damaged data skipped and counted, clear errors, and the evaluation script."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, VENV_BIN
from tests.helpers.shards import write_shards
from trainer.data import (
    DataError,
    StreamSpec,
    check_captions,
    epoch_steps,
    find_shards,
    random_resized_square,
    split_shards,
    to_device_ahead,
    train_batches,
)
from trainer.tokenizer import load_clip_bpe, train_bpe

TRAIN = ROOT / "trainer" / "train.py"
EVALUATE = ROOT / "trainer" / "evaluate.py"
FAST = ["--set", "data.batch_size=16", "--set", "data.workers=1", "--set", "optim.warmup_steps=2",
        "--set", "tokenizer.vocab_size=300", "--set", "log_every=1", "--set", "data.shuffle_buffer=50"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, n_shards=4, per_shard=48)
    return folder


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(data: Path, out: Path, *sets: str, ranks: int = 1) -> list[str]:
    launcher = ([str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1
                else [sys.executable])
    return [*launcher, str(TRAIN), "--data", str(data), "--config", "tiny-cpu", "--output", str(out), *FAST, *sets]


def read_log(run: Path) -> list[dict]:
    with (run / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_find_and_split_shards(shards, tmp_path):
    found = find_shards(shards)
    assert [p.name for p in found] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    train, held = split_shards(found, 1)
    assert [p.name for p in held] == ["00003.tar"] and len(train) == 3
    with pytest.raises(DataError, match="cannot leave 4 held out"):
        split_shards(found, 4)
    with pytest.raises(DataError, match="no WebDataset shards"):
        find_shards(tmp_path)
    with pytest.raises(DataError, match="data not found"):
        find_shards(tmp_path / "nope")


def test_epoch_steps_is_a_multiple_of_workers():
    assert epoch_steps(1000, 128, 1) == 8
    assert epoch_steps(1000, 128, 3) == 9
    assert epoch_steps(10, 128, 2) == 2


def test_batches_ahead_on_a_cpu_are_the_batches_in_order_and_an_empty_stream_ends():
    """Off CUDA the look-ahead copy passes the loader's batches through, each once, in order (on CUDA it copies them
    a step ahead, measured in benchmarks/bench_train_gpu.py)."""
    batches = [(torch.full((2, 3, 4, 4), i, dtype=torch.uint8), torch.full((2, 5), i), {"bad": i}) for i in range(4)]
    got = list(to_device_ahead(iter(batches), torch.device("cpu")))
    assert len(got) == 4 and all(g is b for g, b in zip(got, batches, strict=True))
    assert list(to_device_ahead(iter([]), torch.device("cpu"))) == []


def test_random_resized_square_is_square_and_seeded():
    import random

    img = Image.new("RGB", (300, 200), (10, 200, 30))
    a = random_resized_square(img, 48, random.Random(1))
    b = random_resized_square(img, 48, random.Random(1))
    assert a.size == (48, 48) and a.tobytes() == b.tobytes()


def test_stream_resumes_mid_epoch_with_the_same_batches(shards):
    """Skipping k batches (a resumed run) yields exactly batches k.. of the uninterrupted stream, with 2 workers."""
    tok = train_bpe(["a handwritten digit seven", "the number 7"] * 20, 300, 16)
    spec = dict(shards=[str(p) for p in find_shards(shards)], batch_size=8, batches_per_worker=3, image_size=32,
                seed=5, shuffle_buffer=20)
    full = [b for _, b in zip(range(10), train_batches(StreamSpec(**spec), tok, workers=2), strict=False)]
    resumed = [b for _, b in zip(range(3), train_batches(StreamSpec(**spec, start_epoch=1, skip_batches=1), tok,
                                                         workers=2), strict=False)]
    for got, want in zip(resumed, full[7:], strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(full[0][0], full[6][0])  # a new epoch draws other batches
    other = next(iter(train_batches(StreamSpec(**{**spec, "seed": 6}), tok, workers=2)))
    assert not torch.equal(other[0], full[0][0])


def test_bpe_tokenizer_pads_and_keeps_the_end_token():
    tok = train_bpe(["a handwritten digit seven", "three red circles"] * 30, 300, 8)
    ids = tok(["a handwritten digit seven", "three red circles on a blue background today"])
    assert ids.shape == (2, 8)
    assert (ids == tok.eot_id).sum(1).tolist() == [1, 1]
    assert ids[1, -1].item() == tok.eot_id  # cut to the context, the end token kept last
    assert tok.decode(ids[0].tolist()).strip() == "a handwritten digit seven"


def test_clip_bpe_file_format(tmp_path):
    """CLIP's vocabulary file: a header line, then merges; words end with </w>, ids as OpenAI lays them out."""
    import gzip

    path = tmp_path / "bpe.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n")
    tok = load_clip_bpe(path, context_length=6)
    ids = tok(["Hello  hello!"])[0].tolist()
    vocab = tok.tok.get_vocab()
    assert ids[:5] == [vocab["<|startoftext|>"], vocab["hello</w>"], vocab["hello</w>"], vocab["!</w>"],
                       vocab["<|endoftext|>"]]
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["he"] == 512 and vocab["hello</w>"] == 515
    assert tok.eot_id == len(vocab) - 1


def test_shards_without_captions_are_a_clear_error(tmp_path):
    folder = write_shards(tmp_path / "nocap", 2, 8, captions=False)[0].parent
    with pytest.raises(DataError, match=r"no captions \('.txt' members\)"):
        check_captions(find_shards(folder))
    proc = subprocess.run(train_cmd(folder, tmp_path / "run", "--set", "steps=2", "--set", "data.holdout_shards=0"),
                          capture_output=True, text=True, timeout=120, env=env(), cwd=ROOT)
    assert proc.returncode == 2
    assert "error: no captions" in proc.stderr and "found jpg: 16, json: 16" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains in a subprocess
def test_damaged_tar_and_sample_are_skipped_and_counted(shards, tmp_path):
    folder = tmp_path / "damaged"
    write_shards(folder, 3, 24)
    import tarfile

    with tarfile.open(folder / "00001.tar") as tf:
        member = tf.getmembers()[30]
    data = (folder / "00001.tar").read_bytes()
    (folder / "00001.tar").write_bytes(data[: member.offset_data + member.size // 2])  # cut inside a member
    with tarfile.open(folder / "00000.tar") as tf:
        first = tf.getmembers()[0]
    assert first.name.endswith(".jpg")
    with open(folder / "00000.tar", "r+b") as fh:  # the first image is not a JPEG any more
        fh.seek(first.offset_data)
        fh.write(b"\x00" * 64)
    run = tmp_path / "run"
    proc = subprocess.run(train_cmd(folder, run, "--set", "steps=12", "--set", "data.holdout_shards=0"),
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert sum(int(r["skipped"]) for r in rows) > 0
    assert "skipped (corrupt_tar)" in proc.stderr
    assert "undecodable_image" in proc.stderr


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_same_curve(shards, tmp_path):
    """12 steps straight vs 6 steps, SIGKILL, --resume latest, 6 more: the same losses (2 ranks, gloo), and the same
    log rows: a row at each checkpoint too, so the resumed run's first row averages the steps the straight run's
    does (with rows every 4 steps alone, its row 8 would average steps 7-8 where the straight run's averages 5-8)."""
    sets = ["--set", "steps=12", "--set", "checkpoint_every=6", "--set", "data.epoch_samples=128",  # epoch: 4 steps
            "--set", "log_every=4"]
    straight = tmp_path / "straight"
    proc = subprocess.run(train_cmd(shards, straight, *sets, ranks=2), capture_output=True, text=True,
                          timeout=600, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run = tmp_path / "killed"
    job = subprocess.Popen(train_cmd(shards, run, *sets, ranks=2), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=env(), cwd=ROOT, start_new_session=True)
    pointer = run / "checkpoints" / "latest.txt"
    deadline = time.monotonic() + 300
    while not pointer.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    tree = [job.pid, *(c.pid for c in psutil.Process(job.pid).children(recursive=True))]
    for pid in tree:  # torchrun starts its workers in sessions of their own: kill each process
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    assert pointer.read_text() == "step_00000006.pt", "the run ended before it could be killed"
    proc = subprocess.run(train_cmd(shards, run, *sets, "--resume", "latest", ranks=2), capture_output=True,
                          text=True, timeout=600, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming" in proc.stderr and "at step 6" in proc.stderr, proc.stderr[-3000:]
    a, b = read_log(straight), read_log(run)
    assert [int(r["step"]) for r in a] == [int(r["step"]) for r in b] == [4, 6, 8, 12]
    for x, y in zip(a, b, strict=True):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=1e-4, abs=1e-5), (x, y)
        assert float(x["lr"]) == pytest.approx(float(y["lr"]), rel=1e-9)
    final_a = torch.load(straight / "checkpoints" / "step_00000012.pt", weights_only=True)
    final_b = torch.load(run / "checkpoints" / "step_00000012.pt", weights_only=True)
    assert final_b["step"] == 12 and final_b["epoch"] == 3
    for k, v in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # trains in a subprocess
def test_checkpoint_loads_weights_only_and_evaluates(shards, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(train_cmd(shards, run, "--set", "steps=4", "--set", "checkpoint_every=2",
                                    "--set", "keep_checkpoints=1"),
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.txt", "step_00000004.pt"]
    ckpt = torch.load(run / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "config", "model_config", "tokenizer"} <= set(ckpt)
    assert ckpt["config"]["data"]["batch_size"] == 16 and (run / "config.yaml").is_file()
    assert (run / "tb").is_dir() and (run / "tokenizer.json").is_file()
    assert "retrieval on 48 held-out pairs" in proc.stdout

    folder = tmp_path / "labelled"
    for label in ("3", "7"):
        (folder / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (30 * i, 100, 200 if label == "3" else 20)).save(folder / label / f"{i}.png")
    (folder / "zeroshot.json").write_text(json.dumps({"classnames": {"3": "three", "7": "seven"},
                                                      "templates": ["a handwritten {}", "the digit {}"]}))
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(EVALUATE), "--checkpoint", str(run), "--zeroshot", str(folder),
                           "--data", str(shards), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["step"] == 4 and res["zeroshot"]["images"] == 8 and res["zeroshot"]["templates"] == 2
    assert res["linear_probe"]["fit"] == 4 and res["retrieval"]["pairs"] == 48
    assert "zero-shot top-1" in proc.stdout
    bad = subprocess.run([sys.executable, str(EVALUATE), "--checkpoint", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr


@pytest.mark.slow  # trains in a subprocess
def test_siglip_run_learns_its_bias_and_resumes_with_it(shards, tmp_path):
    run = tmp_path / "siglip"
    base = ["--set", "loss=siglip", "--set", "steps=3", "--set", "data.holdout_shards=0"]
    proc = subprocess.run(train_cmd(shards, run, *base), capture_output=True, text=True, timeout=300, env=env(),
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = torch.load(run / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert ckpt["model_config"]["init_logit_bias"] == -10.0 and "logit_bias" in ckpt["model"]
    assert ckpt["model"]["logit_bias"].item() != -10.0  # trained
    proc = subprocess.run(train_cmd(shards, run, *base, "--set", "steps=5", "--resume", "latest"),
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3, 4, 5]


@pytest.mark.slow  # trains in a subprocess
def test_a_stream_of_unusable_samples_is_an_error_not_a_hang(tmp_path):
    import io
    import tarfile

    folder = tmp_path / "broken"
    folder.mkdir()
    for s in range(2):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for j in range(8):
                for ext, data in (("jpg", b"not an image at all"), ("txt", b"a handwritten digit seven")):
                    info = tarfile.TarInfo(f"{s}{j:04d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    proc = subprocess.run(train_cmd(folder, tmp_path / "run", "--set", "steps=2", "--set", "data.holdout_shards=0"),
                          capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "samples in a row were unusable" in proc.stderr and "undecodable_image" in proc.stderr


def test_checkpoint_pruning_never_removes_the_one_just_written(tmp_path):
    from trainer.train import drop_checkpoints_after, save_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (100, 1000):  # a later step left by an earlier history
        torch.save({"step": step}, folder / f"step_{step:08d}.pt")
    save_checkpoint(tmp_path, {"step": 600}, keep=1)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step_00000600.pt", "step_00001000.pt"]
    assert (folder / "latest.txt").read_text() == "step_00000600.pt"
    save_checkpoint(tmp_path, {"step": 700}, keep=2)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step_00000600.pt", "step_00000700.pt",
                                                           "step_00001000.pt"]
    drop_checkpoints_after(tmp_path, 700)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step_00000600.pt", "step_00000700.pt"]


@pytest.mark.slow  # trains in a subprocess
def test_a_run_folder_with_checkpoints_needs_resume_and_resume_takes_new_settings(shards, tmp_path):
    run = tmp_path / "run"
    base = ["--set", "steps=2", "--set", "data.holdout_shards=0", "--set", "optim.warmup_steps=0"]
    proc = subprocess.run(train_cmd(shards, run, *base), capture_output=True, text=True, timeout=300, env=env(),
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = subprocess.run(train_cmd(shards, run, *base), capture_output=True, text=True, timeout=300, env=env(),
                           cwd=ROOT)
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr and "--resume latest" in again.stderr
    more = subprocess.run(train_cmd(shards, run, *base, "--set", "steps=3", "--set", "optim.lr=0.125", "--resume",
                                    "latest"), capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming on other data" not in more.stderr
    last = read_log(run)[-1]
    assert int(last["step"]) == 3
    assert float(last["lr"]) == pytest.approx(0.125 * 0.25)  # cosine at step 2 of 3, from the new base LR
    grown = tmp_path / "grown"  # the same shards and one more: the run goes on, and says its batches differ
    shutil.copytree(shards, grown)
    first = sorted(grown.glob("*.tar"))[0]
    shutil.copy(first, grown / f"zz-{first.name}")
    again = subprocess.run(train_cmd(grown, run, *base, "--set", "steps=4", "--set", "optim.lr=0.125", "--resume",
                                     "latest"),
                           capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming on other data than the checkpoint was trained on (shards " in again.stderr, again.stderr[-3000:]
