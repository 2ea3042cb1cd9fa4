"""Evaluate a CLIP checkpoint: zero-shot classification, image↔text retrieval, linear probe.

    python trainer/evaluate.py --checkpoint runs/tiny-cpu/checkpoints/latest \\
        --zeroshot demo-out/eval/digits --data demo-out/build

- zero-shot: each class is the mean of its prompt embeddings (class names × templates, from the
  folder's ``zeroshot.json`` when there), an image gets the most similar class;
- retrieval: R@1/5/10 both ways over the held-out pairs (the shards or the share of samples training left out);
- linear probe: logistic regression on frozen image features, half of each class to fit, half to test;
- per class: zero-shot accuracy of each class, and, given each class's number of pairs in the training pool
  (``eval.class_counts``), the mean per-class accuracy of the most frequent third (head) and the rarest third (tail).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from trainer.config import TrainConfig, saved_config
from trainer.data import (
    DataError,
    Split,
    center_square,
    find_shards,
    image_folder,
    iter_pairs,
    open_rgb,
    shards_digest,
    split_data,
    to_tensor,
)
from trainer.model import CLIP, ModelConfig
from trainer.openclip_weights import is_openclip_folder, load_openclip_folder
from trainer.tokenizer import TextTokenizer

log = logging.getLogger("trainer.evaluate")
DEFAULT_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}"]
BATCH = 256  # images or texts per forward pass unless the run's eval.batch_size says otherwise


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    bpe_vocab: str | Path | None = None) -> tuple[CLIP, TextTokenizer, dict]:
    """Model (eval mode), tokenizer and saved run config of a checkpoint file, a run folder or ``…/latest``; or of
    an open_clip model folder (an export, a Hugging Face Hub download: CLIP's vocabulary from the folder or
    ``bpe_vocab``), whose run config is the default one, so that its retrieval scores the split a run with the
    default data settings holds out."""
    if is_openclip_folder(path):
        model, tokenizer = load_openclip_folder(path, bpe_vocab)
        run = exported_run(path)
        config = run.get("run_config") or TrainConfig().model_dump(mode="json")
        return model.to(device).eval(), tokenizer, {"config": config, "step": run.get("step"),
                                                    "run_known": "run_config" in run}
    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path)
    model = CLIP(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), TextTokenizer.from_json(ckpt["tokenizer"]), ckpt


def exported_run(folder: str | Path) -> dict:
    """What an export of this trainer says of its run (``witbuild`` in open_clip_config.json: the checkpoint, its
    step and the run's config, whose holdout evaluation scores); ``{}`` for any other open_clip folder."""
    from trainer.openclip_weights import CONFIG_FILE

    raw = json.loads((Path(folder) / CONFIG_FILE).read_text())
    run = raw.get("witbuild") if isinstance(raw, dict) else None
    return run if isinstance(run, dict) else {}


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "latest" if (p / "latest.txt").exists() else p / "checkpoints" / "latest"
    if p.name == "latest":
        pointer = p.parent / "latest.txt"
        if not pointer.is_file():
            raise FileNotFoundError(f"no checkpoint yet in {p.parent}")
        p = p.parent / pointer.read_text().strip()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


MODEL_KEYS = ("model", "model_config", "tokenizer")  # what a checkpoint needs to be evaluated or exported


def read_checkpoint(path: str | Path, keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """A checkpoint file loaded weights-only onto the CPU, holding ``keys``; a one-line ``ValueError`` naming the
    file when it is anything else (damaged, text, another program's pickle): the unpickler reports those as any
    of several exception types, with messages of many lines."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever the unpickler trips on, the file is no checkpoint
        raise ValueError(f"{path}: not a readable checkpoint, damaged or not written by trainer/train.py "
                         f"({_load_problem(exc)})") from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, dict) else list(keys)
    if missing:
        raise ValueError(f"{path}: not a checkpoint of trainer/train.py (it lacks {', '.join(missing)})")
    return ckpt


def _load_problem(exc: Exception) -> str:
    """What ``torch.load`` found wrong, in a few words: the first sentence of its own message, without the advice
    around it (to load with ``weights_only=False``, which would run the file's code)."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first.split('. ')[0]}" if first else type(exc).__name__


@torch.no_grad()
def encode_images(model: CLIP, images: list[Image.Image], size: int, device, batch: int = BATCH) -> torch.Tensor:
    feats = [encode_views(model, [to_tensor(center_square(im, size)) for im in images[i: i + batch]], device)
             for i in range(0, len(images), batch)]
    return torch.cat(feats) if feats else torch.empty(0, model.cfg.embed_dim)


@torch.no_grad()
def encode_stream(model: CLIP, views: Iterable[torch.Tensor], device, batch_size: int) -> torch.Tensor | None:
    """Image features of ``views`` encoded as they come, ``batch_size`` at a time, so that only features are
    held; None when there were none."""
    feats, batch = [], []
    for view in views:
        batch.append(view)
        if len(batch) == batch_size:
            feats.append(encode_views(model, batch, device))
            batch = []
    if batch:
        feats.append(encode_views(model, batch, device))
    return torch.cat(feats) if feats else None


@torch.no_grad()
def encode_views(model: CLIP, views: list[torch.Tensor], device) -> torch.Tensor:
    with _autocast(device):
        return model.encode_image(torch.stack(views).to(device)).float().cpu()


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer: TextTokenizer, texts: list[str], device, batch: int = BATCH) -> torch.Tensor:
    feats = []
    for i in range(0, len(texts), batch):
        with _autocast(device):
            feats.append(model.encode_text(tokenizer(texts[i: i + batch]).to(device)).float().cpu())
    return torch.cat(feats) if feats else torch.empty(0, model.cfg.embed_dim)


def _autocast(device):
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=kind == "cuda")


@dataclass
class Labelled:
    """A labelled folder as zero-shot and the probe read it: each image's features (encoded once, for both),
    its label, the classes, the folder's ``zeroshot.json`` and how many images could not be read."""

    features: torch.Tensor
    labels: list[int]
    classes: list[str]
    meta: dict
    skipped: int = 0


@torch.no_grad()
def load_labelled(model: CLIP, folder: str | Path, device="cpu", batch_size: int = BATCH) -> Labelled:
    """Stream the folder's images through the model a batch at a time: an ImageNet-size folder never sits in
    memory decoded (50,000 photos would be ~28 GB), only its features do. An unreadable image is skipped,
    counted and logged, not the end of the evaluation."""
    paths, classes, all_labels = image_folder(folder)
    meta = read_zeroshot_meta(folder)
    size = model.cfg.vision_cfg.image_size
    labels: list[int] = []
    skipped = 0

    def views() -> Iterator[torch.Tensor]:
        nonlocal skipped
        for path, label in zip(paths, all_labels, strict=True):
            try:
                with Image.open(path) as im:
                    view = to_tensor(center_square(im.convert("RGB"), size))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                skipped += 1
                log.warning("labelled folder: skipped %s: %s", path, exc)
                continue
            labels.append(label)
            yield view

    features = encode_stream(model, views(), device, batch_size)
    if features is None:
        raise ValueError(f"{folder}: no readable image in its class folders ({skipped} skipped)")
    return Labelled(features, labels, classes, meta, skipped)


def read_zeroshot_meta(folder: str | Path) -> dict:
    """The labelled folder's ``zeroshot.json`` (``classnames``, ``templates``), ``{}`` when it has none; a
    ``ValueError`` naming the file when it is no JSON object of those."""
    path = Path(folder) / "zeroshot.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON object ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: must be a JSON object with classnames and/or templates")
    if not isinstance(meta.get("classnames", []), dict | list):
        raise ValueError(f"{path}: classnames must be a list of names or an object {{folder: name}}")
    templates = meta.get("templates", [])
    if not (isinstance(templates, list) and all(isinstance(t, str) for t in templates)):
        raise ValueError(f"{path}: templates must be a list of strings")
    return meta


