"""Benchmarks in clip_benchmark's WebDataset layout (trainer/wds_benchmark.py), scored against clip_benchmark.

The benchmark folders are written with webdataset's own ``TarWriter`` in the layout clip_benchmark 1.6.1's
``build_wds_dataset`` reads (``SPLIT/nshards.txt``, ``SPLIT/N.tar``, ``dataset_type.txt``, ``classnames.txt``,
``zeroshot_classification_templates.txt``; ``cls`` or ``txt`` with one caption a line). clip_benchmark's
retrieval and zero-shot metric code, from its wheel, scores the same model on the same input tensors: the
figures must be equal (a seeded random model's float features do not tie). Its tie rule, by order, is the one
difference; ours is checked against every ordering of the tied candidates.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from tests.conftest import ROOT
from tests.helpers.reference_wheels import extract, load_module
from trainer.config import TrainConfig
from trainer.data import center_square, open_rgb, to_tensor
from trainer.model import CLIP, ModelConfig
from trainer.tokenizer import train_bpe
from trainer.wds_benchmark import any_in_top_k, evaluate_benchmark, read_benchmark

METRICS = ["clip_benchmark/metrics/zeroshot_classification.py", "clip_benchmark/metrics/zeroshot_retrieval.py"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = ["red", "green", "blue", "white", "grey"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    files = extract("clip_benchmark", METRICS, tmp_path_factory.mktemp("clip_benchmark"))
    return (load_module(files[METRICS[0]], "clip_benchmark_classification_for_wds"),
            load_module(files[METRICS[1]], "clip_benchmark_retrieval_for_wds"))


def picture(i: int) -> Image.Image:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = (digits.images[i] * 255 / 16).astype(np.uint8)
    tint = np.array([[255, 80, 80], [80, 255, 80], [80, 80, 255], [255, 255, 255], [160, 160, 160]])[i % 5]
    rgb = (grey[..., None] * tint[None, None, :] / 255).astype(np.uint8)
    return Image.fromarray(rgb).resize((40 + i % 3 * 8, 32), Image.Resampling.NEAREST)


def encoded(img: Image.Image, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt], **({"quality": 95} if fmt != "png" else {}))
    return buf.getvalue()


def write_benchmark(folder: Path, rows: list[tuple[bytes, str, bytes]], kind: str, per_shard: int = 7) -> Path:
    """``rows``: (image bytes, image extension, cls or txt bytes), written as clip_benchmark lays them out."""
    (folder / "test").mkdir(parents=True)
    field = "txt" if kind == "retrieval" else "cls"
    shards = [rows[i: i + per_shard] for i in range(0, len(rows), per_shard)]
    for n, shard in enumerate(shards):
        with wds.TarWriter(str(folder / "test" / f"{n}.tar")) as sink:
            for j, (image, ext, target) in enumerate(shard):
                sink.write({"__key__": f"s{n:03d}{j:04d}", ext: image, field: target})
    (folder / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    if kind == "retrieval":
        (folder / "dataset_type.txt").write_text("retrieval\n")
    return folder


@pytest.fixture(scope="module")
def retrieval_rows():
    rows = []
    for i in range(30):
        label = i % 10
        captions = [f"a {COLOURS[i % 5]} handwritten {DIGITS[label]} number {i}",
                    f"the digit {DIGITS[label]} written in {COLOURS[i % 5]} ink, sample {i}"][: 1 + i % 2]
        captions += [f"scan {i} of a {DIGITS[label]}"] * (i % 3 == 0)
        rows.append((encoded(picture(i), ("jpg", "webp", "png")[i % 3]), ("jpg", "webp", "png")[i % 3],
                     "\n".join(captions).encode()))
    rows.append((encoded(picture(30), "jpg"), "jpg", b""))  # an image without a caption: a miss in both
    return rows


@pytest.fixture(scope="module")
def model_and_tokenizer():
    texts = [f"a {c} handwritten {d} number {i}" for i, (c, d) in enumerate(itertools.product(COLOURS, DIGITS))]
    tok = train_bpe(texts * 5 + ["the digit written in ink sample scan of a photo"] * 5, 400, 24)
    cfg = ModelConfig.from_dict(json.loads((ROOT / "trainer" / "configs" / "models" / "tiny.json").read_text()))
    cfg.text_cfg.vocab_size, cfg.text_cfg.eot_id, cfg.text_cfg.context_length = tok.vocab_size, tok.eot_id, 24
    torch.manual_seed(0)
    return CLIP(cfg).eval(), tok


def views(rows, size: int) -> list[torch.Tensor]:
    return [to_tensor(center_square(open_rgb(image), size)) for image, _, _ in rows]


def test_retrieval_with_several_captions_equals_clip_benchmarks(reference, retrieval_rows, model_and_tokenizer,
                                                               tmp_path):
    model, tok = model_and_tokenizer
    folder = write_benchmark(tmp_path / "wds_digits_captions", retrieval_rows, "retrieval")
    ours = evaluate_benchmark(model, tok, folder, batch_size=8)["retrieval"]
    size = model.cfg.vision_cfg.image_size
    pairs = list(zip(views(retrieval_rows, size), [t.decode().splitlines() for _, _, t in retrieval_rows],
                     strict=True))
    loader = DataLoader(pairs, batch_size=8, collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]))
    theirs = reference[1].evaluate(model, loader, tok, "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert ours["images"] == 31 and ours["texts"] == sum(len(t) for _, t in pairs) == 55
    assert ours["images_without_captions"] == 1
    for k in (1, 5, 10):
        assert ours[f"image_to_text_R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-6)
        assert ours[f"text_to_image_R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-6)
    assert 0 < ours["image_to_text_R@1"] < ours["image_to_text_R@10"] < 1  # not a degenerate case


def test_classification_equals_clip_benchmarks(reference, model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    rows = [(encoded(picture(i), "jpg"), "jpg", str(i % 10).encode()) for i in range(40)]
    folder = write_benchmark(tmp_path / "wds_digits", rows, "classification")
    (folder / "classnames.txt").write_text("\n".join(DIGITS) + "\n")
    templates = ["a photo of the number {c}.", "a handwritten {c}."]
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    ours = evaluate_benchmark(model, tok, folder, batch_size=16, probe=True)
    x = torch.stack(views(rows, model.cfg.vision_cfg.image_size))
    target = torch.tensor([i % 10 for i in range(40)])
    classifier = reference[0].zero_shot_classifier(model, tok, DIGITS, templates, "cpu", amp=False)
    logits, true = reference[0].run_classification(model, classifier, DataLoader(list(zip(x, target, strict=True)),
                                                                                  batch_size=16), "cpu", amp=False)
    top5 = logits.topk(5, dim=1).indices  # its accuracy() takes float() of an array, which NumPy 2 refuses
    zs = ours["zeroshot"]
    assert zs["images"] == 40 and zs["classes"] == 10 and zs["templates"] == 2
    assert zs["top1"] == pytest.approx((top5[:, 0] == true).float().mean().item(), abs=1e-6)
    assert zs["top5"] == pytest.approx((top5 == true[:, None]).any(1).float().mean().item(), abs=1e-6)
    assert zs["mean_per_class"] == pytest.approx(reference[0].balanced_accuracy_score(true, logits.argmax(1)),
                                                 abs=1e-6)
    assert set(zs["per_class"]) == set(DIGITS)
    assert ours["linear_probe"]["fit"] == 20 and ours["linear_probe"]["test"] == 20


def brute_force(row: list[int], positive: list[bool], k: int) -> float:
    """The share of all orderings of the tied scores (sorted descending) with a positive in the top k."""
    order = sorted(range(len(row)), key=lambda j: -row[j])
    groups = [list(g) for _, g in itertools.groupby(order, key=lambda j: row[j])]
    hits = total = 0
    for perm in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranked = [j for g in perm for j in g]
        hits += any(positive[j] for j in ranked[:k])
        total += 1
    return hits / total


def test_ties_count_as_every_ordering_of_the_tied_candidates_would():
    rng = np.random.default_rng(0)
    for _ in range(200):
        row = rng.integers(0, 3, 7).tolist()
        positive = (rng.random(7) < 0.3).tolist()
        if not any(positive):
            positive[int(rng.integers(0, 7))] = True
        for k in (1, 2, 5):
            got = any_in_top_k(torch.tensor([row], dtype=torch.float), torch.tensor([positive]), k).item()
            assert got == pytest.approx(brute_force(row, positive, k)), (row, positive, k)


def test_the_cli_scores_benchmarks_and_names_a_bad_folder(retrieval_rows, model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    folder = write_benchmark(tmp_path / "wds_digits_captions", retrieval_rows, "retrieval")
    ckpt = tmp_path / "step_00000000.pt"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "tokenizer": tok.to_json(),
                "config": TrainConfig().model_dump(mode="json"), "step": 0}, ckpt)
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(ROOT / "trainer" / "evaluate.py"), "--checkpoint", str(ckpt), "--out", str(out),
           "--benchmarks-only"]
    proc = subprocess.run([*cmd, "--benchmark", str(folder)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["benchmarks"]["wds_digits_captions"]["retrieval"]
    assert result == evaluate_benchmark(model, tok, folder)["retrieval"]
    assert "wds_digits_captions: 31 images, 55 captions" in proc.stdout
    (folder / "test" / "1.tar").unlink()
    with pytest.raises(ValueError, match=r"missing 1\.tar"):
        read_benchmark(folder)
    proc = subprocess.run([*cmd, "--benchmark", str(folder)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "missing 1.tar" in proc.stderr


def test_what_clip_benchmark_would_refuse_is_refused_or_counted(retrieval_rows, model_and_tokenizer, tmp_path):
    """A clone without ``git lfs pull`` (pointer files for shards) is refused; a sample without its captions
    or image is counted; a sample with two images is read by its webp, clip_benchmark's first choice."""
    from trainer.wds_benchmark import samples

    model, tok = model_and_tokenizer
    folder = write_benchmark(tmp_path / "lfs", retrieval_rows, "retrieval")
    (folder / "test" / "0.tar").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(ValueError, match="git lfs pull"):
        evaluate_benchmark(model, tok, folder)

    rows = [*retrieval_rows[:5], (b"", "jpg", b"no picture at all")]
    folder = write_benchmark(tmp_path / "gaps", rows, "retrieval")
    with wds.TarWriter(str(folder / "test" / "1.tar")) as sink:  # one sample without captions, one with two images
        sink.write({"__key__": "nocaption", "jpg": rows[0][0]})
        sink.write({"__key__": "two", "jpg": rows[0][0], "webp": encoded(picture(7), "webp"), "txt": b"seven"})
    (folder / "test" / "nshards.txt").write_text("2")
    result = evaluate_benchmark(model, tok, folder)
    assert result["skipped_samples"] == {"undecodable": 1, "no_txt": 1} and result["retrieval"]["images"] == 6
    from collections import Counter

    two = [image for image, _, key in samples(read_benchmark(folder), Counter()) if key == "two"]
    assert two == [encoded(picture(7), "webp")]


