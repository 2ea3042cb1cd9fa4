"""The near-duplicate record says whether each removal's kept sample is in the final dataset: a step after dedup
(the CLIP-score filter) may drop it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from witbuild import schemas
from witbuild.dedup.near import ColourDiff, Removal, write_removal_record

pytestmark = [pytest.mark.spark]


def test_record_marks_kept_samples_dropped_after_dedup(spark, tmp_path) -> None:
    samples = spark.createDataFrame(pa.table({
        "key": ["a", "b", "c", "d"], "shard": ["0.tar"] * 4, "url": [f"http://127.0.0.1/{k}.jpg" for k in "abcd"],
        "text": ["t"] * 4, "phash": ["0" * 16] * 4}))
    removals = [Removal("b", "a", 1, ColourDiff(0.5, 2.0)), Removal("d", "c", 0, None)]
    final = spark.createDataFrame(pa.table({"key": ["a"]}))  # c: dropped by a later step
    folder = tmp_path / "near_duplicates.parquet"
    write_removal_record(spark, removals, samples, str(folder), final)
    table = pq.read_table(folder)
    assert table.schema.names == schemas.load("near_duplicates").names
    rows = sorted(table.to_pylist(), key=lambda r: r["key"])
    assert [(r["key"], r["duplicate_of"], r["duplicate_of_in_dataset"]) for r in rows] == [
        ("b", "a", True), ("d", "c", False)]