def check_labelled(folder: str | Path, class_counts: dict[str, int] | None = None) -> None:
    """Everything zero-shot reads of a labelled folder besides the pictures, checked before any work: the class
    folders and their images, ``zeroshot.json``'s names and templates, and that ``class_counts`` covers every class;
    otherwise each is found only after a training run or an encoding pass."""
    _, classes, _ = image_folder(folder)
    meta = read_zeroshot_meta(folder)
    class_names(meta.get("classnames") or {}, classes)
    for template in meta.get("templates") or DEFAULT_TEMPLATES:
        prompt(template, "name")
    if class_counts is not None:
        check_counts_cover(classes, class_counts)


def zero_shot(model: CLIP, tokenizer: TextTokenizer, folder: str | Path, device="cpu",
              templates: list[str] | None = None, classnames: dict[str, str] | None = None,
              _loaded: Labelled | None = None, batch_size: int = BATCH) -> dict:
    data = _loaded or load_labelled(model, folder, device, batch_size)
    labels, classes, meta = data.labels, data.classes, data.meta
    templates = templates or meta.get("templates") or DEFAULT_TEMPLATES
    names = class_names(classnames or meta.get("classnames") or {}, classes)
    weights = []
    for c in classes:
        prompts = [prompt(t, names[c]) for t in templates]
        emb = encode_texts(model, tokenizer, prompts, device, batch_size)
        weights.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
    class_emb = torch.stack(weights)
    scores = data.features @ class_emb.T
    y = torch.tensor(labels)
    true = scores.gather(1, y[:, None])
    hit = rank_credit(scores, true, 1)
    per_class = per_class_accuracy(hit.tolist(), labels, classes)
    seen = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    top1 = hit.double().mean().item()  # float64: (k+1)/n − k/n is the same for every k, no rounding noise
    out = {"top1": top1, "images": len(labels), "classes": len(classes), "chance": 1 / len(classes),
           "templates": len(templates), "mean_per_class": float(np.mean(seen)), "per_class": per_class,
           **({"skipped_images": data.skipped} if data.skipped else {})}
    if len(classes) > 5:
        out["top5"] = rank_credit(scores, true, 5).double().mean().item()
    return out


