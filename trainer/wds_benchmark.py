"""Benchmarks in clip_benchmark's WebDataset layout, scored by this evaluation.

The ``clip-benchmark/wds_*`` datasets (ImageNet, Flickr30k, MS-COCO captions, …: a Hugging Face Hub clone of
one is a folder) are laid out as clip_benchmark's ``build_wds_dataset`` reads them::

    DIR/dataset_type.txt                           "retrieval", or classification when absent
    DIR/classnames.txt                             classification: one name a line, in label order
    DIR/zeroshot_classification_templates.txt      classification: one template a line, the name as {c}
    DIR/SPLIT/nshards.txt, DIR/SPLIT/0.tar …       samples: an image (webp, png, jpg or jpeg) and
                                                   cls (the label) or txt (the captions, one a line)

Classification is this evaluation's zero-shot (and the probe: even images of each class fit, odd ones test);
retrieval has several captions per image, as in the papers: image→text R@k counts an image when any of its
captions is among the top k, text→image R@k each caption whose image is. Ties are coin tosses
(:func:`any_in_top_k`); clip_benchmark credits them by order, and is equal otherwise
(tests/test_wds_benchmark.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds

from trainer.data import center_square, open_rgb, to_tensor
from trainer.evaluate import BATCH, Labelled, encode_texts, encode_views, linear_probe, rank_credit, zero_shot
from trainer.model import CLIP
from trainer.tokenizer import TextTokenizer

log = logging.getLogger("trainer.wds_benchmark")
IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's, in its order


@dataclass
class Benchmark:
    name: str
    kind: str  # "classification" or "retrieval"
    shards: list[Path]
    classnames: list[str]
    templates: list[str]


def read_benchmark(folder: str | Path, split: str = "test") -> Benchmark:
    """The layout of ``folder``; ``ValueError`` naming what is missing."""
    root = Path(folder)
    try:
        n = int((root / split / "nshards.txt").read_text().strip())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root}: not a clip_benchmark WebDataset folder ({split}/nshards.txt: {exc})") from None
    shards = [root / split / f"{i}.tar" for i in range(n)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ValueError(f"{root / split}: nshards.txt says {n} shards; missing {', '.join(missing[:5])}")
    kind_file = root / "dataset_type.txt"
    kind = kind_file.read_text().strip().lower() if kind_file.is_file() else "classification"
    if kind not in ("classification", "retrieval"):
        raise ValueError(f"{root}: dataset type {kind!r} (this evaluation scores classification and retrieval)")
    lines = {name: [x.strip() for x in (root / name).read_text().splitlines() if x.strip()]
             if (root / name).is_file() else [] for name in ("classnames.txt", "zeroshot_classification_templates.txt")}
    if kind == "classification" and not lines["classnames.txt"]:
        raise ValueError(f"{root}: a classification benchmark needs classnames.txt")
    return Benchmark(root.name, kind, shards, lines["classnames.txt"], lines["zeroshot_classification_templates.txt"])


def samples(bench: Benchmark) -> Iterator[tuple[bytes, bytes]]:
    """(image bytes, label or captions bytes) of each sample; a damaged sample is logged and skipped."""
    def warn(exn: Exception) -> bool:
        log.warning("%s: skipped %s", bench.name, str(exn)[:300])
        return True

    field = "txt" if bench.kind == "retrieval" else "cls"
    for sample in wds.tarfile_to_samples(handler=warn)(iter([{"url": str(s)} for s in bench.shards])):
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or field not in sample:
            log.warning("%s: sample %s has no image or no %s", bench.name, sample.get("__key__"), field)
            continue
        yield sample[key], sample[field]


@torch.no_grad()
def encode_benchmark(model: CLIP, bench: Benchmark, device, batch_size: int) -> tuple[torch.Tensor, list, int]:
    """Image features, each sample's label or captions, and the samples skipped (undecodable)."""
    size = model.cfg.vision_cfg.image_size
    feats, views, targets, skipped = [], [], [], 0
    for image, target in samples(bench):
        try:
            views.append(to_tensor(center_square(open_rgb(image), size)))
        except Exception as exc:  # any decoder error of one image skips that image
            skipped += 1
            log.warning("%s: undecodable image skipped: %s", bench.name, exc)
            continue
        text = target.decode("utf-8", "replace")
        targets.append(text.splitlines() if bench.kind == "retrieval" else int(text.strip()))
        if len(views) == batch_size:
            feats.append(encode_views(model, views, device))
            views = []
    if views:
        feats.append(encode_views(model, views, device))
    return (torch.cat(feats) if feats else torch.empty(0, model.cfg.embed_dim)), targets, skipped


