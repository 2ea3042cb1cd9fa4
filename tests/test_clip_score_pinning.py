"""Which checkpoint scores a build: the step file the build records, named by its content, not its path."""

from __future__ import annotations

import shutil
from pathlib import Path

from witbuild.config import BuildConfig
from witbuild.curate.clip_score import ClipScoreConfig, pin_checkpoint
from witbuild.fingerprint import stage_fingerprints


def run_folder(root: Path, steps: dict[int, bytes]) -> Path:
    """A run folder as the trainer leaves it: ``checkpoints/step_*.pt`` and ``latest.txt`` naming the newest."""
    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True)
    for step, data in steps.items():
        (ckpts / f"step_{step:08d}.pt").write_bytes(data)
    (ckpts / "latest.txt").write_text(f"step_{max(steps):08d}.pt\n")
    return root


def test_a_run_folder_is_pinned_to_the_step_it_names_when_the_build_starts(tmp_path):
    run = run_folder(tmp_path / "run", {100: b"one", 200: b"two"})
    for given in (run, run / "checkpoints" / "latest", f"{run}/"):
        pinned = pin_checkpoint(ClipScoreConfig(checkpoint=str(given)))
        assert Path(pinned.checkpoint) == run / "checkpoints" / "step_00000200.pt"
    pinned = pin_checkpoint(ClipScoreConfig(checkpoint=str(run)))
    (run / "checkpoints" / "step_00000300.pt").write_bytes(b"three")  # training goes on meanwhile
    (run / "checkpoints" / "latest.txt").write_text("step_00000300.pt\n")
    assert Path(pinned.checkpoint).name == "step_00000200.pt"
    assert pin_checkpoint(ClipScoreConfig()).checkpoint is None


def finalize_digest(checkpoint: str) -> str:
    cfg = BuildConfig(output="o", input={"paths": ["x.warc.gz"]}, clip_score={"checkpoint": checkpoint})
    return stage_fingerprints(cfg)["finalize"].digest


def test_the_checkpoint_enters_the_fingerprint_by_content_not_by_path(tmp_path):
    run = run_folder(tmp_path / "run", {100: b"one", 200: b"two"})
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy)
    same = {finalize_digest(p) for p in (str(run), f"{run}/", str(run / "checkpoints" / "latest"),
                                         str(run / "checkpoints" / "step_00000200.pt"), str(copy))}
    assert len(same) == 1
    assert finalize_digest(str(run / "checkpoints" / "step_00000100.pt")) not in same
    (copy / "checkpoints" / "step_00000200.pt").write_bytes(b"retrained")
    assert finalize_digest(str(copy)) not in same
