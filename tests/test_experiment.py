"""``witbuild experiment``: its checks before anything runs (fast), and one whole small experiment (slow): a demo web
served on 127.0.0.1, the pool built once, raw / balanced / a failing variant through the real stages, two seeds of
the real trainer under torchrun (2 gloo processes) per variant, and the report."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from witbuild.cli import app
from witbuild.demo.eval_images import eval_colour_classes
from witbuild.experiment.run import run_metrics
from witbuild.provenance import code_revision

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, **fields) -> Path:
    cfg = {"build_config": str(ROOT / "configs" / "demo.yaml"), "inputs": ["unused.warc.gz"],
           "output": str(path.parent / "out"), "seeds": [0], **fields}
    path.write_text(yaml.safe_dump(cfg))
    return path


def heldout(root: Path, classes: dict[str, int], names: dict[str, str] | None = None) -> Path:
    for c, n in classes.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(b"\x89PNG")  # never opened: the checks come first
    if names is not None:
        (root / "zeroshot.json").write_text(json.dumps({"classnames": names}))
    return root


def run_cli(*args: str):
    return CliRunner().invoke(app, ["experiment", *args])


@pytest.mark.parametrize(("fields", "message"), [
    ({"variants": {"t5": ["balance.tt=5"]}}, "error: variant 't5': balance.tt: Extra inputs are not permitted"),
    ({"variants": {"raw": ["balance.t=5"]}}, "variant 'raw' is built in"),
    ({"variants": {"Bad Name": []}}, "variant name 'Bad Name'"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"variants": {"bootstrap": []}}, "variant 'bootstrap' is built in"),
    ({"bootstrap": {"seed": 7}}, "bootstrap.seed 7 is not one of seeds [0]"),
    ({"bootstrap": {"keep_fraction": 1.5}}, "bootstrap.keep_fraction"),
    ({"train_sets": ["optim.lrr=1"]}, "error: training config: optim.lrr"),
    ({"zeroshot_dir": "nowhere"}, "held-out folder nowhere does not exist"),
    ({"inputs": ["/nonexistent/x.warc.gz"]}, "error: input not found: /nonexistent/x.warc.gz"),
])
def test_bad_config_is_one_error_line_before_anything_runs(tmp_path, fields, message):
    r = run_cli(str(write_config(tmp_path / "exp.yaml", **fields)))
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("error:") == 1
    assert not (tmp_path / "out").exists()  # nothing was built


def test_heldout_folder_checks(tmp_path):
    no_labels = tmp_path / "flat"
    no_labels.mkdir()
    (no_labels / "a.png").write_bytes(b"x")
    missing = heldout(tmp_path / "missing", {"circle": 2}, {"circle": "circle", "square": "square"})
    empty = heldout(tmp_path / "empty", {"circle": 2, "square": 0})
    for folder, message in ((no_labels, "has no labels"), (missing, "lacks images of 1 class(es) its zeroshot.json "
                                                                    "names: square"),
                            (empty, "class(es) without images: square")):
        r = run_cli(str(write_config(tmp_path / "exp.yaml", zeroshot_dir=str(folder))))
        assert r.exit_code == 2 and message in r.output, r.output
    assert run_cli(str(tmp_path / "none.yaml")).exit_code == 2


def test_run_metrics_read_eval_json():
    ev = {"zeroshot": {"top1": 0.5, "head": {"top1": 0.7}, "tail": {"top1": 0.2}}, "linear_probe": {"top1": 0.8},
          "retrieval": {"pairs": 10, "image_to_text_R@1": 0.3, "text_to_image_R@1": 0.5}}
    assert run_metrics(ev) == {"zeroshot": 0.5, "head": 0.7, "tail": 0.2, "linear_probe": 0.8,
                               "retrieval_R@1": pytest.approx(0.4)}
    assert run_metrics({"zeroshot": {"top1": 0.5}}) == {"zeroshot": 0.5, "head": None, "tail": None,
                                                        "linear_probe": None, "retrieval_R@1": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.spark
def test_small_experiment_end_to_end(tmp_path):
    cfg = write_config(
        tmp_path / "exp.yaml", inputs=[], demo_web={"pages": 300, "seed": 0, "port": free_port()}, seeds=[0, 1],
        variants={"strict": ["filter.min_words=1000"]},  # every caption filtered out: nothing to train on
        bootstrap={"keep_fraction": 0.5},
        train_sets=["steps=16", "log_every=8", "checkpoint_every=16", "optim.warmup_steps=4", "data.batch_size=16",
                    "data.workers=0", "data.holdout_shards=0", "data.shuffle_buffer=64"])
    r = run_cli(str(cfg))
    assert r.exit_code == 1, r.output  # the strict variant failed: the report is written, and the command says so
    assert "failed: strict" in r.output
    out = tmp_path / "out"
    saved = json.loads((out / "experiment.json").read_text())
    results, summary = saved["results"], saved["summary"]
    assert results["code"] == code_revision() and "commit" in results["code"]  # the code that ran it, named
    v = results["variants"]
    assert list(v) == ["raw", "balanced", "strict", "bootstrap"]
    # one pool: both variants balanced the same matched pairs; raw sampled to balanced's size, without a cap
    assert v["raw"]["dataset"]["pool_pairs"] == v["balanced"]["dataset"]["pool_pairs"] > 0
    size = v["balanced"]["dataset"]["balanced_pairs"]
    assert f"balance.target_size={size}" in v["raw"]["sets"]
    raw_counts = json.loads((out / "variants" / "raw" / "build" / "stages" / "balance" / "_counts.json").read_text())
    assert raw_counts["info"]["method"] == "uniform" and raw_counts["info"]["expected_size"] == pytest.approx(size)
    pool_uids = sorted(pq.read_table(out / "pool" / "stages" / "match", columns=["uid"]).column(0).to_pylist())
    for name in ("raw", "balanced"):
        match = out / "variants" / name / "build" / "stages" / "match"
        assert sorted(pq.read_table(match, columns=["uid"]).column(0).to_pylist()) == pool_uids
        assert v[name]["error"] is None and sorted(v[name]["runs"]) == ["0", "1"]
        for run in v[name]["runs"].values():
            assert all(run[m] is not None for m in ("zeroshot", "head", "tail", "linear_probe")), run
    # one download cache: raw fetched only what balanced had not (its other images came from the cache)
    assert v["balanced"]["dataset"]["image_requests"] >= v["balanced"]["dataset"]["downloaded"]
    assert v["raw"]["dataset"]["image_requests"] < 0.8 * v["raw"]["dataset"]["downloaded"]
    assert list((out / "download-cache").rglob("*.body"))
    # bootstrap: the balanced build's samples scored by the balanced model of seed 0, the best half trained on again
    boot, bal = v["bootstrap"], v["balanced"]
    seed0 = out / "variants" / "balanced" / "runs" / "seed0"
    assert boot["error"] is None and sorted(boot["runs"]) == ["0", "1"], boot
    assert f"clip_score.checkpoint={seed0.resolve()}" in boot["sets"]
    assert boot["dataset"]["samples"] == math.ceil(bal["dataset"]["samples"] * 0.5)
    assert boot["dataset"]["low_clip_score"] == bal["dataset"]["samples"] - boot["dataset"]["samples"]
    assert boot["dataset"]["downloaded"] == bal["dataset"]["downloaded"]  # the balanced download, not fetched again
    index = pq.read_table(out / "variants" / "bootstrap" / "build" / "stages" / "finalize" / "index.parquet")
    assert index.num_rows == boot["dataset"]["samples"] and index.column("clip_score").null_count == 0
    assert "bootstrap" in summary["differences"]
    # the failing variant says why and leaves the others' results
    assert v["strict"]["error"] and not v["strict"]["runs"]
    assert "strict" in r.output and "raw (baseline)" in r.output
    assert set(summary["differences"]["balanced"]) >= {"zeroshot", "head", "tail", "linear_probe"}
    assert summary["differences"]["balanced"]["tail"]["seeds"] == [0, 1]
    # head and tail come from the pool's frequencies of the 43 colours
    counts = json.loads((out / "class_counts.json").read_text())
    assert set(counts) == set(eval_colour_classes()) and counts["red"] > 10 * max(counts["plum"], 1)
    ev = json.loads((out / "variants" / "balanced" / "runs" / "seed0" / "eval.json").read_text())
    assert ev["zeroshot"]["classes"] == 43 and ev["zeroshot"]["head"]["classes"][0] == "red"
    assert len(ev["zeroshot"]["tail"]["classes"]) == 43 // 3
    assert "data:image/png;base64," in (out / "report.html").read_text()
