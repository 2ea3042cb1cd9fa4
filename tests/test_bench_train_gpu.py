"""benchmarks/bench_train_gpu.py runs end to end on a CPU (its smoke mode) and reports sane figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench_train_gpu.py"
STEPS = 5


@pytest.mark.slow  # two trainer runs in subprocesses
def test_cpu_smoke_run_reports_every_figure(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--steps", str(STEPS), "--models", "tiny",
           "--batch-size", "8", "--workers", "1", "--learn-steps", "5", "--skip-openclip", "--attention-kernels",
           "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["open_clip"]["skipped"] == "--skip-openclip" and res["peak_tflops_measured"] > 0
    tiny = res["models"]["tiny"]
    assert tiny["parameters"] > 100_000 and tiny["train_gflop_per_sample"] > 0.1
    assert set(tiny["probe"]) == {"eager", "fused_adamw"}  # compiling is off on a CPU unless --compile on
    attention = tiny["attention_kernels"]
    assert (attention["vision"]["tokens"], attention["text"]["tokens"], attention["text"]["causal"]) == (37, 24, True)
    for tower in attention.values():
        assert set(tower["kernels"]) == {"cudnn", "flash", "efficient", "math"}
        assert tower["kernels"]["math"]["ms_per_step"] > 0  # the plain attention runs everywhere
        assert "error" in tower["kernels"]["cudnn"]  # CUDA's kernels refuse a CPU tensor, and say so
    for name, p in tiny["probe"].items():
        assert p["samples_per_s"] > 0 and 0 < p["mfu"] < 1, name
        assert len(p["losses"]) == 3 + 3 and all(math.isfinite(x) for x in p["losses"]), name
        assert p["host_syncs_per_step"] is None  # counted on CUDA only
        assert p["stream_dtypes"] == {"image": "float32", "text": "float32"}, name  # fp32 on a CPU: no autocast
    # one initialisation, the same batches: fused AdamW starts where eager starts and stays within the tolerance
    assert tiny["probe"]["fused_adamw"]["losses"][0] == tiny["probe"]["eager"]["losses"][0]
    assert tiny["loss_agreement"]["fused_adamw"]["equal"] and tiny["loss_agreement"]["fused_adamw"]["steps"] == 6
    ours = tiny["ours"]
    assert ours["samples_per_s"] > 0 and 0 <= ours["data_wait"] <= 1 and 0 < ours["mfu"] < 1
    assert ours["steps_measured"] == STEPS - ours["skipped_steps"] > 0 and math.isfinite(ours["last_loss"])
    assert tiny["open_clip"] is None and tiny["open_clip_step"] is None
    learning = res["learning"]
    assert learning["steps"] == 5 and learning["images"] == 360 and learning["classes"] == 10
    assert 0 <= learning["zeroshot_top1"] <= 1 and learning["ok"] is None  # 5 steps are too few to judge
    assert "model step only" in proc.stdout and "end to end" in proc.stdout and "learning check" in proc.stdout
    assert "open_clip_train" in proc.stdout and "skipped: --skip-openclip" in proc.stdout
    assert "residual stream under the step's autocast: image float32, text float32" in proc.stdout


def test_cuda_without_a_device_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cuda"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "torch sees no CUDA device" in proc.stderr


@pytest.mark.slow  # both trainers in subprocesses
def test_openclip_runs_when_each_worker_holds_less_than_a_batch(tmp_path, monkeypatch):
    """Large batches over few shards: 4 workers of one 48-sample shard each, batch 64. open_clip_train then needs
    --dataset-resampled (without it a worker stops after its shard, and the run logs no step). Also open_clip's own
    model step against our eager probe. Needs open_clip's side environment (benchmarks/README.md, bench_train.py),
    which CI does not build."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _openclip as oc

    if not (oc.DEFAULT_ENV / "bin" / "python").exists():
        pytest.skip(f"no open_clip side environment at {oc.DEFAULT_ENV}")
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--steps", "8", "--models", "tiny", "--batch-size", "64",
           "--workers", "4", "--variants", "eager", "--learn-steps", "0", "--work-dir", str(tmp_path / "work"),
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    tiny = res["models"]["tiny"]
    assert tiny["tokenizer"] == "clip"  # CLIP's BPE from open_clip's package, for both trainers
    for who in ("ours", "open_clip"):
        assert "error" not in tiny[who], tiny[who]["error"][-2000:]
        assert tiny[who]["samples_per_s"] > 0 and 0 <= tiny[who]["data_wait"] <= 1, (who, tiny[who])
    assert "--dataset-resampled" in tiny["open_clip"]["flags"]
    theirs = tiny["open_clip_step"]  # open_clip's own step alone, on the same model JSON and batch as our eager probe
    assert "error" not in theirs, theirs["error"][-2000:]
    assert theirs["samples_per_s"] > 0 and theirs["batch_size"] == 64
    # MFU over our peak, by our FLOP count (the side environment's own torch build may beat that peak on a CPU)
    flops = theirs["samples_per_s"] * tiny["train_gflop_per_sample"] * 1e9
    assert theirs["mfu"] == pytest.approx(flops / (res["peak_tflops_measured"] * 1e12), rel=1e-3)
    assert (theirs["precision"], theirs["compile"], theirs["steps"]) == ("fp32", False, 4)
    assert len(theirs["losses"]) == 3 + 4 and all(math.isfinite(x) for x in theirs["losses"])
    assert abs(theirs["losses"][0] - math.log(64)) < 1.0  # random features: about ln(batch) at the first step
    assert "open_clip, its own step (eager)" in proc.stdout and "ours / open_clip's step: eager" in proc.stdout


