"""What a stage function gets: the session, the config, and where to read and write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from witbuild import layout, schemas
from witbuild.config import BuildConfig
from witbuild.counters import StageCounts
from witbuild.spark import counted, read_task_counts

BatchTask = Callable[[Iterator[Any], StageCounts], Iterator[Any]]


@dataclass
class StageContext:
    spark: Any
    cfg: BuildConfig
    output: str  # where the stage writes (a temporary folder, renamed when the stage has finished)
    counts_dir: str  # where its Spark tasks leave their counters (witbuild.spark.counted)
    previous: str | None  # the folder of the stage it reads
    name: str | None = None  # the stage's name in witbuild/stages/registry.py

    def stage_dir(self, name: str) -> str:
        return layout.stage_dir(self.cfg.output, name)

    def map_batches(self, task: BatchTask, df: Any = None) -> StageCounts:
        """The one way a stage runs an Arrow-batch function: over ``df`` (default: the previous stage's
        output), each task counting what it read, kept and dropped, the result written to this stage's
        folder with the stage's output schema (registry). Returns the tasks' counts, merged."""
        from witbuild.stages.registry import stage

        schema = stage(self.name or "").schema
        if schema is None:
            raise ValueError(f"stage {self.name} declares no output schema")
        out_schema = schemas.load(schema)
        source = df if df is not None else self.spark.read.parquet(self.previous)
        (source.mapInArrow(counted(task, self.counts_dir), out_schema.spark())
         .write.mode("overwrite").parquet(self.output))
        return read_task_counts(self.counts_dir)