def any_in_top_k(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the chance that one of its positives is among the top ``k``, the candidates that tie with the
    best positive ordered at random: with ``b`` candidates above it and ``n`` negatives and ``p`` positives
    tied with it, 1 − C(n, m) / C(n + p, m) for the ``m = k − b`` places left (rank_credit's rule for p = 1)."""
    out = torch.zeros(scores.shape[0])
    for i, (row, pos) in enumerate(zip(scores, positive, strict=True)):
        best = row[pos].max()
        above = int((row > best).sum())
        tied_pos, tied_neg = int((row[pos] == best).sum()), int((row[~pos] == best).sum())
        m = k - above
        if m > tied_neg:
            out[i] = 1.0
        elif m > 0:
            out[i] = 1 - math.comb(tied_neg, m) / math.comb(tied_neg + tied_pos, m)
    return out


def retrieval_scores(image_features: torch.Tensor, text_features: torch.Tensor, text_image: list[int]) -> dict:
    """R@1/5/10 both ways, several captions per image (``text_image``: each caption's image)."""
    sim = image_features @ text_features.T
    owner = torch.tensor(text_image)
    positive = owner[None, :] == torch.arange(len(image_features))[:, None]
    out: dict[str, float | int] = {"images": len(image_features), "texts": len(text_image)}
    for k in (1, 5, 10):
        out[f"image_to_text_R@{k}"] = any_in_top_k(sim, positive, k).mean().item()
        t2i = sim.T
        out[f"text_to_image_R@{k}"] = rank_credit(t2i, t2i.gather(1, owner[:, None]), k).mean().item()
    return out


def evaluate_benchmark(model: CLIP, tokenizer: TextTokenizer, folder: str | Path, split: str = "test",
                       device="cpu", batch_size: int = BATCH, probe: bool = False) -> dict:
    """One benchmark: zero-shot (and the probe when asked) or retrieval."""
    bench = read_benchmark(folder, split)
    model.eval()
    features, targets, skipped = encode_benchmark(model, bench, device, batch_size)
    if bench.kind == "retrieval":
        texts = [c for captions in targets for c in captions]
        owner = [i for i, captions in enumerate(targets) for _ in captions]
        result = retrieval_scores(features, encode_texts(model, tokenizer, texts, device, batch_size), owner)
        return {"retrieval": result, **({"skipped_images": skipped} if skipped else {})}
    classes = [str(i) for i in range(len(bench.classnames))]
    bad = sorted({t for t in targets if not 0 <= t < len(classes)})
    if bad:
        raise ValueError(f"{bench.name}: labels {bad[:5]} outside classnames.txt's {len(classes)} classes")
    meta = {"classnames": dict(zip(classes, bench.classnames, strict=True)),
            **({"templates": bench.templates} if bench.templates else {})}
    data = Labelled(features, targets, classes, meta, skipped)
    out = {"zeroshot": zero_shot(model, tokenizer, None, device, _loaded=data, batch_size=batch_size)}
    if probe:
        out["linear_probe"] = linear_probe(model, None, device, _loaded=data, batch_size=batch_size)
    return out
