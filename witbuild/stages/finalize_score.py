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

from witbuild.curate.clip_score import (
    EXACT_CUTOFF_ROWS,
    ClipScoreConfig,
    cached_scorer,
    decode_embedding,
    embedding_bytes,
    score_cutoff,
    semantic_duplicates,
    semdedup_clusters,
)

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
        keep_emb = cfg.embeddings or cfg.semdedup_eps is not None
        for shard in sorted(by_shard):
            rows = sorted(by_shard[shard])
            members = read_tar_members(f"{source_dir}/{shard}")
            images = [next((files[e] for e in IMAGE_EXTS if e in files), b"") for files in
                      (members.get(key, {}) for key, _ in rows)]
            scores, image_emb = scorer.score(images, [text for _, text in rows])
            emb_iter = iter(image_emb)
            embeddings = [embedding_bytes(next(emb_iter)) if s is not None and keep_emb else None for s in scores]
            yield pa.RecordBatch.from_pydict({"key": [k for k, _ in rows], "clip_score": scores,
                                              "clip_embedding": embeddings}, schema=SCORE_SCHEMA)

    return run


def with_empty_scores(df: Any) -> Any:
    """``df`` with null score columns (scoring off): index.parquet has one schema either way."""
    from pyspark.sql import functions as F

    return df.withColumn("clip_score", F.lit(None).cast("float")).withColumn("clip_embedding",
                                                                             F.lit(None).cast("binary"))


def score_and_filter(samples: Any, cfg: ClipScoreConfig, source_dir: str, n_shards: int, counts: StageCounts,
                     output: str) -> tuple[Any, list[Any]]:
    """``samples`` with their scores, without the undecodable ones, the low-scoring ones and the semantic duplicates
    among the rest (``semdedup_eps``, recorded in ``output``/SEMANTIC_DUPLICATES_DIR), in that order: a removed
    duplicate's kept sample is in the dataset, and the score chooses among copies before SemDeDup does (an image's
    best-captioned copy is not lost to a worse one the score then drops). Returns it and the DataFrames it cached
    (the caller unpersists them once the shards are written)."""
    from pyspark.sql import functions as F

    from witbuild.layout import SEMANTIC_DUPLICATES_DIR

    scores = (samples.select("shard", "key", "text").repartition(max(1, n_shards), "shard")
              .mapInArrow(score_task(cfg, source_dir), SCORE_DDL)).cache()
    scored = samples.join(scores, "key").cache()
    cached = [scores, scored]
    n = scored.count()
    unscored = scored.filter(F.col("clip_score").isNull()).count()
    counts.drop("undecodable_image", unscored)
    kept = scored.filter(F.col("clip_score").isNotNull())
    before = n - unscored
    cut = cfg.min if cfg.min is not None else -np.inf
    if cfg.keep_fraction is not None:
        cutoff = _fraction_cutoff(kept, before, cfg.keep_fraction)
        if np.isfinite(cutoff):  # no sample left: no cutoff (and no -inf in the report's JSON)
            counts.info["clip_score_cutoff"] = round(cutoff, 6)
        cut = max(cut, cutoff)
    if np.isfinite(cut):
        kept = kept.filter(F.col("clip_score") >= F.lit(float(cut)))
    after = kept.count()
    counts.drop("low_clip_score", before - after)
    if cfg.semdedup_eps is not None:  # among the samples the score keeps: each removal's kept sample stays
        removals = semantic_removals(kept, cfg, after).cache()
        cached.append(removals)
        removed = removals.count()
        counts.drop("semantic_duplicate", removed)
        counts.info["semdedup_clusters"] = semdedup_clusters(cfg, after)
        removals.coalesce(1).sortWithinPartitions("key").write.mode("overwrite").parquet(
            f"{output}/{SEMANTIC_DUPLICATES_DIR}")
        kept = kept.join(removals.select("key"), "key", "left_anti")
        if not cfg.embeddings:
            kept = kept.withColumn("clip_embedding", F.lit(None).cast("binary"))
    stats = kept.agg(F.mean("clip_score").alias("mean"), F.min("clip_score").alias("min")).collect()[0]
    counts.info.update({"clip_score_mean": round(float(stats["mean"] or 0.0), 6),
                        "clip_score_min_kept": round(float(stats["min"] or 0.0), 6)})
    log.info("clip score: %d scored, %d undecodable, %d below %.4f", n - unscored, unscored, before - after, cut)
    return kept, cached