def test_a_diverged_model_ranks_nothing():
    """NaN scores tie nothing and beat nothing: without a guard every row counted as a hit."""
    from trainer.evaluate import rank_credit

    nan = torch.full((3, 4), float("nan"))
    assert rank_credit(nan, nan[:, :1], 1).tolist() == [0.0, 0.0, 0.0]
    assert any_in_top_k(nan, torch.eye(3, 4, dtype=torch.bool), 1).tolist() == [0.0, 0.0, 0.0]
    no_positive = torch.zeros(1, 4, dtype=torch.bool)
    assert any_in_top_k(torch.rand(1, 4), no_positive, 10).tolist() == [0.0]


def test_class_names_are_read_as_clip_benchmark_reads_them(tmp_path):
    """Every line a class, blank ones included (a blank line dropped would shift every later name)."""
    rows = [(encoded(picture(i), "jpg"), "jpg", str(i % 3).encode()) for i in range(6)]
    folder = write_benchmark(tmp_path / "names", rows, "classification")
    (folder / "classnames.txt").write_text(" zero \n\ntwo\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    bench = read_benchmark(folder)
    assert bench.classnames == ["zero", "", "two"] and bench.templates == ["a {c}"]
    (folder / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(ValueError, match=r"needs classnames\.txt and zeroshot_classification_templates\.txt"):
        read_benchmark(folder)
