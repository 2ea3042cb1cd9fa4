"""CLIP-score curation: the image–text cosine similarity of every sample under a CLIP checkpoint, and the filters on it.

DataComp's strongest simple baseline keeps the pairs a CLIP model finds most alike (top 30% of the pool, or a
threshold such as LAION's 0.28); it needs a model, and none can be downloaded here, so the model is one the user
has: a checkpoint of our trainer (a run folder, ``…/latest`` or a ``step_*.pt`` file: model, model config and
tokenizer in one file) or an open_clip state dict with the model JSON it was trained with and CLIP's BPE
vocabulary. Both load with ``torch.load(weights_only=True)``.

The score is computed as our trainer evaluates, which is as open_clip evaluates (the image decoded in full, its
short side resized to the model's image size and the centre cropped, pixel for pixel as torchvision's ``Resize``
and ``CenterCrop`` do it, CLIP's normalisation; the caption through the checkpoint's tokenizer, whose CLIP BPE
gives open_clip's ids), so it equals the trainer's own ``encode_image`` · ``encode_text`` cosine, and an open_clip
model's scores are the ones open_clip gives. torch is imported inside functions: the build config and the job's
start need no torch until scoring is asked for.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SEMDEDUP_CLUSTER_SIZE = 1_000  # samples per k-means cluster by default: pairwise similarities stay ~10⁶ per cluster


class ClipScoreConfig(BaseModel):
    """Scoring every final sample with a CLIP checkpoint, and keeping the best-aligned pairs (finalize)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    checkpoint: str | None = Field(
        None, description="A checkpoint of our trainer (run folder, checkpoints/latest or a .pt file), an open_clip "
        "model folder (open_clip_config.json and weights: trainer/export_openclip.py writes one, the Hugging Face Hub "
        "holds them) or an open_clip state dict file (with model_json and bpe_vocab). None: no scoring.")
    model_json: str | None = Field(
        None, description="open_clip checkpoints only: the model JSON it was trained with (a path, or the name of "
        "one under trainer/configs/models).")
    bpe_vocab: str | None = Field(
        None, description="open_clip checkpoints only: CLIP's bpe_simple_vocab_16e6.txt.gz (open_clip ships it); "
        "for a folder, when it has none.")
    min: float | None = Field(
        None, ge=-1, le=1, description="Drop samples whose score is below this cosine similarity (LAION: 0.28 "
        "with OpenAI's ViT-B/32; a small model of ours scores on another scale: look at the histogram first).")
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep the best-scoring fraction of the samples (DataComp: 0.3): the "
        "ceil(fraction * n) best scores, and any tied with the last of them.")
    embeddings: bool = Field(False, description="Also store each image's embedding (float16) in index.parquet.")
    semdedup_eps: float | None = Field(
        None, gt=0, lt=1, description="Semantic dedup (SemDeDup): within each k-means cluster of the image "
        "embeddings, a sample whose cosine similarity to a kept one exceeds 1 - eps is dropped (semantic_duplicate). "
        "None: off.")
    semdedup_clusters: int | None = Field(
        None, ge=1, description="k-means clusters for semantic dedup; None: one per SEMDEDUP_CLUSTER_SIZE samples.")
    semdedup_seed: int = Field(0, description="Seed of the k-means initialisation.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the executor's GPU when it has one, else the CPU (one thread per Spark task).")

    @model_validator(mode="after")
    def _consistent(self) -> ClipScoreConfig:
        if self.checkpoint is None and (self.min is not None or self.keep_fraction is not None or self.embeddings
                                        or self.semdedup_eps is not None or self.model_json or self.bpe_vocab):
            raise ValueError("clip_score.min, keep_fraction, embeddings, semdedup_eps, model_json and bpe_vocab "
                             "need clip_score.checkpoint")
        if self.model_json is not None and self.bpe_vocab is None:
            raise ValueError("an open_clip checkpoint needs both clip_score.model_json and clip_score.bpe_vocab")
        return self

    @property
    def enabled(self) -> bool:
        return self.checkpoint is not None