SEMDUP_SCHEMA = pa.schema([("key", pa.string()), ("duplicate_of", pa.string()), ("similarity", pa.float32()),
                           ("cluster", pa.int32())])
SEMDUP_DDL = "key string, duplicate_of string, similarity float, cluster int"  # the same columns for Spark


def semantic_removals(scored: Any, cfg: ClipScoreConfig, rows: int) -> Any:
    """DataFrame ``SEMDUP_DDL``: SemDeDup's removals among ``scored`` (its ``clip_embedding`` column).

    k-means is Spark's (``pyspark.ml``, cosine distance, seeded); each cluster's pairwise similarities are then
    computed in one task (:func:`~witbuild.curate.clip_score.semantic_duplicates`)."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    k = semdedup_clusters(cfg, rows)
    emb = scored.select("key", "clip_embedding")
    if k > 1:  # Spark's KMeans needs k ≥ 2; one cluster is everything
        vectors = (emb.mapInArrow(_as_float_arrays, "key string, features array<float>")
                   .withColumn("features", array_to_vector("features")))
        model = KMeans(k=k, seed=cfg.semdedup_seed, distanceMeasure="cosine", maxIter=20).fit(vectors)
        clusters = model.transform(vectors).select("key", F.col("prediction").cast("int").alias("cluster"))
        emb = emb.join(clusters, "key")
    else:
        emb = emb.withColumn("cluster", F.lit(0))
    slots = 2 * scored.sparkSession.sparkContext.defaultParallelism
    return emb.repartition(max(1, min(k, slots)), "cluster").mapInArrow(_semdedup_task(float(cfg.semdedup_eps)),
                                                                         SEMDUP_DDL)


def _as_float_arrays(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        vectors = [decode_embedding(b).tolist() for b in batch.column("clip_embedding").to_pylist()]
        yield pa.RecordBatch.from_pydict({"key": batch.column("key"),
                                          "features": pa.array(vectors, pa.list_(pa.float32()))})


def _semdedup_task(eps: float) -> Any:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        by_cluster: dict[int, list[tuple[str, bytes]]] = {}
        for batch in batches:
            for c, k, e in zip(*(batch.column(n).to_pylist() for n in ("cluster", "key", "clip_embedding")),
                               strict=True):
                by_cluster.setdefault(c, []).append((k, e))
        for c in sorted(by_cluster):
            rows = sorted(by_cluster[c])
            found = semantic_duplicates([k for k, _ in rows], np.stack([decode_embedding(e) for _, e in rows]), eps)
            yield pa.RecordBatch.from_pydict(
                {"key": [r[0] for r in found], "duplicate_of": [r[1] for r in found],
                 "similarity": [r[2] for r in found], "cluster": [c] * len(found)}, schema=SEMDUP_SCHEMA)

    return run


def _fraction_cutoff(scored: Any, rows: int, fraction: float) -> float:
    """The keep_fraction cutoff (:func:`score_cutoff`): exact on the driver up to ``EXACT_CUTOFF_ROWS`` scores,
    Spark's quantile sketch (relative rank error 1e-4) beyond."""
    if rows <= EXACT_CUTOFF_ROWS:
        column = scored.select("clip_score").toArrow().column(0)
        return score_cutoff(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64), fraction)
    return float(scored.approxQuantile("clip_score", [1.0 - fraction], 1e-4)[0])
