"""End to end: the tiny CLIP trained with 2 DDP ranks on the shards built from the demo web
learns digits it never saw — zero-shot on the held-out sklearn digits, far above chance.

The demo build is the same on every run (the demo web's fixed origin, see witbuild.demo) and training is
deterministic for a seed (gloo on CPU, one thread per rank, seeded data streams): the same seed gives the same
eval.json to the last digit. The thresholds come from seeds 0-4 on an earlier build (153 held-out pairs), and were
checked on later builds: where each image URL is fetched once, with match.case_sensitive=smart (today's
default), and with today's training stream (seeds 0-2; STEPS, 2 ranks, OMP_NUM_THREADS=1):

    seed  zero-shot  probe   image→text R@1  R@10   text→image R@1  R@10
    earlier build (153 held-out pairs)
    0     75.3%      94.4%   21.2%           67.3%  23.5%           69.9%
    1     79.7%      88.3%   24.2%           73.9%  27.5%           75.8%
    2     83.3%      87.7%   25.5%           70.6%  22.9%           68.6%
    3     82.2%      89.9%   28.1%           77.1%  22.2%           74.5%
    4     83.9%      89.9%   25.2%           69.9%  22.9%           71.2%
    each image URL fetched once, MetaCLIP's case rule (112 held-out pairs)
    0     84.2%      88.8%   26.3%           78.6%  25.0%           80.4%
    1     81.4%      88.8%   27.2%           79.5%  25.9%           76.8%
    2     83.3%      86.6%   30.4%           81.2%  24.1%           76.8%
    smart case rule (118 held-out pairs)
    0     77.8%      92.7%   29.7%           80.5%  28.8%           80.5%
    1     83.6%      88.8%   22.0%           78.0%  26.3%           74.6%
    2     85.8%      88.8%   24.6%           76.3%  26.3%           75.4%
    today's stream: every training sample once an epoch, one share per worker (118 held-out pairs)
    0     78.6%      89.4%   28.4%           79.7%  24.6%           77.1%
    1     82.5%      89.4%   20.3%           73.7%  20.3%           72.9%
    2     87.5%      92.2%   31.8%           76.3%  28.0%           78.0%

Each threshold lies at least one seed-to-seed spread below the lowest value seen, so that another CPU's float
rounding or a library update does not fail the test while a real regression (a broken build, shuffled pairs,
a broken loss) does: with 118 pairs chance is 0.8% for R@1 and 8.5% for R@10 (a tie with the true pair
counts as a coin toss, as trainer/evaluate.py scores it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import MEMORY_1G, ROOT, VENV_BIN, run_job

pytestmark = [pytest.mark.slow, pytest.mark.spark]

STEPS = 250
SEED = 0
MIN_ZEROSHOT_TOP1 = 0.65  # lowest seen 75.3%; chance 10%
MIN_PROBE_TOP1 = 0.80  # lowest seen 87.7%
MIN_RECALL_AT_1 = 0.12  # both directions; lowest seen 20.3%, chance 1/pairs
MIN_RECALL_AT_10 = 0.50  # both directions; lowest seen 67.3%, chance 10/pairs
MIN_RETRIEVAL_PAIRS = 100  # so that chance stays at 10% for R@10 and 1% for R@1 at most


@dataclass
class TrainedRun:
    run: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def trained_run(demo_build, tmp_path_factory) -> TrainedRun:
    """The tiny CLIP trained on the demo build with 2 gloo ranks (STEPS, SEED), as a user runs it."""
    run = tmp_path_factory.mktemp("train") / "run"
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "trainer" / "train.py"),
           "--data", str(demo_build.build), "--config", "tiny-cpu", "--output", str(run),
           "--set", f"steps={STEPS}", "--set", f"seed={SEED}", "--set", "checkpoint_every=1000",
           "--set", f"eval.zeroshot_dir={demo_build.eval_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return TrainedRun(run, proc)


def test_tiny_clip_learns_held_out_digits_zero_shot(trained_run):
    run, proc = trained_run.run, trained_run.proc
    res = json.loads((run / "eval.json").read_text())
    zs = res["zeroshot"]
    print(f"zero-shot top-1 {zs['top1']:.1%} on {zs['images']} held-out digits after {STEPS} steps, seed {SEED}; "
          f"linear probe {res['linear_probe']['top1']:.1%}; retrieval {res['retrieval']}")
    assert zs["classes"] == 10 and zs["images"] >= 300
    assert zs["top1"] >= MIN_ZEROSHOT_TOP1
    assert res["linear_probe"]["top1"] >= MIN_PROBE_TOP1
    ret = res["retrieval"]
    assert ret["pairs"] >= MIN_RETRIEVAL_PAIRS
    for direction in ("image_to_text", "text_to_image"):
        assert ret[f"{direction}_R@1"] >= MIN_RECALL_AT_1, direction
        assert ret[f"{direction}_R@10"] >= MIN_RECALL_AT_10, direction
    assert "zero-shot top-1" in proc.stdout



CLIP_BENCHMARK = ["clip_benchmark/metrics/zeroshot_classification.py", "clip_benchmark/metrics/zeroshot_retrieval.py"]


def test_evaluation_equals_clip_benchmarks_on_the_same_model_and_data(demo_build, trained_run, tmp_path):
    """eval.json against clip_benchmark 1.6.1's zero-shot classification and retrieval (its wheel as published),
    run on the trained model, the same held-out digits and pairs, the same prompts and the same input tensors: the
    scoring is what is compared (class embeddings from the prompts, top-1/5, mean per-class recall, recall@k both
    ways), not the preprocessing. The figures were equal but one: two captions occur twice among the 118 held-out
    pairs, so their texts tie exactly, and clip_benchmark credits the tie to whichever comes first where ours
    counts it as a coin toss (image→text R@5 60.6% against 61.0%). So the tolerance is the rows whose true
    candidate has an identical twin, and nothing else: a swapped direction moves text→image R@1 by one pair."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, TensorDataset

    from tests.helpers.reference_wheels import extract, load_module
    from trainer.config import saved_config
    from trainer.data import center_square, image_folder, iter_pairs, open_rgb, to_tensor
    from trainer.evaluate import DEFAULT_TEMPLATES, heldout_of, load_checkpoint

    files = extract("clip_benchmark", CLIP_BENCHMARK, tmp_path)
    classification = load_module(files[CLIP_BENCHMARK[0]], "clip_benchmark_zeroshot_classification")
    retrieval = load_module(files[CLIP_BENCHMARK[1]], "clip_benchmark_zeroshot_retrieval")
    ours = json.loads((trained_run.run / "eval.json").read_text())
    model, tokenizer, ckpt = load_checkpoint(trained_run.run)
    cfg = saved_config(ckpt["config"])
    size, batch = model.cfg.vision_cfg.image_size, cfg.eval.batch_size

    paths, classes, labels = image_folder(demo_build.eval_dir)
    images = [Image.open(path).convert("RGB") for path in paths]
    meta = json.loads((demo_build.eval_dir / "zeroshot.json").read_text())
    names = meta.get("classnames") or {}
    prompts = {c: [t.format(names.get(c, c)) for t in meta.get("templates") or DEFAULT_TEMPLATES] for c in classes}
    digits = TensorDataset(torch.stack([to_tensor(center_square(im, size)) for im in images]), torch.tensor(labels))
    digits.classes = classes
    classifier = classification.zero_shot_classifier(model, tokenizer, classes, prompts, "cpu", amp=False)
    logits, target = classification.run_classification(model, classifier, DataLoader(digits, batch_size=batch), "cpu",
                                                       amp=False)
    # its own accuracy() takes float() of a one-element array, which NumPy 2 refuses: the top-k of its logits here
    top5 = logits.topk(5, dim=1).indices
    theirs = {"acc1": (top5[:, 0] == target).float().mean().item(),
              "acc5": (top5 == target[:, None]).any(1).float().mean().item(),
              "mean_per_class_recall": classification.balanced_accuracy_score(target, logits.argmax(1))}
    zs, n = ours["zeroshot"], len(labels)
    per_class = np.mean([v["accuracy"] for v in zs["per_class"].values()])
    print(f"zero-shot ours/clip_benchmark: top-1 {zs['top1']:.4f}/{theirs['acc1']:.4f}, top-5 "
          f"{zs['top5']:.4f}/{theirs['acc5']:.4f}, mean per-class {per_class:.4f}/"
          f"{theirs['mean_per_class_recall']:.4f}")
    assert zs["images"] == n and zs["top1"] > 0.5
    assert zs["top1"] == pytest.approx(theirs["acc1"], abs=1 / n)
    assert zs["top5"] == pytest.approx(theirs["acc5"], abs=1 / n)
    one_image = 1 / (len(classes) * min(v["images"] for v in zs["per_class"].values()))  # its share of the mean
    assert per_class == pytest.approx(theirs["mean_per_class_recall"], abs=one_image)

    split, _ = heldout_of(str(demo_build.build), ckpt["config"])
    pairs = list(iter_pairs(split.heldout, cfg.data.caption_key, split.fraction))[:cfg.eval.max_retrieval_pairs]
    x = torch.stack([to_tensor(center_square(open_rgb(data), size)) for data, _, _ in pairs])
    loader = DataLoader(list(zip(x, [[text] for _, text, _ in pairs], strict=True)), batch_size=batch,
                        collate_fn=lambda b: (torch.stack([i for i, _ in b]), [t for _, t in b]))
    theirs = retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ret, m = ours["retrieval"], len(pairs)
    assert ret["pairs"] == m >= MIN_RETRIEVAL_PAIRS
    # identical model inputs, identical features: texts that tokenise alike (the same caption, or one that differs
    # in case or spacing), images whose tensors are equal
    texts, pictures = Counter(bytes(t.numpy()) for t in tokenizer([text for _, text, _ in pairs])), Counter(
        bytes(t.numpy()) for t in x)
    tied = {"image_to_text": sum(n for n in texts.values() if n > 1),
            "text_to_image": sum(n for n in pictures.values() if n > 1)}
    for k in (1, 5, 10):
        print(f"R@{k} ours/clip_benchmark: image→text {ret[f'image_to_text_R@{k}']:.4f}/"
              f"{theirs[f'text_retrieval_recall@{k}']:.4f}, text→image {ret[f'text_to_image_R@{k}']:.4f}/"
              f"{theirs[f'image_retrieval_recall@{k}']:.4f}")
        for direction, name in (("image_to_text", "text"), ("text_to_image", "image")):
            gap = abs(ret[f"{direction}_R@{k}"] - theirs[f"{name}_retrieval_recall@{k}"])
            assert gap <= tied[direction] / m + 1e-6, (direction, k, gap)


