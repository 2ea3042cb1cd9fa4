"""CLIP scoring throughput per core: decode + preprocess, image tower, text tower, as finalize's scorer runs them.

Why: ``clip_score`` scores every sample of a build on the Spark executors, one task per core with one torch thread
each (``witbuild/curate/clip_score.py``); what a core scores per second sets what scoring adds to a build. The aim
for the tiny model is ≥ 500 samples/s per core; ViT-B/32 is reported for scale.

Images: photo-like JPEGs (``benchmarks/_openclip.py``'s smooth colour field with grain, so decoding costs what a
photo costs) at ``--image-side`` px, the longest side img2dataset stores with the demo config (224, keep_ratio);
captions of 6-12 words. Models: random weights of the model JSON (the cost does not depend on the weights) with a
byte-level BPE fitted to the captions. One process, ``torch.set_num_threads(1)``: one core, as in a Spark task.

    .venv/bin/python benchmarks/bench_score.py                         # tiny and vit-b-32, 2,048 samples
    .venv/bin/python benchmarks/bench_score.py --models tiny --samples 512
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import machine_info  # noqa: E402
from _openclip import _caption, _jpeg  # noqa: E402

from trainer.data import normalize  # noqa: E402
from trainer.model import CLIP, load_model_config  # noqa: E402
from trainer.tokenizer import train_bpe  # noqa: E402
from witbuild.curate.clip_score import ClipScoreConfig, load_scorer  # noqa: E402

TARGET_TINY = 500.0  # samples/s per core


def make_checkpoint(model: str, captions: list[str], folder: Path) -> Path:
    """A checkpoint file as our trainer writes it, random weights of model JSON ``model``."""
    cfg = load_model_config(model).to_dict()
    tok = train_bpe(captions, min(cfg["text_cfg"]["vocab_size"], 2048), cfg["text_cfg"]["context_length"])
    cfg["text_cfg"].update(vocab_size=tok.vocab_size, eot_id=tok.eot_id)
    torch.manual_seed(0)
    path = folder / f"{model}.pt"
    from trainer.model import ModelConfig

    torch.save({"model": CLIP(ModelConfig.from_dict(cfg)).state_dict(), "model_config": cfg,
                "tokenizer": tok.to_json()}, path)
    return path


def measure(model: str, images: list[bytes], captions: list[str], batch: int, folder: Path) -> dict:
    scorer = load_scorer(ClipScoreConfig(checkpoint=str(make_checkpoint(model, captions, folder)), device="cpu",
                                         batch_size=batch))
    torch.set_num_threads(1)
    scorer.score(images[:batch], captions[:batch])  # warm-up: first-call allocations
    t0 = time.perf_counter()
    tensors = [scorer.image_tensor(b) for b in images]
    t1 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tensors), batch):  # normalising the batch counts as the tower's
            scorer.model.encode_image(normalize(torch.stack(tensors[i: i + batch])))
        t2 = time.perf_counter()
        for i in range(0, len(captions), batch):
            scorer.model.encode_text(scorer.tokenizer(captions[i: i + batch]))
    t3 = time.perf_counter()
    scores, _ = scorer.score(images, captions)  # the whole path at once, as a Spark task runs it
    t4 = time.perf_counter()
    n = len(images)
    parts = {"decode_preprocess": t1 - t0, "image_tower": t2 - t1, "text_tower": t3 - t2}
    return {"model": model, "samples": n, "batch": batch, "image_size": scorer.image_size,
            "seconds": {k: round(v, 3) for k, v in parts.items()}, "score_seconds": round(t4 - t3, 3),
            "samples_per_s_per_core": round(n / (t4 - t3), 1),
            "parts_samples_per_s": {k: round(n / v, 1) for k, v in parts.items()},
            "scored": sum(s is not None for s in scores)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,vit-b-32", help="model JSON names or paths, comma-separated")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64, help="clip_score.batch_size")
    ap.add_argument("--image-side", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "_data" / "bench_score.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    np_rng = np.random.default_rng(args.seed)
    images = [_jpeg(np_rng, args.image_side) for _ in range(args.samples)]
    captions = [_caption(rng) for _ in range(args.samples)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            r = measure(model, images, captions, args.batch, Path(tmp))
            results.append(r)
            p = r["parts_samples_per_s"]
            print(f"{model:>10}: {r['samples_per_s_per_core']:8.1f} samples/s/core end to end "
                  f"(decode+preprocess {p['decode_preprocess']:.0f}/s, image tower {p['image_tower']:.0f}/s, "
                  f"text tower {p['text_tower']:.0f}/s; {r['image_size']} px, batch {r['batch']})", flush=True)
    tiny = next((r for r in results if r["model"] == "tiny"), None)
    if tiny:
        verdict = "meets" if tiny["samples_per_s_per_core"] >= TARGET_TINY else "misses"
        print(f"tiny: {verdict} the aim of {TARGET_TINY:.0f} samples/s per core")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                                     "results": results}, indent=1))
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
