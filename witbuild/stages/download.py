"""Stage download: img2dataset's real downloader on the build's SparkSession (``distributor="pyspark"``).

img2dataset writes ``{shard}.tar`` (successes), ``{shard}.parquet`` (every input row with
``status`` and ``error_message``) and ``{shard}_stats.json`` (written last). This stage's
temporary folder survives a killed build, and img2dataset's incremental mode skips shards that
have their stats file, so a re-run fetches only the unfinished shards; a shard cut mid-way has no
stats file and is redone from scratch, so every sample ends up in exactly one tar.

The build's network policy (``network:``, witbuild/network.py) is applied twice: rows whose URL host is a
refused address in any spelling are dropped before img2dataset sees them (``blocked_address`` in the
funnel, never fetched), and in the processes that open the sockets every connection, redirect hops
included, is checked on the address it really goes to (img2dataset records ``blocked address: ...``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from witbuild.counters import StageCounts
from witbuild.download import apply_env, drop_refused_urls, error_class, img2dataset_guarded
from witbuild.network import BLOCKED_ADDRESS
from witbuild.spark import fs_and_path

if TYPE_CHECKING:
    from witbuild.pipeline import StageContext

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
            for ext in ("_stats.json", ".tar", ".parquet"):
                if fs.exists(f"{folder}/{shard}{ext}"):
                    fs.rm(f"{folder}/{shard}{ext}")
    if damaged:
        log.warning("download: shards %s had a damaged stats file; they are fetched again", damaged)
    return damaged


def run_download(ctx: StageContext) -> StageCounts:
    import img2dataset

    cfg = ctx.cfg.download
    apply_env(cfg)
    fs, out = fs_and_path(ctx.output)
    fs.makedirs(out, exist_ok=True)
    forget_damaged_shards(fs, out)
    # a sibling of the (resumable) temporary folder: img2dataset's own files stay alone in ``out``
    allowed_dir = f"{out.rstrip('/')}.input"
    if fs.exists(allowed_dir):
        fs.rm(allowed_dir, recursive=True)
    kept, blocked = drop_refused_urls(fs, fs_and_path(ctx.previous)[1], allowed_dir, ctx.cfg.network)
    if blocked:
        log.warning("download: %d rows name a refused address (network.allow_addresses) and are not fetched",
                    blocked)
    if kept:
        with img2dataset_guarded(ctx.cfg.network):
            _img2dataset(img2dataset, fs.unstrip_protocol(allowed_dir), ctx)
    fs.rm(allowed_dir, recursive=True)
    # the funnel, from the shard metadata img2dataset wrote (every input row is in one of them)
    names = sorted(fs.ls(out, detail=False))
    parquets = [fs.unstrip_protocol(p) for p in names if p.endswith(".parquet")]
    rows = (ctx.spark.read.parquet(*parquets).groupBy("status", "error_message").count().collect()
            if parquets else [])
    counts = StageCounts(rows_in=blocked)
    counts.drop(BLOCKED_ADDRESS, blocked)
    for r in rows:
        counts.rows_in += r["count"]
        if r["status"] == "success":
            counts.rows_out += r["count"]
        else:
            counts.drop(error_class(r["error_message"]), r["count"])
    n_tars = sum(1 for p in names if p.endswith(".tar"))
    counts.info.update({"shards": n_tars, "image_size": cfg.image_size, "resize_mode": cfg.resize_mode})
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
