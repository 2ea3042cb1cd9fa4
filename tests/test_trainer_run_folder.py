"""One run per run folder, and what a run folder's state allows on resume: a second run refused, a lost
``latest.txt``, settings a checkpoint fixes, a stopped run's one line and exit status, ranks that outlive their
launcher."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, VENV_BIN
from tests.helpers.shards import write_shards
from trainer import train
from trainer.config import load_train_config

TINY = ["data.batch_size=8", "data.workers=1", "tokenizer.vocab_size=300", "data.shuffle_buffer=20",
        "optim.warmup_steps=0"]


def fake_checkpoint(run: Path, step: int, sets: list[str] | None = None, content: bytes | None = None) -> Path:
    """A file with what resuming reads first (the weights are only loaded later), or ``content`` instead."""
    path = run / "checkpoints" / f"step_{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is not None:
        path.write_bytes(content)
        return path
    config = load_train_config("tiny-cpu", sets).model_dump(mode="json")
    torch.save({"step": step, "model": {}, "model_config": {}, "tokenizer": "", "config": config, "optimizer": {},
                "scheduler": {}}, path)
    return path


def resolve(run: Path, *sets: str, resume: str | None = "latest"):
    args = argparse.Namespace(resume=resume, config=None, set=list(sets))
    return train.resolve_run(args, load_train_config(None, list(sets)), run)


# ------------------------------------------------------------------------------------------------ one run at a time


def test_a_second_run_into_a_run_folder_is_refused_naming_the_first(tmp_path, capsys):
    run = tmp_path / "run"
    code = ("import sys; from pathlib import Path; from trainer.train import lock_run; lock_run(Path(sys.argv[1])); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"run folder {run} is in use by another run \(pid {holder.pid}\)"):
            train.lock_run(run)
        assert train.main(["--data", str(tmp_path / "data"), "--output", str(run), "--config", "tiny-cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: run folder {run} is in use by another run (pid {holder.pid})"), err
        assert "\n" not in err
    finally:
        holder.communicate("", timeout=60)
    train.lock_run(run)  # the kernel let go of the first run's lock when it ended
    try:
        assert (run / train.RUN_LOCK).read_text().strip() == str(os.getpid())
    finally:
        train.release_run_locks()


# ------------------------------------------------------------------------------------------------ what resume takes


def test_resume_latest_without_latest_txt_takes_the_newest_checkpoint_that_loads(tmp_path, caplog):
    run = tmp_path / "run"
    fake_checkpoint(run, 40)
    fake_checkpoint(run, 50, content=b"cut short by a full disk")
    (run / "checkpoints" / "step_00000060.pt.tmp").write_bytes(b"a write that never finished")
    with caplog.at_level("WARNING", logger="trainer"):
        _, ckpt, path = resolve(run)
    assert ckpt["step"] == 40 and path.name == "step_00000040.pt"
    assert "has no latest.txt: resuming from its newest checkpoint that loads, step_00000040.pt" in caplog.text
    with pytest.raises(ValueError, match="already holds checkpoints"):  # a new run is still refused
        resolve(run, resume=None)

    fake_checkpoint(run, 40, content=b"damaged too")
    with pytest.raises(ValueError, match=r"has no latest.txt and none of its checkpoints loads") as err:
        resolve(run)
    assert "step_00000050.pt: not a readable checkpoint" in str(err.value)
    assert "step_00000040.pt: not a readable checkpoint" in str(err.value)
    empty = tmp_path / "empty"
    assert resolve(empty)[1:] == (None, None)  # no checkpoint at all: the run starts


@pytest.mark.parametrize("sets, refused", [
    (["model=vit-b-32"], "model: 'tiny' → 'vit-b-32'"),
    (["tokenizer.vocab_size=8192"], "tokenizer.vocab_size: 2048 → 8192"),
    (["data.holdout_shards=0", "data.holdout_fraction=0.02"], "1, 0 → 0, 0.02 on resume"),  # trained shards' keys
    (["data.holdout_shards=3"], "1, 0 → 3, 0 on resume"),  # two shards the run trained on
    (["data.holdout_shards=0"], None),  # nothing held out: no retrieval, nothing mislabelled
    (["optim.lr=0.125", "steps=99"], None),
])
def test_resume_refuses_what_the_checkpoint_fixes(tmp_path, sets, refused):
    """The architecture and tokenizer are the checkpoint's (a new value would be recorded, not used); a holdout
    other than one within the run's would score pairs the run trained on as held out."""
    run = tmp_path / "run"
    fake_checkpoint(run, 20)
    (run / "checkpoints" / "latest.txt").write_text("step_00000020.pt")
    if refused is None:
        cfg, ckpt, _ = resolve(run, *sets)
        assert ckpt["step"] == 20 and cfg.model == "tiny"
        return
    with pytest.raises(ValueError) as err:
        resolve(run, *sets)
    assert refused in str(err.value), err.value


