"""Stage dedup: exact duplicates removed before any image is fetched, then a seeded global shuffle.

Layers, each counted: (normalised URL, text) — the same pair seen on many pages; then, when
``dedup.one_text_per_image`` is set, one pair per normalised URL (``duplicate_url``); otherwise, when
``dedup.exact_image`` is set, also one pair per normalised URL (``repeated_url``): finalize would drop every
further fetch of the URL as a sha256 duplicate of the first, so the URL is fetched once, and the pair kept
is the one first in the shuffled order, the one finalize would have kept. Within a ``duplicate_url_text``
or ``duplicate_url`` group the pair with the smallest uid stays, and among pairs of one uid (the same URL
and text on several pages) the one first in ``TIE_BREAK`` order: the kept row, page_url and all, does not
depend on partitioning or on the order Spark's shuffle delivers rows in (``row_number`` over a non-unique
order picks any). The survivors are ordered by a hash of (uid, seed) and written as files of
``ROWS_PER_FILE`` rows: img2dataset turns each file into shards in that order, so shards mix sites instead
of bunching them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from witbuild.counters import StageCounts
from witbuild.dedup.urls import normalize_url

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext

ROWS_PER_FILE = 1_000_000  # rows per Parquet file handed to img2dataset (it reads one file at a time)
# after uid, the columns that tell apart the rows of one uid (where and how the pair was seen); rows equal in all
# of them come from one record and are equal in every column
TIE_BREAK = ("page_url", "source_file", "record_offset", "url_source", "text_source")


def _with_url_key(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        keys = pa.array([normalize_url(u) for u in batch.column("url").to_pylist()], type=pa.string())
        yield pa.RecordBatch.from_arrays([*batch.columns, keys], names=[*batch.schema.names, "url_key"])


def run_dedup(ctx: StageContext) -> StageCounts:
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    cfg = ctx.cfg.dedup
    df = ctx.spark.read.parquet(ctx.previous)
    columns = df.columns
    keyed_schema = StructType([*df.schema.fields, StructField("url_key", StringType(), False)])
    # one shuffle for both windows: rows of one url_key in one partition also hold each (url_key, text) group
    keyed = df.mapInArrow(_with_url_key, keyed_schema).repartition("url_key")
    order = ["uid", *(c for c in TIE_BREAK if c in columns)]
    pair_rank = F.row_number().over(Window.partitionBy("url_key", "text").orderBy(*order))
    ranked = keyed.withColumn("_pair_rank", pair_rank)
    shuffle = F.xxhash64("uid", F.lit(cfg.shuffle_seed))
    url_reason = "duplicate_url" if cfg.one_text_per_image else "repeated_url"
    once = cfg.one_text_per_image or cfg.exact_image
    if once:
        first = [*order] if cfg.one_text_per_image else [shuffle, *order]
        ranked = ranked.withColumn("_url_rank", F.row_number().over(Window.partitionBy("url_key").orderBy(
            F.col("_pair_rank") > 1, *first)))
    else:
        ranked = ranked.withColumn("_url_rank", F.lit(1))
    ranked = ranked.cache()
    try:
        totals = ranked.agg(
            F.count(F.lit(1)).alias("rows_in"),
            F.sum((F.col("_pair_rank") > 1).cast("long")).alias("dup_pair"),
            F.sum(((F.col("_pair_rank") == 1) & (F.col("_url_rank") > 1)).cast("long")).alias("dup_url"),
        ).collect()[0]
        kept = ranked.filter((F.col("_pair_rank") == 1) & (F.col("_url_rank") == 1)).select(*columns)
        rows_in = int(totals["rows_in"] or 0)
        dup_pair, dup_url = int(totals["dup_pair"] or 0), int(totals["dup_url"] or 0)
        rows_out = rows_in - dup_pair - dup_url
        files = max(1, math.ceil(rows_out / ROWS_PER_FILE))
        (kept.withColumn("_order", shuffle).repartitionByRange(files, "_order", "uid")
         .sortWithinPartitions("_order", "uid").drop("_order")
         .write.mode("overwrite").parquet(ctx.output))
    finally:
        ranked.unpersist()
    counts = StageCounts(rows_in=rows_in, rows_out=rows_out)
    counts.drop("duplicate_url_text", dup_pair)
    counts.drop(url_reason, dup_url)
    counts.info.update({"one_text_per_image": cfg.one_text_per_image, "shuffle_seed": cfg.shuffle_seed,
                        "fetch_url_once": once and not cfg.one_text_per_image,
                        "files": files})
    return counts