def class_names(given: dict[str, str] | list[str], classes: list[str]) -> dict[str, str]:
    """Each class folder's name in the prompts: ``{folder: name}`` (folders not named keep their own name), or a
    list in the folders' sorted order, as clip_benchmark and open_clip list ImageNet's classes."""
    if isinstance(given, list):
        if len(given) != len(classes):
            raise ValueError(f"zeroshot.json lists {len(given)} class names for {len(classes)} class folders")
        return dict(zip(classes, given, strict=True))
    return {c: given.get(c, c) for c in classes}


def prompt(template: str, name: str) -> str:
    """A template with ``{}`` (CLIP's notebooks) or ``{c}`` (clip_benchmark's) filled with the class name."""
    try:
        return template.format(name, c=name)
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"zero-shot template {template!r}: write the class name as {{}} or {{c}} ({exc})") from None


def rank_credit(scores: torch.Tensor, true: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``scores``, the chance that the true candidate (its score in ``true``, one column) is among the
    top ``k``, its place among the candidates it ties with drawn at random: a tie is a coin toss, not a hit for
    whichever candidate comes first (a collapsed model ties everything; a caption that occurs twice ties its
    texts exactly, where clip_benchmark's recall credits the first and so depends on the samples' order)."""
    better = (scores > true).sum(1)
    ties = (scores == true).sum(1) - 1
    credit = ((k - better) / (ties + 1).clamp(min=1)).clamp(0, 1).float()
    return credit.masked_fill(~torch.isfinite(scores).all(1), 0.0)  # a diverged model (NaN) ranks nothing


def per_class_accuracy(hits: list[float], labels: list[int], classes: list[str]) -> dict[str, dict]:
    """``{class: {"images", "correct", "accuracy"}}`` (a tie counts its share of a hit): a mean over all images
    hides what the rare classes get."""
    out = {c: {"images": 0, "correct": 0.0} for c in classes}
    for hit, label in zip(hits, labels, strict=True):
        out[classes[label]]["images"] += 1
        out[classes[label]]["correct"] += float(hit)
    for v in out.values():
        v["accuracy"] = v["correct"] / v["images"] if v["images"] else None
    return out


def head_tail(per_class: dict[str, dict], counts: dict[str, int]) -> dict:
    """Mean per-class accuracy over the most frequent third of the classes (by pairs in the training pool) and
    the rarest third; ties in count are ordered by class name, so the split is the same for every run."""
    check_counts_cover(per_class, counts)
    order = sorted(per_class, key=lambda c: (-counts[c], c))
    third = max(1, len(order) // 3)
    out: dict = {}
    for name, group in (("head", order[:third]), ("tail", order[-third:])):
        acc = [per_class[c]["accuracy"] for c in group if per_class[c]["accuracy"] is not None]
        out[name] = {"top1": float(np.mean(acc)) if acc else None, "classes": group,
                     "pairs": [int(counts[c]) for c in group]}
    return out


def check_counts_cover(classes: Iterable[str], counts: dict[str, int]) -> None:
    """Every evaluated class has a count: head and tail are thirds of all of them, not of those the file names."""
    missing = sorted(set(classes) - set(counts))
    if missing:
        raise ValueError(f"class counts lack {len(missing)} evaluated classes: {', '.join(missing[:5])}")


def read_class_counts(path: str | Path) -> dict[str, int]:
    """A JSON object ``{class: pairs in the training pool}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON object of class counts ({exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, int) and v >= 0 for v in raw.values()):
        raise ValueError(f"{path}: class counts must be a JSON object of non-negative integers")
    return {str(k): int(v) for k, v in raw.items()}


PROBE_C = tuple(10.0 ** k for k in range(-2, 5))  # inverse regularisation strengths the probe chooses among
PROBE_FOLDS = 3


def linear_probe(model: CLIP, folder: str | Path, device="cpu", _loaded: Labelled | None = None,
                 batch_size: int = BATCH) -> dict:
    """Logistic regression on frozen features: even-numbered images of each class fit, odd ones test.

    The regularisation is chosen as CLIP's protocol does, on the fit half alone: each of ``PROBE_C`` by
    stratified cross-validation, the best mean accuracy winning (the smaller C on a tie). One fixed C would
    measure the regulariser as much as the features: unit-norm features give small logits, and C = 1 held a
    trained demo model at 44% where the chosen C gives 66%."""
    data = _loaded or load_labelled(model, folder, device, batch_size)
    labels, classes, feats = data.labels, data.classes, data.features.numpy()
    y = np.array(labels)
    seen: dict[int, int] = {}
    fit = np.zeros(len(y), bool)
    for i, label in enumerate(labels):
        fit[i] = seen.get(label, 0) % 2 == 0
        seen[label] = seen.get(label, 0) + 1
    c, how = _probe_c(feats[fit], y[fit], classes)
    clf = _probe(c).fit(feats[fit], y[fit])
    return {"top1": float((clf.predict(feats[~fit]) == y[~fit]).mean()), "fit": int(fit.sum()),
            "test": int((~fit).sum()), "chance": 1 / len(classes), "C": c, **how}


def _probe(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, C=c)


def _probe_folds(y: np.ndarray) -> int:
    """The most folds, up to ``PROBE_FOLDS``, that at least two classes have an image in each of (stratified
    folds need as many images of a class as folds); 0 when no two classes have two images."""
    counts = np.unique(y, return_counts=True)[1] if len(y) else np.zeros(0, int)
    return next((f for f in range(PROBE_FOLDS, 1, -1) if (counts >= f).sum() >= 2), 0)


def _probe_c(x: np.ndarray, y: np.ndarray, classes: list[str] | None = None) -> tuple[float, dict]:
    """The C of ``PROBE_C`` with the best stratified cross-validated accuracy on (x, y), and what the result should
    record of how it was chosen. Classes with fewer images than folds are left out of the cross-validation only
    (logged and listed as ``C_rare_classes``), so that one rare class does not decide the C of all the others; with
    no two classes to cross-validate, C = 1 (``C_fallback`` says why)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = _probe_folds(y)
    if folds == 0:
        log.warning("linear probe: no two classes have 2 images in the fit half to cross-validate C; C = 1")
        return 1.0, {"C_fallback": "no two classes with 2 images in the fit half to cross-validate; C = 1"}
    labels, counts = np.unique(y, return_counts=True)
    rare = labels[counts < folds]
    how: dict[str, Any] = {}
    if len(rare):
        names = [classes[i] if classes else str(i) for i in rare.tolist()]
        log.warning("linear probe: C cross-validated without %d class(es) with fewer than %d images in the fit "
                    "half: %s", len(names), folds, ", ".join(names))
        how["C_rare_classes"] = names
    keep = ~np.isin(y, rare)
    splits = StratifiedKFold(n_splits=folds)  # unshuffled: the same folds every run
    scores = [float(cross_val_score(_probe(c), x[keep], y[keep], cv=splits).mean()) for c in PROBE_C]
    return PROBE_C[int(np.argmax(scores))], how  # the first best: the smaller C


def retrieval(model: CLIP, tokenizer: TextTokenizer, shards: list[Path], device="cpu", max_pairs: int = 5000,
              caption_key: str = "txt", holdout_fraction: float = 0.0, batch_size: int = BATCH) -> dict:
    """Recall@1/5/10 image→text and text→image over the pairs of ``shards`` (each image's own caption is the hit);
    with ``holdout_fraction`` over the samples training held out by key."""
    images, texts = [], []
    skipped = 0
    for data, text, _ in iter_pairs(shards, caption_key, holdout_fraction):
        try:
            size = model.cfg.vision_cfg.image_size  # decoded in full, as open_clip does; kept at the model's size
            images.append(center_square(open_rgb(data), size))
        except Exception as exc:
            skipped += 1
            log.warning("retrieval: skipped an undecodable image: %s", exc)
            continue
        texts.append(text)
        if len(texts) >= max_pairs:
            break
    counted = {"skipped_images": skipped} if skipped else {}  # as zero-shot counts its own
    if len(texts) < 2:
        return {"pairs": len(texts), **counted}
    img = encode_images(model, images, model.cfg.vision_cfg.image_size, device, batch_size)
    txt = encode_texts(model, tokenizer, texts, device, batch_size)
    sim = img @ txt.T
    truth = torch.arange(len(texts))
    out: dict[str, float | int] = {"pairs": len(texts), **counted}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        true = s[truth, truth][:, None]
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = rank_credit(s, true, k).double().mean().item()
    return out


def evaluate(model: CLIP, tokenizer: TextTokenizer, device="cpu", zeroshot_dir: str | None = None,
             heldout: list[Path] | None = None, do_retrieval: bool = True, do_probe: bool = True,
             max_pairs: int = 5000, caption_key: str = "txt", holdout_fraction: float = 0.0,
             batch_size: int = BATCH, class_counts: dict[str, int] | None = None) -> dict:
    """Zero-shot and the linear probe on ``zeroshot_dir``, retrieval on ``heldout`` (its held-out share of samples
    when ``holdout_fraction``); ``batch_size`` images or texts per forward pass; with ``class_counts`` also the
    zero-shot accuracy of the head and tail classes."""
    model.eval()
    results: dict[str, dict] = {}
    if zeroshot_dir:
        loaded = load_labelled(model, zeroshot_dir, device, batch_size)
        results["zeroshot"] = zero_shot(model, tokenizer, zeroshot_dir, device, _loaded=loaded, batch_size=batch_size)
        if class_counts is not None:
            results["zeroshot"].update(head_tail(results["zeroshot"]["per_class"], class_counts))
        if do_probe:
            results["linear_probe"] = linear_probe(model, zeroshot_dir, device, _loaded=loaded, batch_size=batch_size)
    if do_retrieval and heldout:
        results["retrieval"] = retrieval(model, tokenizer, heldout, device, max_pairs, caption_key, holdout_fraction,
                                         batch_size)
    return results


def format_results(results: dict) -> str:
    lines = []
    if "zeroshot" in results:
        z = results["zeroshot"]
        lines.append(f"zero-shot top-1 {z['top1']:.1%} on {z['images']} images, {z['classes']} classes "
                     f"(chance {z['chance']:.1%})" + (f", top-5 {z['top5']:.1%}" if "top5" in z else ""))
        if z.get("head", {}).get("top1") is not None and z.get("tail", {}).get("top1") is not None:
            lines.append(f"zero-shot per-class mean: head third {z['head']['top1']:.1%}, "
                         f"tail third {z['tail']['top1']:.1%}")
    if "linear_probe" in results:
        p = results["linear_probe"]
        lines.append(f"linear probe top-1 {p['top1']:.1%} (fit {p['fit']}, test {p['test']})")
    if "retrieval" in results and results["retrieval"].get("pairs", 0) >= 2:
        r = results["retrieval"]
        side = "pairs that may include trained ones" if r.get("includes_trained_pairs") else "held-out pairs"
        lines.append(f"retrieval on {r['pairs']} {side}: image→text R@1/5/10 "
                     f"{r['image_to_text_R@1']:.1%}/{r['image_to_text_R@5']:.1%}/{r['image_to_text_R@10']:.1%}, "
                     f"text→image {r['text_to_image_R@1']:.1%}/{r['text_to_image_R@5']:.1%}/"
                     f"{r['text_to_image_R@10']:.1%}")
    elif "retrieval" in results:  # asked for, but the data gave too few pairs: said, not left out without a word
        lines.append(f"retrieval not scored: {results['retrieval'].get('pairs', 0)} usable pair(s) in the scored "
                     "samples, at least 2 needed")
    for name, b in results.get("benchmarks", {}).items():
        skipped = sum(b.get("skipped_samples", {}).values())
        lines.append(f"{name}: {skipped} samples skipped ({b['skipped_samples']})" if skipped else "")
        if "zeroshot" in b:
            lines.append(f"{name}: zero-shot top-1 {b['zeroshot']['top1']:.1%} on {b['zeroshot']['images']} images")
        else:
            r = b["retrieval"]
            lines.append(f"{name}: {r['images']} images, {r['texts']} captions: image→text R@1/5/10 "
                         f"{r['image_to_text_R@1']:.1%}/{r['image_to_text_R@5']:.1%}/{r['image_to_text_R@10']:.1%}"
                         f", text→image {r['text_to_image_R@1']:.1%}/{r['text_to_image_R@5']:.1%}/"
                         f"{r['text_to_image_R@10']:.1%}")
    return "\n".join(line for line in lines if line)


def may_score_trained(run: tuple[int, float], scored: tuple[int, float]) -> bool:
    """Whether scoring the held-out side of ``scored`` (holdout_shards, holdout_fraction) may score samples a run
    that held out ``run`` trained on: it does not when its side lies within the run's (fewer of the same last
    shards, or a smaller share by the same key hash), and it does when the run, or ``scored``, held out nothing."""
    run_shards, run_fraction = run
    shards, fraction = scored
    if shards:
        return not (run_shards and shards <= run_shards)
    if fraction:
        return not (not run_shards and run_fraction and fraction <= run_fraction)
    return True  # nothing held out: every sample is scored


def heldout_of(data: str, saved: dict, holdout_shards: int | None = None,
               holdout_fraction: float | None = None, run_known: bool = True,
               trained_data: dict | None = None) -> tuple[Split, bool]:
    """The held-out side of a build for a run's saved config (or the holdout given instead), and whether it may
    hold samples the run trained on (then the log warns); a run that held out nothing is scored on all of the
    data, which it trained on. ``trained_data``: the training shards the checkpoint records (``data_identity``)."""
    cfg = saved_config(saved).data
    run = (cfg.holdout_shards, cfg.holdout_fraction)
    scored = run if holdout_shards is None and holdout_fraction is None else (holdout_shards or 0,
                                                                            holdout_fraction or 0.0)
    shards = find_shards(data)
    split = split_data(shards, *scored)
    trained = run_known and may_score_trained(run, scored)  # a model from elsewhere: what it saw is unknown
    if trained:
        log.warning("retrieval scores pairs the run may have trained on (held out by the run: shards=%d "
                    "fraction=%g; scored: shards=%d fraction=%g), so its recall is no held-out figure",
                    *run, *scored)
    elif run_known and trained_data and (other := other_training_data(trained_data, shards, run)):
        log.warning("--data %s is not the data the run trained on (%s): the pairs it holds out may be pairs the run "
                    "trained on, so retrieval's recall is no held-out figure", data, other)
        trained = True
    return (split if split.heldout else Split(shards, shards)), trained


def other_training_data(recorded: dict, shards: list[Path], run: tuple[int, float]) -> str | None:
    """How the training side of ``shards`` under the run's holdout differs from the shards the checkpoint records
    (their number, else their names or sizes); None when it is the same."""
    try:
        train = split_data(shards, *run).train
    except DataError as exc:  # fewer shards than the run held out: not its data
        return str(exc)
    if recorded.get("shards") not in (None, len(train)):
        return f"{len(train)} training shards, the run trained on {recorded['shards']}"
    if recorded.get("shards_digest") not in (None, shards_digest(train)):
        return "its training shards' names or sizes differ from those the run trained on"
    return None


def check_args(args: argparse.Namespace) -> None:
    """Values argparse cannot refuse, refused before the model is loaded: each would otherwise be a traceback,
    an evaluation of something else than asked, or a result lost after the work (``--out`` unwritable)."""
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.holdout_shards is not None and args.holdout_shards < 0:
        raise ValueError(f"--holdout-shards must be 0 or more, got {args.holdout_shards}")
    if args.holdout_shards and args.holdout_fraction:
        raise ValueError("--holdout-shards and --holdout-fraction both choose the held-out pairs: give one")
    if not args.data and (args.holdout_shards is not None or args.holdout_fraction is not None):
        raise ValueError("--holdout-shards and --holdout-fraction choose pairs of --data: give --data")
    if args.benchmarks_only and not args.benchmark:
        raise ValueError("--benchmarks-only scores the --benchmark folders: give at least one")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device}: {exc}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {args.device}: {torch.cuda.device_count()} CUDA device(s) here")
    if args.out:
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            raise ValueError(f"--out {out}: " + ("a folder; give a file name" if out.is_dir()
                                                 else f"its folder {out.parent} does not exist"))
        existed = out.exists()
        try:  # opened as the result will be, now: a permission, a read-only or immutable folder
            out.open("a").close()
        except OSError as exc:
            raise ValueError(f"--out {out}: cannot be written ({exc.strerror})") from None
        if not existed:
            out.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="Checkpoint file, run folder, …/checkpoints/latest, or an "
                                                        "open_clip model folder (open_clip_config.json + weights).")
    ap.add_argument("--bpe-vocab", help="An open_clip folder without bpe_simple_vocab_16e6.txt.gz: CLIP's "
                                        "vocabulary file (open_clip ships it).")
    ap.add_argument("--zeroshot", help="Labelled folder <class>/<image> for zero-shot and the linear probe.")
    ap.add_argument("--data", help="Build output or shard folder; retrieval runs on the pairs the run held out.")
    ap.add_argument("--holdout-shards", type=int, help="Score the last N shards (default: the run's data.holdout_*).")
    ap.add_argument("--holdout-fraction", type=float,
                    help="Score this share of the samples, chosen by key as training does (default: the run's).")
    ap.add_argument("--batch-size", type=int, help="Images or texts per forward pass (default: the run's "
                                                   "eval.batch_size).")
    ap.add_argument("--class-counts", help="JSON {class: pairs in the training pool}: adds head/tail zero-shot "
                                           "(default: the run's eval.class_counts).")
    ap.add_argument("--benchmark", action="append", default=[], metavar="DIR",
                    help="A benchmark in clip_benchmark's WebDataset layout (a clone of a clip-benchmark/wds_* "
                         "dataset): zero-shot or retrieval with all its captions; repeatable.")
    ap.add_argument("--split", default="test", help="The benchmarks' split folder (default: test).")
    ap.add_argument("--benchmarks-only", action="store_true",
                    help="Score the --benchmark folders alone, not the run's own labelled folder and holdout.")
    ap.add_argument("--out", help="Write the results as JSON here.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_args(args)
        model, tokenizer, ckpt = load_checkpoint(args.checkpoint, args.device, args.bpe_vocab)
        if "config" not in ckpt:
            raise ValueError(f"{args.checkpoint}: no run config in the checkpoint (not one of trainer/train.py)")
        cfg = saved_config(ckpt["config"])
        split, trained = heldout_of(args.data, ckpt["config"], args.holdout_shards, args.holdout_fraction,
                                    ckpt.get("run_known", True), ckpt.get("data")) if args.data else (None, False)
        counts_file = args.class_counts or cfg.eval.class_counts
        zeroshot = args.zeroshot or cfg.eval.zeroshot_dir
        if args.benchmarks_only:
            split, counts_file, zeroshot = None, None, None
        counts = read_class_counts(counts_file) if counts_file else None
        if zeroshot:  # every input read before the first picture is encoded
            check_labelled(zeroshot, counts)
        if args.benchmark:
            from trainer.wds_benchmark import read_benchmark

            for folder in args.benchmark:
                read_benchmark(folder, args.split)
        results = evaluate(model, tokenizer, args.device, zeroshot, split.heldout if split else None,
                           caption_key=cfg.data.caption_key, holdout_fraction=split.fraction if split else 0.0,
                           batch_size=args.batch_size or cfg.eval.batch_size, class_counts=counts)
        if trained and "retrieval" in results:
            results["retrieval"]["includes_trained_pairs"] = True
        if args.benchmark:
            from trainer.wds_benchmark import evaluate_benchmark

            results["benchmarks"] = {}
            for folder in args.benchmark:
                name = Path(folder).resolve().name
                name = name if name not in results["benchmarks"] else f"{name}-{len(results['benchmarks'])}"
                results["benchmarks"][name] = evaluate_benchmark(model, tokenizer, folder, args.split, args.device,
                                                                 args.batch_size or cfg.eval.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    results["checkpoint"] = str(Path(args.checkpoint).resolve() if is_openclip_folder(args.checkpoint)
                                else resolve_checkpoint(args.checkpoint))
    results["step"] = ckpt["step"]
    print(format_results(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
