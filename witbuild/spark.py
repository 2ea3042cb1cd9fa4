"""Spark plumbing shared by the stages: the session, per-task counters, atomic stage outputs."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
from pyspark.accumulators import AccumulatorParam

from witbuild.config import SparkConfig
from witbuild.counters import StageCounts

log = logging.getLogger(__name__)

LOCAL_SHUFFLE_PARTITIONS_PER_CORE = 4
DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    # Parquet files are committed by Spark; _SUCCESS marks a complete write.
    "spark.sql.parquet.compression.codec": "zstd",
    # timestamps as the schemas declare them (microseconds, UTC): Spark's default, INT96, is a legacy type that
    # pyarrow and pandas read as nanoseconds with no time zone
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def get_session(cfg: SparkConfig | None = None, executor_env: dict[str, str] | None = None) -> Any:
    """The build's SparkSession: ``spark-submit``'s when there is one, else a local one.

    Executors run this interpreter unless ``PYSPARK_PYTHON`` says otherwise, so that they can
    import witbuild from the same environment.
    """
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Spark's console at warnings only, when this process starts the JVM (spark-submit reads its own)
    os.environ.setdefault("SPARK_CONF_DIR", str(Path(__file__).resolve().parent / "spark_conf"))
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    elif "spark.master" not in _submitted_conf():
        builder = builder.master("local[*]")
    env = executor_env or {}
    for key, value in env.items():  # local workers inherit the driver's environment, cluster ones get it here
        os.environ.setdefault(key, value)
    conf = {**DEFAULT_CONF, **{f"spark.executorEnv.{k}": v for k, v in env.items()}, **cfg.conf}
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("WITBUILD_SPARK_LOG_LEVEL", "WARN"))
    _size_local_shuffles(spark, {**_submitted_conf(), **cfg.conf})
    return spark


def _size_local_shuffles(spark: Any, chosen: dict[str, str]) -> None:
    """On one machine, shuffles get ``LOCAL_SHUFFLE_PARTITIONS_PER_CORE`` partitions per core, not Spark's 200,
    unless the user chose a number. 200 is sized for a cluster; on 2 cores each of a build's dozen shuffles then
    runs hundreds of near-empty tasks (finalize's exact-duplicate step on 12,000 images: 7-11 s with 200, 2-4 s
    with 8; the rows do not change, only how many files a shuffled write has)."""
    if "spark.sql.shuffle.partitions" in chosen or not spark.sparkContext.master.startswith("local"):
        return
    parts = LOCAL_SHUFFLE_PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.shuffle.partitions", str(parts))


def spark_submit_env(local_ip: str | None = "127.0.0.1") -> dict[str, str]:
    """The environment for a ``spark-submit`` child of this process: this interpreter for the driver and the
    executors, pyspark's own Spark home, our console settings — each only where the caller has not set it,
    so ``.venv/bin/witbuild demo`` works without an activated environment."""
    import pyspark

    env = dict(os.environ)
    defaults = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_HOME": str(Path(pyspark.__file__).resolve().parent),
                "SPARK_CONF_DIR": str(Path(__file__).resolve().parent / "spark_conf"),
                "NO_ALBUMENTATIONS_UPDATE": "1", **({"SPARK_LOCAL_IP": local_ip} if local_ip else {})}
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def _submitted_conf() -> dict[str, str]:
    """Settings spark-submit passed to this driver (empty when run as a plain script).

    spark-submit's JVM holds them (``--master``, ``--conf``); a ``SparkConf`` made before PySpark has attached to
    that JVM reads none of them, so the driver attaches first (a build under ``--master spark://...`` otherwise ran
    in ``local[*]``)."""
    from pyspark import SparkConf, SparkContext

    if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit started this driver and its JVM
        SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


_LOCAL_MASTER = re.compile(r"local(\[[^\]]*\])?")


def is_local_master(master: str) -> bool:
    """Whether Spark runs the tasks inside the driver's own process and working directory (``local``,
    ``local[N]``, ``local[*]``, ``local[N,F]``). ``local-cluster[...]`` is not: its executors are processes that
    run in their own work folders, as a cluster's do."""
    return _LOCAL_MASTER.fullmatch(master.strip()) is not None


# a stage input of at most this much Parquet on this machine is small enough for the driver to take whole where Spark
# would spend seconds of small jobs (shuffles, joins, aggregations) on it: 10-25 thousand captions per MB (the demo's
# 25,000), ~1 s per 100,000 of them in one Python thread; beyond, Spark's fixed seconds are worth paying and its
# counters are spread over the executors instead of held in the driver
DRIVER_MAX_PARQUET_BYTES = 8 * 2**20


def local_parquet_bytes(folder: str) -> int | None:
    """Bytes of the Parquet files in ``folder`` when it is a folder on this machine; None otherwise (another file
    system, such as a cluster's)."""
    if "://" in folder and not folder.startswith("file://"):
        return None
    path = Path(folder.removeprefix("file://"))
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*.parquet") if not f.name.startswith(("_", ".")))


