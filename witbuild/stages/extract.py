"""Spark wrapper of the extract stage: crawl the seeds (one task per host), then one task per
WARC/WAT file, Arrow batches out, Parquet written by Spark."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from witbuild import schemas
from witbuild.counters import StageCounts
from witbuild.extract import extract_file
from witbuild.sources.inputs import InputError, expand_inputs
from witbuild.spark import counted, fs_and_path, join
from witbuild.stages.registry import CRAWL_CONTENT_SETTINGS

if TYPE_CHECKING:
    from witbuild.config import BuildConfig
    from witbuild.stages.context import StageContext

log = logging.getLogger(__name__)


def read_seeds(cfg: BuildConfig) -> list[str]:
    seeds = list(cfg.input.seeds)
    if cfg.input.seeds_file:
        fs, path = fs_and_path(cfg.input.seeds_file)
        with fs.open(path, "r", encoding="utf-8") as fh:
            seeds += [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
    return seeds


def crawl_warc_dir(cfg: BuildConfig) -> str:
    return cfg.crawl.warc_dir or join(cfg.output, "crawl")


#: Raised when the crawler's own behaviour changes what a crawl of the same host under the same settings fetches:
#: every host's WARC is then made again.
CRAWL_RULE = 1


def _host_slug(host_key: str) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in host_key.split("://", 1)[-1]).strip("-")
    return f"{safe[:60]}-{hashlib.sha1(host_key.encode()).hexdigest()[:10]}"


def crawl_warc_name(cfg: BuildConfig, host_key: str, host_seeds: list[str]) -> str:
    """The file name of a host's crawl: its host, and a digest of what the crawl of it depends on (its seeds, the
    crawl and network settings, the crawler's rule). A host's WARC is reused only when all are unchanged: a
    larger page budget or a new seed on a host crawled before would otherwise be silently ignored."""
    crawl = cfg.crawl.model_dump(mode="json", include=set(CRAWL_CONTENT_SETTINGS) - {"user_agent"})
    crawl["robots_token"] = cfg.crawl.robots_token.lower()
    network = {k: sorted(v) if isinstance(v, list) else v for k, v in cfg.network.model_dump(mode="json").items()}
    settings = {"seeds": sorted(host_seeds), "crawl": crawl, "network": network, "rule": CRAWL_RULE}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{_host_slug(host_key)}-{digest}.warc.gz"


def _drop_other_crawls(fs: object, root: str, host_key: str, keep: str) -> bool:
    """Remove the host's WARCs made under other seeds or settings; whether there were any."""
    slug = _host_slug(host_key)
    own = re.compile(rf"{re.escape(slug)}(-[0-9a-f]{{10}})?\.warc\.gz")  # not another host's slug that starts alike
    named = [p for p in fs.glob(f"{root}/{slug}*.warc.gz") if own.fullmatch(p.rsplit("/", 1)[-1])]
    stale = [p for p in named if p.rsplit("/", 1)[-1] != keep]
    for path in stale:
        fs.rm(path)
    return bool(stale)


def run_crawl(ctx: StageContext) -> tuple[list[str], StageCounts]:
    """Crawl every seed host in its own Spark task; returns the WARC files and the counters.

    A host whose WARC already exists (an earlier run crawled it completely under the same seeds and settings:
    files appear under their final name only when done) is not crawled again; one made under other seeds or
    settings is removed and the host crawled again, counted ``crawl_hosts_recrawled``.
    """
    cfg = ctx.cfg
    seeds = read_seeds(cfg)
    total = StageCounts()
    if not seeds:
        return [], total
    from witbuild.sources.crawl import group_seeds_by_host

    by_host = group_seeds_by_host(seeds)
    warc_dir = crawl_warc_dir(cfg)
    fs, root = fs_and_path(warc_dir)
    fs.makedirs(root, exist_ok=True)
    todo, warcs = [], []
    for host, host_seeds in sorted(by_host.items()):
        name = crawl_warc_name(cfg, host, host_seeds)
        warc = join(warc_dir, name)
        warcs.append(warc)
        if fs.exists(fs_and_path(warc)[1]):
            total.event("crawl_hosts_reused")
            continue
        if _drop_other_crawls(fs, root, host, name):
            total.event("crawl_hosts_recrawled")
            log.info("crawl of %s: its seeds or the crawl settings changed since its WARC was made; crawling it "
                     "again", host)
        todo.append((host, json.dumps(host_seeds), warc))
    if todo:
        crawl_cfg, network_cfg = cfg.crawl, cfg.network

        def crawl_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from witbuild.sources.crawl import crawl_host

            for batch in batches:
                for host, seeds_json, warc in zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True):
                    counts = StageCounts()
                    try:
                        crawl_host(json.loads(seeds_json), crawl_cfg, warc, counts, network_cfg)
                        counts.event("crawl_hosts")
                    except Exception:  # one host's failure must not fail the others
                        log.exception("crawl of %s failed", host)
                        counts.event("crawl_hosts_failed")
                    yield pa.RecordBatch.from_pydict({"host": [host], "counts": [counts.to_json()]})

        # a schema given, not inferred from the first rows (which takes a Spark job of its own)
        df = ctx.spark.sparkContext.parallelize(todo, len(todo)).toDF("host string, seeds string, warc string")
        rows = df.mapInArrow(crawl_task, "host string, counts string").collect()
        for row in rows:
            total.merge(StageCounts.from_dict(json.loads(row["counts"])))
    existing = [w for w in warcs if fs.exists(fs_and_path(w)[1])]
    return existing, total


UNREADABLE_FILE_EVENTS = ("not_a_warc_file", "unreadable_file")


def check_some_input_read(counts: StageCounts, files: list[str]) -> None:
    """Raise InputError when no input file could be read at all (an HTML page or a CDX index saved under a WARC
    name, a path nobody may read): counted as skips, such a build would go on and "succeed" with nothing in it.
    Some bad files among good ones stay a counted, logged skip."""
    bad = {name: counts.events.get(name, 0) for name in UNREADABLE_FILE_EVENTS}
    if counts.rows_in == 0 and files and sum(bad.values()) >= len(files):
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3:,} more" if len(files) > 3 else "")
        why = ", ".join(f"{k} {v:,}" for k, v in bad.items() if v)
        raise InputError(f"extract: none of the {len(files):,} input files could be read as WARC or WAT ({why}): "
                         f"{shown}")


def run_extract(ctx: StageContext) -> StageCounts:
    cfg = ctx.cfg
    files = expand_inputs(cfg.input.paths) if cfg.input.paths else []
    crawl_warcs, crawl_counts = run_crawl(ctx)
    files += [w for w in crawl_warcs if w not in files]
    if not files:
        raise ValueError("extract: nothing to read (no input files, and the crawl produced no WARC)")
    log.info("extract: %d input files", len(files))

    extract_cfg = cfg.extract
    schema = schemas.load("candidates")

    def extract_task(batches: Iterator[pa.RecordBatch], counts: StageCounts) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column(0).to_pylist():
                yield from extract_file(path, extract_cfg, counts)

    spark = ctx.spark
    df = spark.sparkContext.parallelize([(f,) for f in files], len(files)).toDF("path string")  # one file per task
    out = df.mapInArrow(counted(extract_task, ctx.counts_dir), schema.spark())
    out.write.mode("overwrite").parquet(ctx.output)
    from witbuild.spark import read_task_counts

    counts = read_task_counts(ctx.counts_dir)
    counts.unit = "images"
    check_some_input_read(counts, files)
    for name, n in crawl_counts.events.items():
        counts.event(name if name.startswith("crawl") else f"crawl_{name}", n)
    return counts
