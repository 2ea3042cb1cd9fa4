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
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.data import center_square, open_rgb, shard_samples, to_tensor
from trainer.evaluate import BATCH, Labelled, encode_stream, encode_texts, linear_probe, zero_shot
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
    """The layout of ``folder``, read as clip_benchmark reads it; ``ValueError`` naming what is missing."""
    root = Path(folder).resolve()
    try:
        n = int((root / split / "nshards.txt").read_text().strip())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root}: not a clip_benchmark WebDataset folder ({split}/nshards.txt: {exc})") from None
    shards = [root / split / f"{i}.tar" for i in range(n)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ValueError(f"{root / split}: nshards.txt says {n} shards; missing {', '.join(missing[:5])}")
    not_tar = [s.name for s in shards if not tarfile.is_tarfile(s)]
    if not_tar:  # a clone without `git lfs pull` holds pointer files: scoring the rest would be another benchmark
        raise ValueError(f"{root / split}: {', '.join(not_tar[:5])} not a tar file (a Git LFS pointer? "
                         "run `git lfs pull` in the clone)")
    kind_file = root / "dataset_type.txt"
    kind = kind_file.read_text().strip().lower() if kind_file.is_file() else "classification"
    if kind == "multilabel":
        raise ValueError(f"{root}: a multilabel benchmark (this evaluation scores classification and retrieval)")
    kind = "retrieval" if kind == "retrieval" else "classification"  # as clip_benchmark: any other is
    names, templates = (_lines(root / f) for f in ("classnames.txt", "zeroshot_classification_templates.txt"))
    if kind == "classification" and not (names and templates):
        raise ValueError(f"{root}: a classification benchmark needs classnames.txt and "
                         "zeroshot_classification_templates.txt")
    return Benchmark(root.name, kind, shards, names, templates)


def _lines(path: Path) -> list[str]:
    """Each line stripped, none dropped: a blank line in classnames.txt is a class, as clip_benchmark reads it."""
    return [x.strip() for x in path.read_text().splitlines()] if path.is_file() else []


def samples(bench: Benchmark, skipped: Counter) -> Iterator[tuple[bytes, bytes, str]]:
    """(image bytes, label or captions bytes, key) of each sample; a damaged sample or one without an image or
    its field is logged and counted in ``skipped``."""
    def warn(exn: Exception) -> bool:
        skipped["damaged"] += 1
        log.warning("%s: skipped %s", bench.name, str(exn)[:300])
        return True

    field = "txt" if bench.kind == "retrieval" else "cls"
    for sample in shard_samples(({"url": str(s)} for s in bench.shards), warn):
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or field not in sample:
            skipped[f"no_{field}" if key else "no_image"] += 1
            log.warning("%s: sample %s has no image or no %s", bench.name, sample.get("__key__"), field)
            continue
        yield sample[key], sample[field], sample.get("__key__", "")


@torch.no_grad()
def encode_benchmark(model: CLIP, bench: Benchmark, device, batch_size: int) -> tuple[torch.Tensor, list, Counter]:
    """Image features, each sample's label or captions, and the samples skipped by reason."""
    size = model.cfg.vision_cfg.image_size
    targets: list = []
    skipped: Counter = Counter()

    def views() -> Iterator[torch.Tensor]:
        for image, target, key in samples(bench, skipped):
            text = target.decode("utf-8", "replace")
            if bench.kind == "classification" and not text.strip().lstrip("-").isdigit():
                raise ValueError(f"{bench.name}: sample {key}: cls {text[:20]!r} is not a class number")
            try:
                view = to_tensor(center_square(open_rgb(image), size))
            except Exception as exc:  # any decoder error of one image skips that image
                skipped["undecodable"] += 1
                log.warning("%s: sample %s: undecodable image skipped: %s", bench.name, key, exc)
                continue
            targets.append(text.splitlines() if bench.kind == "retrieval" else int(text.strip()))
            yield view

    features = encode_stream(model, views(), device, batch_size)
    if features is None:
        raise ValueError(f"{bench.name}: no readable sample ({sum(skipped.values())} skipped: {dict(skipped)})")
    return features, targets, skipped


def any_in_top_k(scores: torch.Tensor, positive: torch.Tensor, k: int | tuple[int, ...]) -> torch.Tensor:
    """Per row, the chance that one of its positives is among the top ``k``, the candidates that tie with the
    best positive ordered at random: with ``b`` candidates above it and ``n`` negatives and ``p`` positives
    tied with it, 1 − C(n, m) / C(n + p, m) for the ``m = k − b`` places left (rank_credit's rule for p = 1).
    A row without a positive, or with a NaN (a diverged model), gets nothing. With several ``k``, one column
    each (the ranks are counted once)."""
    ks = (k,) if isinstance(k, int) else k
    best = scores.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)
    above = (scores > best).sum(1)
    tied = scores == best
    tied_pos, tied_neg = (tied & positive).sum(1), (tied & ~positive).sum(1)
    void = ~positive.any(1) | ~torch.isfinite(scores).all(1)
    columns = []
    for kk in ks:
        places = kk - above
        out = (places > tied_neg).float()
        for i in ((places > 0) & (places <= tied_neg)).nonzero().flatten().tolist():  # the rare partial ties
            m, n, p = int(places[i]), int(tied_neg[i]), int(tied_pos[i])
            out[i] = 1 - math.comb(n, m) / math.comb(n + p, m)
        columns.append(out.masked_fill(void, 0.0))
    return columns[0] if isinstance(k, int) else torch.stack(columns, 1)


