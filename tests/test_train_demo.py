"""End to end: the tiny CLIP trained with 2 DDP ranks on the shards built from the demo web
learns digits it never saw — zero-shot on the held-out sklearn digits, far above chance."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.spark]

STEPS = 250
SEED = 0


def test_tiny_clip_learns_held_out_digits_zero_shot(demo_build, tmp_path):
    run = tmp_path / "run"
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "trainer" / "train.py"),
           "--data", str(demo_build.build), "--config", "tiny-cpu", "--output", str(run),
           "--set", f"steps={STEPS}", "--set", f"seed={SEED}", "--set", "checkpoint_every=1000",
           "--set", f"eval.zeroshot_dir={demo_build.eval_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((run / "eval.json").read_text())
    zs = res["zeroshot"]
    print(f"zero-shot top-1 {zs['top1']:.1%} on {zs['images']} held-out digits after {STEPS} steps, seed {SEED}; "
          f"linear probe {res['linear_probe']['top1']:.1%}; retrieval {res['retrieval']}")
    assert zs["classes"] == 10 and zs["images"] >= 300
    assert zs["top1"] >= 0.5  # chance is 10%
    assert res["linear_probe"]["top1"] >= 0.8
    assert res["retrieval"]["pairs"] > 10 and res["retrieval"]["image_to_text_R@10"] > 10 / res["retrieval"]["pairs"]
    assert "zero-shot top-1" in proc.stdout