# Scores of the demo build's 1,271 final samples under runs of STEPS steps (seeds 0-2), matched captions against
# the same captions shuffled (seeded permutation): mean 0.792 / 0.791 / 0.798 matched, 0.013 / 0.029 / 0.017
# shuffled; the matched caption scored higher for 99.2% / 98.9% / 98.8% of the images.
MIN_MATCHED_WINS = 0.95
MIN_MEAN_GAP = 0.5
KEEP_FRACTION = 0.5


def test_clip_score_with_the_trained_model_keeps_the_best_aligned_half(demo_build, trained_run, tmp_path):
    """Finalize again with clip_score on (the trained run as checkpoint, keep_fraction 0.5, then SemDeDup): every
    sample is scored as the trainer scores it, the worse half is dropped and counted, SemDeDup removes duplicates
    among the rest only (each removal's kept sample is in the dataset), and a caption scores far above a shuffled
    one. The build records the step file that scored it."""
    from witbuild.curate.clip_score import ClipScoreConfig, decode_embedding, load_scorer
    from witbuild.stages.finalize import read_tar_members

    build = tmp_path / "build"
    shutil.copytree(demo_build.build, build, ignore=shutil.ignore_patterns("finalize"))
    before = pq.read_table(demo_build.build / "stages" / "finalize" / "index.parquet").to_pandas()
    proc = run_job("--config", str(build / "build_config.yaml"), "--output", str(build), "--from-stage", "finalize",
                   "--set", f"clip_score.checkpoint={trained_run.run}", "--set", "clip_score.embeddings=true",
                   "--set", f"clip_score.keep_fraction={KEEP_FRACTION}", "--set", "clip_score.semdedup_eps=0.003",
                   "--set", "clip_score.semdedup_clusters=2", spark_args=MEMORY_1G, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    index = pq.read_table(build / "stages" / "finalize" / "index.parquet").to_pandas()
    report = json.loads((build / "build_report.json").read_text())
    finalize = report["stages"]["finalize"]
    assert "low_clip_score" in proc.stdout
    saved = yaml.safe_load((build / "build_config.yaml").read_text())
    assert Path(saved["clip_score"]["checkpoint"]).name == "step_00000250.pt"
    semdups = pq.read_table(build / "stages" / "finalize" / "semantic_duplicates.parquet").to_pandas()
    print(f"SemDeDup removed {len(semdups)} of the {math.ceil(len(before) * KEEP_FRACTION)} best-scored samples")
    assert set(semdups.duplicate_of) <= set(index.key) and not set(semdups.key) & set(index.key)
    assert finalize["dropped"]["semantic_duplicate"] == len(semdups)
    # float32 scores of distinct pairs do not tie here
    assert len(index) + len(semdups) == math.ceil(len(before) * KEEP_FRACTION)
    assert finalize["dropped"]["low_clip_score"] == len(before) - len(index) - len(semdups)
    assert set(index.key) <= set(before.key) and index.clip_score.notna().all()
    assert index.clip_score.min() >= finalize["info"]["clip_score_cutoff"] - 1e-6
    norms = np.linalg.norm(np.stack([decode_embedding(b) for b in index.clip_embedding]), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    sizes = json.loads((build / "stages" / "finalize" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(index)

    # the stored scores are the in-process scorer's, and a matched caption beats a shuffled one
    scorer = load_scorer(ClipScoreConfig(checkpoint=str(trained_run.run)))
    pool = before.sort_values("key")
    tars: dict[str, dict] = {}
    images = []
    for shard, key in zip(pool.shard, pool.key, strict=True):
        tars.setdefault(shard, read_tar_members(str(demo_build.build / "stages" / "finalize" / shard)))
        images.append(tars[shard][key]["jpg"])
    texts = pool.text.tolist()
    matched, _ = scorer.score(images, texts)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled, _ = scorer.score(images, [texts[i] for i in perm])
    matched, shuffled = np.array(matched, dtype=np.float64), np.array(shuffled, dtype=np.float64)
    stored = dict(zip(index.key, index.clip_score, strict=True))
    mine = dict(zip(pool.key, matched, strict=True))
    assert max(abs(stored[k] - mine[k]) for k in stored) < 1e-5
    cutoff = np.sort(matched)[::-1][len(index) + len(semdups) - 1]
    assert set(index.key) | set(semdups.key) == {k for k, v in mine.items() if v >= cutoff}
    print(f"matched {matched.mean():.3f}, shuffled {shuffled.mean():.3f}, "
          f"matched higher for {(matched > shuffled).mean():.1%} of {len(matched)} images")
    assert (matched > shuffled).mean() >= MIN_MATCHED_WINS
    assert matched.mean() - shuffled.mean() >= MIN_MEAN_GAP

    # witbuild stats: the score distribution, and thumbnails of the best and the worst scored samples
    from witbuild.stats.collect import collect_stats
    from witbuild.stats.gallery import EXTREMES, RANDOM
    from witbuild.stats.html import render_html

    report = collect_stats(build)
    assert report["clip_scores"]["count"] == len(index)
    assert report["clip_scores"]["min"] == pytest.approx(float(index.clip_score.min()), abs=1e-4)
    page = render_html(report)
    thumbs = re.findall(r'<img class="thumb"[^>]*src="data:image/jpeg;base64,', page)
    assert len(thumbs) >= RANDOM + 2 * EXTREMES and "Lowest CLIP scores" in page


# SemDeDup with the demo-trained tiny model (clip_score.semdedup_eps = SEMDEDUP_EPS, 4 k-means clusters) on 60
# pictures of the demo web's kinds, the copies of them that pHash misses (> 4 bits: 8-15% cropped, rotated 4-6°,
# brightness and contrast changed by 15-20%; 109 copies) and 30 colour-variant pairs. Runs of seeds 0-2 removed
# 36% / 45% / 46% of the copies (a 250-step model is a weak image embedder: the crops and jitters it moves
# furthest stay), never a colour variant against the other colour of its outline, and never an original against
# another picture; but two distinct drawings of one colour scheme (two blue ovals and two blue pentagons, both on
# green) embed within 0.005 under all three models, and seed 0 also confused a second such pair: 1-2 wrong
# removals among the 60 colour-variant images, at eps 0.005 and 0.007 as well.
SEMDEDUP_EPS = 0.01
MIN_SEMDEDUP_RECALL = 0.2
MAX_CONFUSED_DRAWINGS = 3


def planted_semantic_set(scorer, seed: int = 0) -> tuple[list[str], list[bytes]]:
    """Keys and encoded images: ``o{i}`` originals with ``o{i}~{kind}`` copies pHash misses, ``cv{i}a``/``cv{i}b``
    colour-variant pairs. A removal is right when its key and its kept counterpart share the part before ``~``."""
    import random

    from witbuild.dedup.near import image_signature
    from witbuild.dedup.phash import hamming
    from witbuild.demo.dup_pairs import SEMANTIC_COPY_KINDS, colour_variants, originals, semantic_copy
    from witbuild.demo.images import encode

    rng = random.Random(seed)
    keys, images = [], []
    for i, (_, img) in enumerate(originals(60, seed)):
        a = encode(img, "jpg", 90)
        keys.append(f"o{i:02d}")
        images.append(a)
        for kind in SEMANTIC_COPY_KINDS:
            b = encode(semantic_copy(kind, img, rng), "jpg", 90)
            if hamming(image_signature(a)[0], image_signature(b)[0]) > 4:  # only what pHash misses
                keys.append(f"o{i:02d}~{kind}")
                images.append(b)
    for i, (_, a, b) in enumerate(colour_variants(30, seed + 1)):  # other drawings than the originals
        keys += [f"cv{i:02d}a", f"cv{i:02d}b"]
        images += [a, b]
    return keys, images


def semdedup_outcome(spark, checkpoint: str, eps: float = SEMDEDUP_EPS) -> tuple[list, int]:
    """(removals, copies planted) of SemDeDup in Spark on ``planted_semantic_set`` embedded by ``checkpoint``."""
    from witbuild.curate.clip_score import ClipScoreConfig, embedding_bytes, load_scorer
    from witbuild.stages.finalize_score import semantic_removals

    cfg = ClipScoreConfig(checkpoint=checkpoint, semdedup_eps=eps, semdedup_clusters=4)
    scorer = load_scorer(cfg)
    keys, images = planted_semantic_set(scorer)
    _, emb = scorer.score(images, ["a picture"] * len(images))
    df = spark.createDataFrame([(k, embedding_bytes(e)) for k, e in zip(keys, emb, strict=True)],
                               "key string, clip_embedding binary")
    return semantic_removals(df, cfg, len(keys)).collect(), sum("~" in k for k in keys)


def test_semantic_dedup_removes_copies_phash_misses_and_keeps_colour_variants(trained_run, spark):
    removals, planted = semdedup_outcome(spark, str(trained_run.run))
    pairs = [(r["key"], r["duplicate_of"]) for r in removals]
    wrong = [(k, d) for k, d in pairs if k.split("~")[0] != d.split("~")[0]]
    assert not [(k, d) for k, d in pairs if k.startswith("cv") and k[:4] == d[:4]], "a colour variant was removed"
    assert not [(k, d) for k, d in wrong if k.startswith("o") or d.startswith("o")], f"an original confused: {wrong}"
    assert len(wrong) <= MAX_CONFUSED_DRAWINGS, wrong
    assert all(r["similarity"] > 1 - SEMDEDUP_EPS for r in removals)
    recall = len(removals) / planted  # a group of g pictures can lose g - 1
    print(f"semantic dedup removed {len(removals)} of {planted} planted copies ({recall:.0%})")
    assert recall >= MIN_SEMDEDUP_RECALL
