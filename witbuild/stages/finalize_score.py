"""Finalize's CLIP-score step: every sample dedup kept is scored on the executors, then filtered on the score.

Scoring is part of finalize rather than a stage after it: the shards are rewritten once, with the dropped
samples of dedup and of the score filter left out together (rewriting every tar is a large share of finalize's
cost per image), the dataset stays in ``stages/finalize`` where the trainer and ``witbuild stats`` read it, and
only the samples dedup kept are scored. The price: a new checkpoint redoes finalize's dedup too, which costs less
than the scoring itself.

One Spark task per group of shards reads each tar once and scores its samples in batches
(:mod:`witbuild.curate.clip_score`; the model is loaded once per Python worker). Only (key, score, embedding)
comes back and is joined to the samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from witbuild.curate.clip_score import EXACT_CUTOFF_ROWS, ClipScoreConfig, cached_scorer, embedding_bytes, score_cutoff

if TYPE_CHECKING:
    from witbuild.counters import StageCounts

log = logging.getLogger(__name__)

SCORE_SCHEMA = pa.schema([("key", pa.string()), ("clip_score", pa.float32()), ("clip_embedding", pa.binary())])
SCORE_DDL = "key string, clip_score float, clip_embedding binary"  # the same columns for Spark
SCORE_COLUMNS = ("clip_score", "clip_embedding")


def score_task(cfg: ClipScoreConfig, source_dir: str) -> Any:
    """The Spark task scoring the rows (``shard``, ``key``, ``text``) of its partition, one shard's tar at a time."""
    from witbuild.layout import IMAGE_EXTS
    from witbuild.stages.finalize import read_tar_members

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        by_shard: dict[str, list[tuple[str, str]]] = {}
        for batch in batches:
            for shard, key, text in zip(*(batch.column(c).to_pylist() for c in ("shard", "key", "text")), strict=True):
                by_shard.setdefault(shard, []).append((key, text))
        if not by_shard:
            return
        scorer = cached_scorer(cfg)
        for shard in sorted(by_shard):
            rows = sorted(by_shard[shard])
            members = read_tar_members(f"{source_dir}/{shard}")
            images = [next((files[e] for e in IMAGE_EXTS if e in files), b"") for files in
                      (members.get(key, {}) for key, _ in rows)]
            scores, image_emb = scorer.score(images, [text for _, text in rows])
            emb_iter = iter(image_emb)
            embeddings = [embedding_bytes(next(emb_iter)) if s is not None and cfg.embeddings else None
                          for s in scores]
            yield pa.RecordBatch.from_pydict({"key": [k for k, _ in rows], "clip_score": scores,
                                              "clip_embedding": embeddings}, schema=SCORE_SCHEMA)

    return run


def with_empty_scores(df: Any) -> Any:
    """``df`` with null score columns (scoring off): index.parquet has one schema either way."""
    from pyspark.sql import functions as F

    return df.withColumn("clip_score", F.lit(None).cast("float")).withColumn("clip_embedding",
                                                                             F.lit(None).cast("binary"))


def score_and_filter(samples: Any, cfg: ClipScoreConfig, source_dir: str, n_shards: int,
                     counts: StageCounts) -> tuple[Any, list[Any]]:
    """``samples`` with their scores, without the undecodable and the low-scoring ones; returns it and the
    DataFrames it cached (the caller unpersists them once the shards are written)."""
    from pyspark.sql import functions as F

    scores = (samples.select("shard", "key", "text").repartition(max(1, n_shards), "shard")
              .mapInArrow(score_task(cfg, source_dir), SCORE_DDL)).cache()
    scored = samples.join(scores, "key").cache()
    n = scored.count()
    unscored = scored.filter(F.col("clip_score").isNull()).count()
    counts.drop("undecodable_image", unscored)
    kept = scored.filter(F.col("clip_score").isNotNull())
    cut = cfg.min if cfg.min is not None else -np.inf
    if cfg.keep_fraction is not None:
        cutoff = _fraction_cutoff(kept, n - unscored, cfg.keep_fraction)
        counts.info["clip_score_cutoff"] = round(cutoff, 6)
        cut = max(cut, cutoff)
    before = n - unscored
    if np.isfinite(cut):
        kept = kept.filter(F.col("clip_score") >= F.lit(float(cut)))
    after = kept.count()
    counts.drop("low_clip_score", before - after)
    stats = kept.agg(F.mean("clip_score").alias("mean"), F.min("clip_score").alias("min")).collect()[0]
    counts.info.update({"clip_score_mean": round(float(stats["mean"] or 0.0), 6),
                        "clip_score_min_kept": round(float(stats["min"] or 0.0), 6)})
    log.info("clip score: %d scored, %d undecodable, %d below %.4f", n - unscored, unscored, before - after, cut)
    return kept, [scores, scored]


def _fraction_cutoff(scored: Any, rows: int, fraction: float) -> float:
    """The keep_fraction cutoff (:func:`score_cutoff`): exact on the driver up to ``EXACT_CUTOFF_ROWS`` scores,
    Spark's quantile sketch (relative rank error 1e-4) beyond."""
    if rows <= EXACT_CUTOFF_ROWS:
        column = scored.select("clip_score").toArrow().column(0)
        return score_cutoff(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64), fraction)
    return float(scored.approxQuantile("clip_score", [1.0 - fraction], 1e-4)[0])