KS = (1, 5, 10)


def retrieval_scores(image_features: torch.Tensor, text_features: torch.Tensor, text_image: list[int]) -> dict:
    """R@1/5/10 both ways, several captions per image (``text_image``: each caption's image)."""
    sim = image_features @ text_features.T
    owner = torch.tensor(text_image, dtype=torch.long)
    positive = owner[None, :] == torch.arange(len(image_features))[:, None]
    i2t = any_in_top_k(sim, positive, KS).mean(0)
    del positive
    t2i = any_in_top_k(sim.T, owner[:, None] == torch.arange(len(image_features))[None, :], KS).mean(0)
    out: dict[str, float | int] = {"images": len(image_features), "texts": len(text_image)}
    for j, k in enumerate(KS):
        out[f"image_to_text_R@{k}"], out[f"text_to_image_R@{k}"] = i2t[j].item(), t2i[j].item()
    return out


def evaluate_benchmark(model: CLIP, tokenizer: TextTokenizer, folder: str | Path, split: str = "test",
                       device="cpu", batch_size: int = BATCH, probe: bool = False) -> dict:
    """One benchmark: zero-shot (and the probe when asked) or retrieval; ``skipped_samples`` by reason."""
    bench = read_benchmark(folder, split)
    model.eval()
    features, targets, skipped = encode_benchmark(model, bench, device, batch_size)
    counted = {"skipped_samples": dict(skipped)} if skipped else {}
    if bench.kind == "retrieval":
        texts = [c for captions in targets for c in captions]
        owner = [i for i, captions in enumerate(targets) for _ in captions]
        if not texts:
            raise ValueError(f"{bench.name}: a retrieval benchmark without a caption")
        result = retrieval_scores(features, encode_texts(model, tokenizer, texts, device, batch_size), owner)
        result["images_without_captions"] = sum(not captions for captions in targets)  # each a miss, as there
        return {"retrieval": result, **counted}
    bad = sorted({t for t in targets if not 0 <= t < len(bench.classnames)})
    if bad:
        raise ValueError(f"{bench.name}: labels {bad[:5]} outside classnames.txt's {len(bench.classnames)} classes")
    unique = len(set(bench.classnames)) == len(bench.classnames)
    classes = bench.classnames if unique else [f"{i}: {n}" for i, n in enumerate(bench.classnames)]
    meta = {"classnames": dict(zip(classes, bench.classnames, strict=True)), "templates": bench.templates}
    data = Labelled(features, targets, classes, meta, skipped["undecodable"])
    out = {"zeroshot": zero_shot(model, tokenizer, None, device, _loaded=data, batch_size=batch_size), **counted}
    if probe:
        out["linear_probe"] = linear_probe(model, None, device, _loaded=data, batch_size=batch_size)
    return out
