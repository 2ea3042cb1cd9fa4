"""Stage download: img2dataset's real downloader on the build's SparkSession (``distributor="pyspark"``).

img2dataset writes ``{shard}.tar`` (successes), ``{shard}.parquet`` (every input row with
``status`` and ``error_message``) and ``{shard}_stats.json`` (written last). This stage's
temporary folder survives a killed build, and img2dataset's incremental mode skips shards that
have their stats file, so a re-run fetches only the unfinished shards; a shard cut mid-way has no
stats file and is redone from scratch, so every sample ends up in exactly one tar.

img2dataset retries a shard that failed once, and then only prints that it gave up. So the stage checks that
every shard it cut from its input has its stats file (:func:`check_finished`): if not, it fails naming the
missing shards and rows, and stays unfinished, so that running the build again fetches just those shards.

Before img2dataset starts, a Spark step decides which rows may be fetched at all (:func:`prepare_input`):
rows whose URL host is a refused address in any spelling are dropped (``blocked_address``, never fetched,
witbuild/network.py), then each remaining image host's robots.txt is fetched once (witbuild/robots.py; kept in
``_robots/`` of the stage folder, so that a resumed download decides as the first attempt did) and the URLs it
disallows are dropped (``robots_disallowed``; ``robots_unreachable`` for hosts whose robots.txt answered 5xx or
not at all). In the processes that open the sockets every connection, redirect hops included, is checked on
the address it really goes to (img2dataset records ``blocked address: ...``), and a response that reserves
text and data mining (``tdm-reservation: 1``) is refused as ``opted_out`` before its body is read.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from witbuild import layout
from witbuild.counters import StageCounts
from witbuild.dedup.shard_signatures import SUFFIXES as SAVED_SUFFIXES
from witbuild.dedup.shard_signatures import read_events
from witbuild.download import HopRobots, ImageLimits, apply_env, error_class, img2dataset_guarded
from witbuild.network import BLOCKED_ADDRESS, allow_tuple, url_refusal
from witbuild.robots import (
    ROBOTS_MIN_BYTES,
    RobotsLimits,
    agent_tokens,
    fetch_all,
    origin_of,
    robots_refusal,
    user_agent_string,
)
from witbuild.spark import fs_and_path
from witbuild.stages.dedup import ROWS_PER_FILE

META_SUFFIX, STATS_SUFFIX = layout.SHARD_META_SUFFIX, layout.SHARD_STATS_SUFFIX
SHARD_DIGITS = 5  # img2dataset's default ``oom_shard_count`` names shards with 5 digits
ROBOTS_DIR = "_robots"  # inside the stage folder: what each image host's robots.txt said
ROW, ORIGIN, DROP = "_row", "_origin", "_drop"
LIST_INDEX, LIST_FILE = "_list_index", "_list_file"
BROADCAST_DROPS = 1_000_000  # rows not to fetch, sent to every task as a set up to this many, else joined away
ROBOTS_SCHEMA = pa.schema([(ORIGIN, pa.string()), ("outcome", pa.string()), ("status", pa.int32()),
                           ("body", pa.string()), ("oversize", pa.bool_()), ("error", pa.string())])

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext

log = logging.getLogger(__name__)


def forget_damaged_shards(fs: Any, folder: str) -> list[str]:
    """Remove every trace of shards whose stats file is not valid JSON (a kill while img2dataset wrote it):
    img2dataset would take them as finished and then fail reading them; removed, they are fetched again."""
    damaged = []
    for path in fs.glob(f"{folder}/*_stats.json"):
        try:
            with fs.open(path, "r") as fh:
                json.load(fh)
        except (ValueError, OSError):
            shard = path.rsplit("/", 1)[-1].split("_", 1)[0]
            damaged.append(shard)
            for ext in ("_stats.json", ".tar", ".parquet", *SAVED_SUFFIXES):
                if fs.exists(f"{folder}/{shard}{ext}"):
                    fs.rm(f"{folder}/{shard}{ext}")
    if damaged:
        log.warning("download: shards %s had a damaged stats file; they are fetched again", damaged)
    return damaged


# how the rows of the shards in the folder were ordered before img2dataset cut them; not ``.json``: img2dataset takes
# every JSON file in its output folder for a finished shard's stats
ROW_ORDER_FILE = "_row_order.txt"
ROW_ORDER = "files by name, rows in file; list files of whole shards"  # in_file_order, write_cut


def same_cut(fs: Any, out: str) -> None:
    """Records how the rows are ordered before img2dataset cuts them into shards; raises
    :class:`ShardsIncompleteError` where ``out`` holds shards cut in another order (an older witbuild followed
    Spark's read order and its sampled range bounds): a resume would cut the rest anew, and rows would land in two
    shards or none."""
    path = f"{out}/{ROW_ORDER_FILE}"
    if fs.exists(path):
        with fs.open(path, "r") as fh:
            recorded = fh.read().strip()
    else:
        recorded = None if fs.glob(f"{out}/*{STATS_SUFFIX}") else ROW_ORDER
    if recorded != ROW_ORDER:
        raise ShardsIncompleteError(
            f"download: {out} holds shards cut from rows in another order ({recorded or 'Spark read order'}, now "
            f"{ROW_ORDER}); resuming would put rows in two shards or in none: redo the stage with "
            "--from-stage download")
    with fs.open(path, "w") as fh:
        fh.write(ROW_ORDER + "\n")


def run_download(ctx: StageContext) -> StageCounts:
    import img2dataset

    cfg = ctx.cfg.download
    apply_env(cfg)
    fs, out = fs_and_path(ctx.output)
    fs.makedirs(out, exist_ok=True)
    forget_damaged_shards(fs, out)
    same_cut(fs, out)
    # a sibling of the (resumable) temporary folder: img2dataset's own files stay alone in ``out``
    allowed_dir = f"{out.rstrip('/')}.input"
    started = time.monotonic()
    counts, kept = prepare_input(ctx, fs, out, allowed_dir)
    prepared = time.monotonic()
    try:
        expected = expected_shards(fs, allowed_dir, cfg.number_sample_per_shard) if kept else {}
        if kept:
            # finalize's pHashes and thumbnails, computed as each image is written (witbuild/dedup/shard_signatures.py)
            hops = (HopRobots(agent_tokens(cfg.user_agent_token), user_agent_string(cfg.user_agent_token),
                              robots_limits(ctx.cfg)) if cfg.respect_robots else None)
            with img2dataset_guarded(ctx.cfg.network, cfg.cache_dir, sign=True, limits=ImageLimits.of(cfg),
                                     upright=cfg.upright, srgb=cfg.srgb,
                                     encoding=(cfg.encode_format, cfg.encode_quality), hop_robots=hops,
                                     max_image_memory=cfg.max_image_memory):
                _img2dataset(img2dataset, fs.unstrip_protocol(allowed_dir), ctx)
    finally:
        fs.rm(allowed_dir, recursive=True)
    fetched = time.monotonic()
    finished = check_finished(fs, out, expected)
    # the funnel, from the metadata of the shards img2dataset finished (every row it was given is in one of them)
    rows = (_metadata(ctx.spark, fs, out, finished).groupBy("status", "error_message").count().collect()
            if finished else [])
    counts.rows_in = counts.rows_dropped + kept
    for r in rows:
        if r["status"] == "success":
            counts.rows_out += r["count"]
        else:
            counts.drop(error_class(r["error_message"]), r["count"])
    _count_unwritten(counts, kept - sum(r["count"] for r in rows))
    for name in finished:  # what was done to the images on the way, recorded with each shard's signatures
        for event, n in read_events(fs.unstrip_protocol(f"{out}/{name}.tar")).items():
            counts.event(event, n)
    counts.info.update({"shards": len(finished), "image_size": cfg.image_size, "resize_mode": cfg.resize_mode})
    log.info("download: %.1f s choosing the rows to fetch (policy, robots.txt), %.1f s in img2dataset, %.1f s "
             "reading its metadata back", prepared - started, fetched - prepared, time.monotonic() - fetched)
    return counts


def _metadata(spark: Any, fs: Any, out: str, finished: list[str]) -> Any:
    """The metadata files of the ``finished`` shards, as one DataFrame. Read as the folder when it holds no other
    metadata file: more than 32 paths named one by one cost a Spark job to list them (~1 s at 104 shards)."""
    names = [f"{name}{META_SUFFIX}" for name in sorted(finished)]
    if sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{out}/*{META_SUFFIX}")) == names:
        return spark.read.option("pathGlobFilter", f"*{META_SUFFIX}").parquet(fs.unstrip_protocol(out))
    return spark.read.parquet(*(fs.unstrip_protocol(f"{out}/{name}") for name in names))


class ShardsIncompleteError(RuntimeError):
    """The shards img2dataset left do not hold the rows it was given (it gave up on some and only printed so):
    the stage must not finish without them."""


def expected_shards(fs: Any, input_dir: str, per_shard: int) -> dict[str, int]:
    """{shard name: rows} img2dataset cuts from the input files in ``input_dir``: as its ``Reader`` does, each
    file (in name order) into shards of ``per_shard`` rows, the ids running on from file to file."""
    import pyarrow.parquet as pq

    shards: dict[str, int] = {}
    for path in sorted(fs.glob(input_dir.rstrip("/") + "/*.parquet")):
        with fs.open(path, "rb") as fh:
            rows = pq.ParquetFile(fh).metadata.num_rows
        for start in range(0, rows, per_shard):
            shards[f"{len(shards):0{SHARD_DIGITS}d}"] = min(per_shard, rows - start)
    return shards


def check_finished(fs: Any, out: str, expected: dict[str, int]) -> list[str]:
    """The shards img2dataset finished (their stats file, written last, is there); raises
    :class:`ShardsIncompleteError` if any of ``expected`` is not among them, or if a finished shard is not one
    of them (a cut from other input: its rows would be counted twice or for nothing)."""
    finished = sorted(p.rsplit("/", 1)[-1][: -len(STATS_SUFFIX)] for p in fs.glob(f"{out}/*{STATS_SUFFIX}"))
    unfinished = sorted(set(expected) - set(finished))
    if unfinished:
        rows = sum(expected[name] for name in unfinished)
        raise ShardsIncompleteError(
            f"download: img2dataset did not finish {len(unfinished)} of {len(expected)} shards "
            f"({_names(unfinished)}): {rows} of {sum(expected.values())} rows are in no shard. The stage is left "
            "unfinished; run the build again to fetch these shards (the finished ones are kept and skipped).")
    foreign = sorted(set(finished) - set(expected))
    if foreign:
        raise ShardsIncompleteError(
            f"download: {out} holds shards this input does not cut ({_names(foreign)}); redo the stage with "
            "--from-stage download")
    return finished


def _names(shards: list[str], shown: int = 10) -> str:
    more = f", … {len(shards) - shown} more" if len(shards) > shown else ""
    return ", ".join(shards[:shown]) + more


def _count_unwritten(counts: StageCounts, n: int) -> None:
    """Rows of finished shards that are missing from their metadata: img2dataset lost them while writing (it
    prints ``Sample … failed``); fetching the shard again would not bring them back, so they are dropped."""
    if n > 0:
        log.error("download: %d rows are missing from the metadata of finished shards (img2dataset could not "
                  "write them): dropped as %s", n, layout.NOT_WRITTEN)
        counts.drop(layout.NOT_WRITTEN, n)
    elif n < 0:
        raise ShardsIncompleteError(f"download: the shards' metadata holds {-n} rows more than img2dataset was given")


ROW_BITS = 40  # a row's place in its file, in its id's low bits; the file's place in the others


def in_file_order(spark: Any, path: str) -> Any:
    """The rows of the Parquet files at ``path``, each with ``ROW``: its place in the files taken in name order,
    row after row (the order the previous stage wrote). Spark reads a folder largest file first, in splits that
    follow its settings and the machine's cores, so an id it numbers rows by (``monotonically_increasing_id``) would
    cut img2dataset's shards, and cut them again on a resume, in another order on another machine."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(path)
    names = sorted({f.rsplit("/", 1)[-1] for f in frame.inputFiles()})
    place = F.create_map(*(F.lit(x) for i, name in enumerate(names) for x in (name, i)))[F.col("_metadata.file_name")]
    place = F.when(place.isNotNull(), place).otherwise(F.raise_error(F.concat(
        F.lit("download: a file of the previous stage was not listed: "), F.col("_metadata.file_name"))))
    return frame.withColumn(ROW, F.shiftleft(place.cast("long"), ROW_BITS) + F.col("_metadata.row_index"))


def prepare_input(ctx: StageContext, fs: Any, out: str, dst: str) -> tuple[StageCounts, int]:
    """Write the rows img2dataset may fetch to ``dst``, in the previous stage's row order (img2dataset cuts its
    shards from that order, and its resume relies on the same cut); returns the rows dropped here (counts) and
    the number of rows kept."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    cfg = ctx.cfg
    for leftover in (dst, f"{dst}.decided", f"{dst}.cut"):
        if fs.exists(leftover):
            fs.rm(leftover, recursive=True)
    rows = in_file_order(ctx.spark, ctx.previous)
    out_names = [c for c in rows.columns if c != ROW]
    # only (row, url) goes through the Python steps: whole rows, there and back twice, cost more than the
    # decisions; the rows are read again for the URL list (the same files give the same row ids)
    tagged_schema = StructType([StructField(ROW, LongType(), False), StructField("url", StringType()),
                                StructField(ORIGIN, StringType()), StructField(DROP, StringType())])
    tagged = rows.select(ROW, "url").mapInArrow(_tagger(allow_tuple(cfg.network)), tagged_schema)
    counts = StageCounts()
    decided = f"{dst}.decided"
    if cfg.download.respect_robots:
        tagged = tagged.cache()  # read twice: for the hosts whose robots.txt to fetch, and to judge each row
        try:
            robots = _robots_table(ctx, fs, out, tagged)
            judged = tagged.join(robots, on=ORIGIN, how="left").mapInArrow(
                _robots_judge(agent_tokens(cfg.download.user_agent_token), tagged.schema.names), tagged.schema)
            judged.select(ROW, DROP).write.mode("overwrite").parquet(fs.unstrip_protocol(decided))
            counts.merge(_robots_events(robots))
        finally:
            tagged.unpersist()
    else:
        tagged.select(ROW, DROP).write.mode("overwrite").parquet(fs.unstrip_protocol(decided))
    table = ctx.spark.read.parquet(fs.unstrip_protocol(decided))
    kept = 0
    for r in table.groupBy(DROP).count().collect():
        if r[DROP] is None:
            kept = r["count"]
        else:
            counts.drop(r[DROP], r["count"])
    if counts.rows_dropped:
        dropped = table.where(F.col(DROP).isNotNull()).select(ROW)
        few = counts.rows_dropped <= BROADCAST_DROPS
        rows = rows.join(F.broadcast(dropped) if few else dropped, ROW, "left_anti")
    kept_per_file = table.where(F.col(DROP).isNull()).groupBy(F.shiftright(ROW, ROW_BITS).alias("place")).count()
    write_cut(fs, rows.select(ROW, *out_names), dict(kept_per_file.collect()), dst,
              list_file_rows(cfg.download.number_sample_per_shard))
    fs.rm(decided, recursive=True)
    for reason, n in sorted(counts.dropped.items()):
        log.warning("download: %d rows not fetched: %s", n, reason)
    return counts, kept


def list_file_rows(per_shard: int) -> int:
    """Rows per file of the list handed to img2dataset: about ``ROWS_PER_FILE``, a whole number of shards."""
    return max(per_shard, ROWS_PER_FILE // per_shard * per_shard)


def write_cut(fs: Any, rows: Any, kept_per_file: dict[int, int], dst: str, per_file: int) -> None:
    """Write ``rows`` (with ``ROW``, which :func:`in_file_order` gave them) to ``dst`` as files of exactly
    ``per_file`` rows (the last one fewer), in ``ROW`` order: img2dataset cuts each file into shards of its own,
    so shard k holds the rows k × per_shard … (k + 1) × per_shard − 1 of the list on every run of the stage and
    its resumes. Spark's range partitioning would cut the files at sampled bounds, which move from run to run.
    ``kept_per_file``: {an input file's place: its rows among ``rows``}."""
    import pyarrow.parquet as pq
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    place = F.shiftright(ROW, ROW_BITS)
    starts, total = [], 0  # the list index of each input file's first row
    for key in sorted(kept_per_file):
        starts += [F.lit(key).cast("long"), F.lit(total).cast("long")]
        total += kept_per_file[key]
    fs.makedirs(dst, exist_ok=True)
    if not total:
        return
    files = math.ceil(total / per_file)
    index = F.create_map(*starts)[place] + F.row_number().over(Window.partitionBy(place).orderBy(ROW)) - 1
    staged = f"{dst}.cut"
    (rows.withColumn(LIST_INDEX, index).withColumn(LIST_FILE, F.floor(F.col(LIST_INDEX) / per_file))
     .repartition(files, LIST_FILE).sortWithinPartitions(LIST_FILE, LIST_INDEX).drop(ROW, LIST_INDEX)
     .write.partitionBy(LIST_FILE).mode("overwrite").parquet(fs.unstrip_protocol(staged)))
    written = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{staged}/{LIST_FILE}=*"))
    if written != sorted(f"{LIST_FILE}={k}" for k in range(files)):  # a row outside the cut would be lost
        raise RuntimeError(f"download: the URL list came out as {written}, not {files} files")
    rows = 0
    for k in range(files):  # each file's rows were in one task, in order: one file each
        parts = fs.glob(f"{staged}/{LIST_FILE}={k}/*.parquet")
        if len(parts) != 1:
            raise RuntimeError(f"download: the URL list's file {k} came out as {len(parts)} files")
        with fs.open(parts[0], "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
        fs.mv(parts[0], f"{dst}/part-{k:05d}.parquet")
    if rows != total:
        raise RuntimeError(f"download: the URL list holds {rows} rows, not the {total} kept")
    fs.rm(staged, recursive=True)


# ``scheme://authority`` of a URL whose authority is plain (letters, digits, dots, hyphens, an optional port) and
# ends where every parser ends it: what the policy and the origin depend on, so one answer serves all its URLs
_PLAIN_AUTHORITY = re.compile(r"https?://[A-Za-z0-9.\-]+(?::[0-9]*)?(?=[/?#]|\Z)", re.ASCII)
MEMO_AUTHORITIES = 65_536  # a task's memo starts afresh past this many (a crawl of many hosts stays bounded)


def url_tags(url: str | None, allow: tuple[str, ...], memo: dict[str, tuple[str | None, str | None]]
             ) -> tuple[str | None, str | None]:
    """(``blocked_address`` or None, robots.txt origin or None) of ``url``: ``url_refusal`` and ``origin_of``,
    computed once per plain authority (``memo``; ~30 µs a URL otherwise, most of the download stage's Python
    work before img2dataset starts). Any other URL (spaces, user info, backslashes, IPv6) is parsed whole."""
    found = _PLAIN_AUTHORITY.match(url) if url else None
    if found is not None:
        prefix = found.group(0)
        tags = memo.get(prefix)
        if tags is None:
            if len(memo) >= MEMO_AUTHORITIES:
                memo.clear()
            tags = memo[prefix] = _parsed_tags(prefix + "/", allow)
        return tags
    return _parsed_tags(url, allow)


def _parsed_tags(url: str | None, allow: tuple[str, ...]) -> tuple[str | None, str | None]:
    drop = BLOCKED_ADDRESS if url_refusal(url, allow) is not None else None
    return drop, None if drop else origin_of(url)


def _tagger(allow: tuple[str, ...]) -> Any:
    """Adds each row's robots.txt origin, and ``blocked_address`` for a URL host the network policy refuses."""
    def run(batches: Any) -> Any:
        memo: dict[str, tuple[str | None, str | None]] = {}
        for batch in batches:
            tags = [url_tags(u, allow, memo) for u in batch.column("url").to_pylist()]
            yield pa.RecordBatch.from_arrays([*batch.columns, pa.array([t[1] for t in tags], pa.string()),
                                              pa.array([t[0] for t in tags], pa.string())],
                                             names=[*batch.schema.names, ORIGIN, DROP])
    return run


def _robots_judge(tokens: tuple[str, ...], names: list[str]) -> Any:
    """Sets ``_drop`` to robots_disallowed / robots_unreachable where the host's robots.txt forbids the URL;
    returns the columns ``names`` (the rows as they were before the join)."""
    def run(batches: Any) -> Any:
        for batch in batches:
            col = batch.schema.get_field_index
            urls, old, outcome, body = (batch.column(col(n)).to_pylist() for n in ("url", DROP, "outcome", "body"))
            drops = [d if d is not None else robots_refusal(u, o, b, tokens)
                     for u, d, o, b in zip(urls, old, outcome, body, strict=True)]
            arrays = [pa.array(drops, pa.string()) if n == DROP else batch.column(col(n)) for n in names]
            yield pa.RecordBatch.from_arrays(arrays, names=names)
    return run


def robots_limits(cfg: Any) -> RobotsLimits:
    """How long and how much an image host's robots.txt may take: the crawl's settings, and at least 500 KiB."""
    return RobotsLimits(timeout=cfg.crawl.read_timeout, total_timeout=cfg.crawl.total_timeout,
                        max_bytes=max(cfg.crawl.max_page_bytes, ROBOTS_MIN_BYTES))


def _robots_table(ctx: StageContext, fs: Any, out: str, tagged: Any) -> Any:
    """Each image host's robots.txt outcome, fetched once per build (a resumed download reads it back)."""
    from pyspark.sql import functions as F

    path = f"{out.rstrip('/')}/{ROBOTS_DIR}"
    if not fs.exists(f"{path}/{layout.SUCCESS_FILE}"):
        cfg = ctx.cfg
        limits = robots_limits(cfg)
        policy, agent = allow_tuple(cfg.network), user_agent_string(cfg.download.user_agent_token)
        threads = cfg.download.thread_count

        def fetch(batches: Any) -> Any:
            for batch in batches:
                answers = fetch_all(batch.column(ORIGIN).to_pylist(), policy, limits, agent, threads)
                yield pa.RecordBatch.from_pylist([{**a.__dict__, ORIGIN: a.origin} for a in answers],
                                                 schema=ROBOTS_SCHEMA)

        from pyspark.sql.pandas.types import from_arrow_schema
        spark_schema = from_arrow_schema(ROBOTS_SCHEMA)
        origins = tagged.where(F.col(DROP).isNull() & F.col(ORIGIN).isNotNull()).select(ORIGIN).distinct()
        parallel = max(1, ctx.spark.sparkContext.defaultParallelism)
        (origins.repartition(parallel, ORIGIN).mapInArrow(fetch, spark_schema)
         .write.mode("overwrite").parquet(fs.unstrip_protocol(path)))
    return ctx.spark.read.parquet(fs.unstrip_protocol(path))


def _robots_events(robots: Any) -> StageCounts:
    """Per-host events: robots.txt files fetched, missing (4xx: all allowed), unreachable, cut at the size cap."""
    counts = StageCounts()
    for r in robots.groupBy("outcome", "oversize").count().collect():
        counts.event("robots_hosts", r["count"])
        counts.event(f"robots_{r['outcome']}_hosts", r["count"])
        if r["oversize"]:
            counts.event("robots_oversize_hosts", r["count"])
    return counts


def _img2dataset(img2dataset: Any, url_list: str, ctx: StageContext) -> None:
    cfg = ctx.cfg.download
    img2dataset.download(
        url_list=url_list,
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=list(cfg.extra_columns),
        output_folder=ctx.output,
        output_format="webdataset",
        distributor="pyspark",
        processes_count=max(1, ctx.spark.sparkContext.defaultParallelism),
        thread_count=cfg.thread_count,
        subjob_size=cfg.subjob_size,
        number_sample_per_shard=cfg.number_sample_per_shard,
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        timeout=cfg.timeout,
        retries=cfg.retries,
        min_image_size=cfg.min_image_size,
        max_aspect_ratio=cfg.max_aspect_ratio,
        max_image_area=cfg.max_image_area,
        user_agent_token=cfg.user_agent_token,
        compute_hash="sha256",
        enable_wandb=False,
        incremental_mode="incremental",
        max_shard_retry=1,
    )