def driver_sized(folder: str) -> int | None:
    """``folder``'s Parquet bytes when the driver should read it whole (on this machine, at most
    ``DRIVER_MAX_PARQUET_BYTES``); None when Spark should."""
    size = local_parquet_bytes(folder)
    return size if size is not None and size <= DRIVER_MAX_PARQUET_BYTES else None


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def absolute_local(path: str) -> str:
    """``path`` made absolute in the driver when it is a local path; a URL as it is. An executor resolves a relative
    path against its own working directory, which on a cluster is not the driver's."""
    if "://" in path:
        return path
    return os.path.abspath(path)


def _partition() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else 0


def _counts_file(path: str, part: int) -> str:
    return f"{path}/part-{part:06d}.json"


def task_counts_writer(counts_dir: str) -> Callable[[StageCounts], None]:
    """A function a Spark task calls once, at its end, to store its counters.

    The file is named after the partition, so a retried or speculative task overwrites its
    own file instead of counting twice. The folder is resolved here, in the driver: a relative one would be
    resolved by each executor in its own working directory, where the driver never reads.
    """
    counts_dir = absolute_local(counts_dir)

    def write(counts: StageCounts) -> None:
        fs, path = fs_and_path(counts_dir)
        fs.makedirs(path, exist_ok=True)
        with fs.open(_counts_file(path, _partition()), "w") as fh:
            fh.write(counts.to_json())

    return write


class CountsMissing(RuntimeError):
    """Spark tasks counted rows, but the driver cannot find their counters: the stage's funnel would be wrong."""


class _PartitionSet(AccumulatorParam):
    """Spark accumulator of the partitions whose task stored its counters (a union: a retried task adds its
    partition again, which changes nothing)."""

    def zero(self, value: frozenset[int]) -> frozenset[int]:
        return frozenset()

    def addInPlace(self, value1: frozenset[int], value2: frozenset[int]) -> frozenset[int]:
        return frozenset(value1) | frozenset(value2)


#: counts folder (absolute) -> accumulator of the partitions whose tasks wrote a counts file there
_REPORTED: dict[str, Any] = {}


def _reported_partitions(counts_dir: str) -> Any:
    """A fresh accumulator of the partitions that store counters in ``counts_dir``, when a SparkContext is active
    in this (driver) process; None otherwise."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        _REPORTED.pop(counts_dir, None)
        return None
    _REPORTED[counts_dir] = sc.accumulator(frozenset(), _PartitionSet())
    return _REPORTED[counts_dir]


def read_task_counts(counts_dir: str) -> StageCounts:
    """The counters the tasks of a stage stored in ``counts_dir``, merged.

    Raises :class:`CountsMissing` when tasks of a :func:`counted` job stored counters the folder does not hold:
    the tasks ran on machines that wrote them elsewhere, and an empty funnel would pass for an empty input."""
    counts_dir = absolute_local(counts_dir)
    fs, path = fs_and_path(counts_dir)
    total = StageCounts()
    names = sorted(fs.ls(path, detail=False)) if fs.exists(path) else []
    for name in names:
        if name.endswith(".json"):
            with fs.open(name, "r") as fh:
                total.merge(StageCounts.from_dict(json.load(fh)))
    reported = _REPORTED.get(counts_dir)
    if reported is not None:
        check_counts_found(counts_dir, set(reported.value), {Path(n).name for n in names})
    return total


def check_counts_found(counts_dir: str, reported: set[int], names: set[str]) -> None:
    """Every partition that reported storing its counters has its file in ``counts_dir``; else CountsMissing."""
    missing = sorted(p for p in reported if Path(_counts_file("", p)).name not in names)
    if not missing:
        return
    shown = ", ".join(str(p) for p in missing[:5]) + (", ..." if len(missing) > 5 else "")
    raise CountsMissing(
        f"{len(missing)} of the stage's Spark tasks stored their counters where the driver cannot read them "
        f"(partitions {shown}; expected in {counts_dir}): the executors do not share the output folder with the "
        "driver; on a cluster give an output every machine reaches at the same absolute path, or a URL")


def counted(
    fn: Callable[[Iterator[Any], StageCounts], Iterator[Any]], counts_dir: str
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Wrap a ``mapInArrow``/``mapInPandas`` function so its counters reach the driver (each task writes them to
    ``counts_dir`` and says so through an accumulator, so that :func:`read_task_counts` knows what to expect)."""
    counts_dir = absolute_local(counts_dir)
    write = task_counts_writer(counts_dir)
    reported = _reported_partitions(counts_dir)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        counts = StageCounts()
        yield from fn(batches, counts)
        write(counts)
        if reported is not None:
            reported.add(frozenset([_partition()]))

    return run