@pytest.mark.parametrize(("device", "image", "failed"), [("cuda", "bfloat16", False), ("cuda", "float32", True),
                                                         ("cpu", "float32", False)])
def test_a_residual_stream_in_another_dtype_than_open_clips_fails_the_run(monkeypatch, device, image, failed):
    """On a GPU the image tower's stream must be bf16 under autocast, as in open_clip (a CPU run has no autocast)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_train_gpu as bench

    probe = {"losses": [1.0], "stream_dtypes": {"image": image, "text": "float32"}}
    result = {"settings": {"device": device}, "learning": None,
              "models": {"vit-b-16": {"probe": {"compiled_step": probe}, "ours": None, "loss_agreement": {}}}}
    assert bool(bench.failures(result)) is failed
    assert not failed or "residual stream" in bench.failures(result)[0]


def test_the_probe_traces_the_graph_our_trainer_compiles(tmp_path, monkeypatch):
    """The probe builds the text tower as the trainer does from CLIP's tokenizer (its vocabulary and end token), so
    both trace the same graph and the trainer's run finds the probe's compilation in torch's cache. With the JSON's
    own settings the text tower pooled otherwise (``argmax`` against ``== eot``), and each ViT-B run on the GPU
    compiled again (81 s against 34 s warm for ViT-B/16)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _openclip as oc
    import bench_train_gpu as bench
    import torch

    from tests.helpers.reference_wheels import extract
    from trainer.config import TrainConfig
    from trainer.data import Split
    from trainer.model import CLIP
    from trainer.train import make_forward_loss, tokenizer_and_model_config

    vocab = extract("open_clip_torch", ["open_clip/bpe_simple_vocab_16e6.txt.gz"], tmp_path)
    vocab = next(iter(vocab.values()))
    model_json, _ = oc.openclip_ready_config(ROOT / "trainer" / "configs" / "models" / "tiny.json", tmp_path)
    tokenizer = {"tokenizer.kind": "clip", "tokenizer.clip_vocab_path": vocab}
    cfg = TrainConfig.model_validate({"model": str(model_json), "tokenizer": {"kind": "clip",
                                                                             "clip_vocab_path": str(vocab)}})
    _, trainers = tokenizer_and_model_config(cfg, None, Split([], []), tmp_path, rank=0)
    probes = bench.probe_model_config(str(model_json), bench.trainer_text_config(tokenizer, 77))
    assert probes == trainers and trainers.text_cfg.eot_id == 49407

    def graph(mcfg) -> str:
        seen = []

        def capture(gm, _inputs):
            seen.append(gm.code)
            return gm.forward

        torch.manual_seed(0)
        model = CLIP(mcfg)
        step = make_forward_loss(model, model, lambda i, t, scale, bias: (i @ t.T * scale).mean(),
                                 torch.device("cpu"), bf16=False)
        torch._dynamo.reset()
        torch.compile(step, backend=capture, dynamic=False)(*bench.random_batches(probes, 2, "cpu", n=1)[0])
        return "\n".join(seen)

    assert graph(probes) == graph(trainers)
    # the JSON as it is pools the text at the largest id: another graph, which the trainer never compiles
    assert graph(bench.probe_model_config(str(model_json), {})) != graph(trainers)


def test_shards_written_by_several_processes_are_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _openclip as oc

    one = oc.write_shards(tmp_path / "one", shards=3, per_shard=4, image_size=32)
    three = oc.write_shards(tmp_path / "three", shards=3, per_shard=4, image_size=32, workers=3)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in three]
    assert (tmp_path / "one" / "sizes.json").read_text() == (tmp_path / "three" / "sizes.json").read_text()
