"""What a stage function gets: the session, the config, and where to read and write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from witbuild import layout
from witbuild.config import BuildConfig


@dataclass
class StageContext:
    spark: Any
    cfg: BuildConfig
    output: str  # where the stage writes (a temporary folder, renamed when the stage has finished)
    counts_dir: str  # where its Spark tasks leave their counters (witbuild.spark.counted)
    previous: str | None  # the folder of the stage it reads

    def stage_dir(self, name: str) -> str:
        return layout.stage_dir(self.cfg.output, name)