def test_a_holdout_within_the_runs_is_allowed_on_resume(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 20, ["data.holdout_shards=2"])
    assert resolve(run, "data.holdout_shards=1")[0].data.holdout_shards == 1
    share = tmp_path / "share"
    fake_checkpoint(share, 20, ["data.holdout_shards=0", "data.holdout_fraction=0.1"])
    assert resolve(share, "data.holdout_fraction=0.05")[0].data.holdout_fraction == 0.05
    with pytest.raises(ValueError, match=r"0, 0\.1 → 0, 0\.2 on resume"):
        resolve(share, "data.holdout_fraction=0.2")


# ------------------------------------------------------------------------------------------------ stopping a run


@pytest.mark.parametrize("sig, rank, peer_left", [
    (signal.SIGINT, 0, False), (signal.SIGTERM, 0, False), (signal.SIGINT, 1, False), (signal.SIGTERM, 0, True),
])
def test_a_stopped_run_says_where_it_stopped_in_one_line(tmp_path, monkeypatch, capsys, sig, rank, peer_left):
    """Ctrl-C or SIGTERM: one line on rank 0 (none on the others) naming the step and the last checkpoint, and the
    status a shell gives a process the signal ended. ``peer_left``: the signal's exception is followed by another
    rank's departure (a failed collective), which is still the stop, not a failure."""
    checkpoint = tmp_path / "checkpoints" / "step_00000006.pt"

    def run(*args):
        progress = args[-1] if len(args) == 5 else argparse.Namespace()  # (args, rank, world, device, progress)
        progress.step, progress.checkpoint = 7, checkpoint
        try:
            os.kill(os.getpid(), sig)
            time.sleep(30)
        finally:
            if peer_left:
                raise RuntimeError("[gloo] Connection closed by peer")

    def unhandled(signum, frame):
        raise AssertionError(f"signal {signum} reached the test's own handler")

    monkeypatch.setattr(train, "run", run)
    monkeypatch.setattr(train, "init_distributed", lambda: (rank, 2, torch.device("cpu")))
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        status = train.main(["--data", str(tmp_path)])
        restored = signal.getsignal(signal.SIGTERM) is unhandled
    except BaseException as exc:  # a KeyboardInterrupt must not end the test session
        pytest.fail(f"the stop escaped main: {exc!r}")
    finally:
        signal.signal(signal.SIGTERM, before)
    assert status == 128 + sig and restored
    err = capsys.readouterr().err.strip()
    if rank:
        assert err == ""
    else:
        assert err == (f"error: training interrupted by {sig.name} at step 7: the last checkpoint is {checkpoint}; "
                       "continue with --resume latest")


@pytest.mark.slow  # torchrun in a subprocess
def test_ranks_stop_when_their_launcher_is_killed(tmp_path):
    """torchrun starts each rank in a session of its own: a launcher killed with -9 used to leave them training
    into the run folder. Now each gets SIGTERM, stops with rank 0's one line, and lets go of the folder."""
    data = tmp_path / "data"
    write_shards(data, n_shards=2, per_shard=32)
    run = tmp_path / "run"
    sets = [item for s in [*TINY, "steps=400", "checkpoint_every=2", "log_every=50", "data.holdout_shards=0"]
            for item in ("--set", s)]
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "trainer" / "train.py"),
           "--data", str(data), "--config", "tiny-cpu", "--output", str(run), *sets]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    pointer = run / "checkpoints" / "latest.txt"
    deadline = time.monotonic() + 300
    while not pointer.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before its launcher could be killed"
    job.kill()  # the launcher alone
    _, err = job.communicate(timeout=120)  # the pipe closes when every rank, and each rank's loader, has left
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith("error: training interrupted by SIGTERM at step "), errors[0]
    assert f"the last checkpoint is {run}/checkpoints/step_" in errors[0], errors[0]
    assert "Traceback" not in err, err[-3000:]
    assert int(pointer.read_text()[5:13]) < 400  # stopped, not finished
    train.lock_run(run)
    train.release_run_locks()