@dataclass
class Scorer:
    """A loaded CLIP model and its tokenizer, scoring (image bytes, caption) pairs in batches."""

    model: Any  # trainer.model.CLIP, eval mode
    tokenizer: Any  # trainer.tokenizer.TextTokenizer
    device: Any  # torch.device
    batch_size: int = 64

    @property
    def image_size(self) -> int:
        return int(self.model.cfg.vision_cfg.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.cfg.embed_dim)

    def image_tensor(self, data: bytes) -> torch.Tensor | None:
        """The evaluation view of one encoded image as uint8 (None when Pillow cannot decode it); :meth:`embed`
        normalises a whole batch at once, as the trainer's loader does."""
        from trainer.data import center_square, open_rgb, to_uint8

        try:
            return to_uint8(center_square(open_rgb(data), self.image_size))  # open_clip's evaluation view
        except Exception as exc:  # Pillow raises many types; one bad image must not fail a Spark task
            log.debug("clip_score: undecodable image: %s: %s", type(exc).__name__, exc)
            return None

    def embed(self, images: list[torch.Tensor], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 (image, text) embeddings of equally long lists (uint8 images from :meth:`image_tensor`),
        ``batch_size`` at a time."""
        import torch

        from trainer.data import normalize

        out_i, out_t = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = normalize(torch.stack(images[start: start + self.batch_size]).to(self.device))
                tokens = self.tokenizer(texts[start: start + self.batch_size]).to(self.device)
                out_i.append(self.model.encode_image(x).float().cpu())  # float32 everywhere: see load_scorer
                out_t.append(self.model.encode_text(tokens).float().cpu())
        if not out_i:
            empty = np.zeros((0, self.embed_dim), np.float32)
            return empty, empty
        return torch.cat(out_i).numpy(), torch.cat(out_t).numpy()

    def score(self, images: list[bytes], texts: list[str]) -> tuple[list[float | None], np.ndarray]:
        """Cosine similarity per pair (None: undecodable image) and the decoded images' embeddings (rows in order
        of the decodable pairs). Decoded ``batch_size`` images at a time: a shard of 10,000 images at 224 px
        would be 6 GB of float tensors at once."""
        scores: list[float | None] = [None] * len(images)
        embeddings = []
        for start in range(0, len(images), self.batch_size):
            tensors = [self.image_tensor(b) for b in images[start: start + self.batch_size]]
            ok = [start + i for i, t in enumerate(tensors) if t is not None]
            image_emb, text_emb = self.embed([t for t in tensors if t is not None], [texts[i] for i in ok])
            for i, c in zip(ok, (image_emb * text_emb).sum(axis=1).tolist(), strict=True):
                scores[i] = c
            embeddings.append(image_emb)
        if not embeddings:
            return scores, np.zeros((0, self.embed_dim), np.float32)
        return scores, np.concatenate(embeddings)


def _device(kind: str) -> torch.device:
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("clip_score.device is cuda but torch sees no GPU")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)


def load_scorer(cfg: ClipScoreConfig) -> Scorer:
    """The scorer of ``cfg``; FileNotFoundError / ValueError (said plainly) for a checkpoint that is missing, does
    not load, or does not fit its model JSON. Called by the job before Spark starts, and once per Python worker."""
    from trainer.evaluate import resolve_checkpoint
    from trainer.openclip_weights import is_openclip_folder, load_openclip_folder

    if cfg.checkpoint is None:
        raise ValueError("clip_score.checkpoint is not set")
    device = _device(cfg.device)
    if cfg.model_json is not None:
        model, tokenizer = _load_openclip(cfg)
    elif is_openclip_folder(Path(cfg.checkpoint).expanduser()):
        try:
            model, tokenizer = load_openclip_folder(Path(cfg.checkpoint).expanduser(), cfg.bpe_vocab)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"clip_score.checkpoint: {exc}") from None
    elif cfg.bpe_vocab is not None:
        raise ValueError("clip_score.bpe_vocab is for open_clip checkpoints: a state dict (with model_json) or a "
                         f"folder with open_clip_config.json, and {cfg.checkpoint} is neither")
    else:
        try:
            path = resolve_checkpoint(cfg.checkpoint)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"clip_score.checkpoint: {exc}") from None
        model, tokenizer = _load_ours(path)
    import torch

    if device.type == "cpu":
        torch.set_num_threads(1)  # one Spark task per core; more threads per task would oversubscribe it
    else:  # float32 without TF32: bf16 autocast made the dataset depend on whether an executor had a GPU
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return Scorer(model.to(device).eval(), tokenizer, device, cfg.batch_size)


def pin_checkpoint(cfg: ClipScoreConfig) -> ClipScoreConfig:
    """``cfg`` with a run folder or ``…/latest`` of our trainer replaced by the step file it names now: the file the
    build fingerprints is then the one every executor loads, though a run still training moves ``latest`` on (an
    executor that resolved it again scored with a newer step than the build recorded)."""
    from trainer.evaluate import resolve_checkpoint
    from trainer.openclip_weights import is_openclip_folder

    if not cfg.checkpoint or cfg.model_json or is_openclip_folder(Path(cfg.checkpoint).expanduser()):
        return cfg

    return cfg.model_copy(update={"checkpoint": str(resolve_checkpoint(cfg.checkpoint))})


def _load_ours(path: Path) -> tuple[Any, Any]:
    from trainer.evaluate import read_checkpoint
    from trainer.model import CLIP, ModelConfig
    from trainer.tokenizer import TextTokenizer

    try:
        ckpt = read_checkpoint(path)
    except ValueError as exc:
        raise ValueError(f"clip_score.checkpoint {exc}; for an open_clip state dict give clip_score.model_json "
                         "and bpe_vocab") from None
    model = CLIP(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"clip_score.checkpoint {path} does not match its model config: {exc}") from exc
    return model, TextTokenizer.from_json(ckpt["tokenizer"])


def _load_openclip(cfg: ClipScoreConfig) -> tuple[Any, Any]:
    from trainer.model import load_model_config
    from trainer.openclip_weights import load_openclip
    from trainer.tokenizer import load_clip_bpe

    path = Path(str(cfg.checkpoint)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"clip_score.checkpoint: file not found: {path}")
    if not Path(str(cfg.bpe_vocab)).expanduser().is_file():
        raise FileNotFoundError(f"clip_score.bpe_vocab: file not found: {cfg.bpe_vocab}")
    model_cfg = load_model_config(str(cfg.model_json))
    try:
        model = load_openclip(path, model_cfg)
    except ValueError as exc:
        raise ValueError(f"clip_score.checkpoint: {exc}") from None
    tokenizer = load_clip_bpe(Path(str(cfg.bpe_vocab)).expanduser(), model_cfg.text_cfg.context_length)
    if tokenizer.vocab_size > model_cfg.text_cfg.vocab_size:
        raise ValueError(f"clip_score.bpe_vocab has {tokenizer.vocab_size} tokens, the model's vocab_size is "
                         f"{model_cfg.text_cfg.vocab_size}")
    return model, tokenizer


_CACHE: dict[str, Scorer] = {}


def cached_scorer(cfg: ClipScoreConfig) -> Scorer:
    """One scorer per Python worker process and config (Spark reuses its workers across tasks)."""
    key = cfg.model_dump_json()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_scorer(cfg)
    return _CACHE[key]


def embedding_bytes(row: np.ndarray) -> bytes:
    """One image embedding as stored in index.parquet: little-endian float16."""
    return row.astype("<f2").tobytes()


def decode_embedding(data: bytes) -> np.ndarray:
    """The float32 vector of a stored embedding (:func:`embedding_bytes`)."""
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


EXACT_CUTOFF_ROWS = 5_000_000  # up to this many scores the keep_fraction cut is exact (40 MB on the driver)


def score_cutoff(scores: np.ndarray, fraction: float) -> float:
    """The score a sample needs to be among the best ``fraction``: the k-th largest, k = ceil(fraction · n), so
    that keeping every score ≥ the cutoff keeps k samples (a few more when scores tie at the cut)."""
    if scores.size == 0:
        return -math.inf
    k = max(1, math.ceil(scores.size * fraction - 1e-9))
    return float(np.partition(scores, scores.size - k)[scores.size - k])


def semdedup_clusters(cfg: ClipScoreConfig, rows: int) -> int:
    """k of the k-means: the configured one, else one cluster per ``SEMDEDUP_CLUSTER_SIZE`` samples."""
    k = cfg.semdedup_clusters or round(rows / SEMDEDUP_CLUSTER_SIZE)
    return max(1, min(k, rows))


def semantic_duplicates(keys: list[str], embeddings: np.ndarray, eps: float) -> list[tuple[str, str, float]]:
    """(removed key, kept key, cosine similarity) within one cluster: SemDeDup without chains.

    Members are visited farthest from the cluster's centroid first (SemDeDup's default: the least prototypical
    example of a group of duplicates is the one kept), ties by key; each is kept unless its cosine similarity to an
    already kept member exceeds ``1 - eps``, and is then recorded against the most similar kept one. So every
    removal has a kept counterpart within the threshold, whatever the order of the input."""
    if len(keys) < 2:
        return []
    e = embeddings.astype(np.float32) / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centroid = e.mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    to_centroid = e @ centroid
    order = sorted(range(len(keys)), key=lambda i: (float(to_centroid[i]), keys[i]))
    sims = e @ e.T
    kept: list[int] = []
    out: list[tuple[str, str, float]] = []
    for i in order:
        if kept:
            row = sims[i, kept]
            j = int(np.argmax(row))
            if row[j] > 1.0 - eps:
                out.append((keys[i], keys[kept[j]], float(row[j])))
                continue
        kept.append(i)
    return sorted(out)
