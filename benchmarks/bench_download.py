"""Images/s through witbuild's dedup + download + finalize, next to plain img2dataset.

Both fetch the same URL list from the same server on 127.0.0.1 (images prepared before timing,
so the server costs little), on this machine's cores:

- plain img2dataset: ``distributor="multiprocessing"`` with one process per core, the same
  resize/encode settings, writing WebDataset shards;
- witbuild: the stages dedup → download (img2dataset, ``distributor="pyspark"`` on local[N]) →
  finalize (sha256 + pHash dedup, rewritten shards, index), from a finished balance stage.

Run: ``.venv/bin/python benchmarks/bench_download.py [--images 3000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

DATA = Path(__file__).resolve().parent / "_data"


def make_rows(server, n: int) -> list[dict]:
    from witbuild.demo.images import draw_image, encode
    from witbuild.extract import uid_of

    rows = []
    for i in range(n):
        url = server.add(f"/img/b{i:06d}.jpg", encode(draw_image(10_000 + i, (400, 300)), "jpg", 90), "image/jpeg")
        text = f"benchmark image number {i} with colourful shapes"
        rows.append({"uid": uid_of(url, text), "url": url, "text": text, "text_source": "alt", "url_source": "src",
                     "page_url": "http://127.0.0.1/bench.html", "page_lang": "en", "source_file": "bench",
                     "source_format": "warc", "record_offset": 0, "crawl_date": None, "lang": "en",
                     "lang_score": 0.9, "matched": [i % 100], "keep_probability": 1.0})
    return rows


def run_plain(url_parquet: Path, out: Path, cfg, processes: int) -> float:
    import img2dataset

    started = time.perf_counter()
    img2dataset.download(
        url_list=str(url_parquet), input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=list(cfg.extra_columns), output_folder=str(out), output_format="webdataset",
        distributor="multiprocessing", processes_count=processes, thread_count=cfg.thread_count,
        number_sample_per_shard=cfg.number_sample_per_shard, image_size=cfg.image_size,
        resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format, encode_quality=cfg.encode_quality, timeout=cfg.timeout,
        retries=cfg.retries, min_image_size=cfg.min_image_size, max_aspect_ratio=cfg.max_aspect_ratio,
        max_image_area=cfg.max_image_area, user_agent_token=cfg.user_agent_token, compute_hash="sha256",
        enable_wandb=False,
    )
    return time.perf_counter() - started


def run_witbuild(spark, rows: list[dict], out: Path, sets: list[str]) -> tuple[float, dict]:
    import pyarrow.parquet as pq

    from witbuild import schemas
    from witbuild.config import load_config
    from witbuild.counters import StageCounts
    from witbuild.pipeline import COUNTS_FILE, run_build

    for name in ("extract", "filter", "match", "balance"):
        stage = out / "stages" / name
        stage.mkdir(parents=True)
        (stage / "_SUCCESS").touch()
        (stage / COUNTS_FILE).write_text(json.dumps(StageCounts(rows_out=len(rows)).to_dict()))
    table = schemas.load("balanced").table({k: [r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, out / "stages" / "balance" / "part-0.parquet")
    cfg = load_config(inputs=["unused.warc.gz"], output=str(out), sets=sets)
    started = time.perf_counter()
    results = run_build(spark, cfg)
    seconds = time.perf_counter() - started
    return seconds, {r.name: {"seconds": round(r.seconds, 2), **r.counts.to_dict()} for r in results if not r.skipped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--json", type=Path, default=DATA / "bench_download.json")
    args = p.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from witbuild.config import SparkConfig
    from witbuild.demo.images import ImageServer
    from witbuild.download import DownloadConfig, apply_env
    from witbuild.spark import get_session

    cores = os.cpu_count() or 1
    per_shard = max(100, args.images // (2 * cores))
    sets = ["download.timeout=10", "download.retries=0", f"download.number_sample_per_shard={per_shard}",
            "download.min_image_size=100"]
    # the images are served on 127.0.0.1, which the network policy refuses unless allowed
    sets.append("network.allow_addresses=['127.0.0.1']")
    dl_cfg = DownloadConfig(timeout=10, retries=0, number_sample_per_shard=per_shard, min_image_size=100)
    apply_env(dl_cfg)
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        with ImageServer() as server:
            print(f"preparing {args.images:,} images on {server.base_url} ...", flush=True)
            rows = make_rows(server, args.images)
            url_parquet = work / "urls.parquet"
            pq.write_table(pa.Table.from_pylist([{c: r[c] for c in ("url", "text", *dl_cfg.extra_columns)}
                                                 for r in rows]), url_parquet)
            mb = sum(len(server.resolve(f"/img/b{i:06d}.jpg").body) for i in range(args.images)) / 1e6
            print("plain img2dataset ...", flush=True)
            plain_s = run_plain(url_parquet, work / "plain", dl_cfg, cores)
            print("witbuild dedup + download + finalize ...", flush=True)
            spark = get_session(SparkConfig(master=f"local[{cores}]", conf={"spark.ui.enabled": "false"}),
                                executor_env=dl_cfg.opencv_env)
            wit_s, stages = run_witbuild(spark, rows, work / "wit", sets)
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    kept = stages["finalize"]["rows_out"]
    fig = {
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine()},
        "images": args.images, "megabytes": round(mb, 1), "number_sample_per_shard": per_shard,
        "plain_img2dataset": {"seconds": round(plain_s, 2), "images_per_s": round(args.images / plain_s, 1)},
        "witbuild": {"seconds": round(wit_s, 2), "images_per_s": round(args.images / wit_s, 1), "kept": kept,
                     "stages": {k: v["seconds"] for k, v in stages.items()}},
        "overhead": round(wit_s / plain_s - 1, 3),
    }
    print(f"\ninput: {args.images:,} JPEG images (400x300, {mb:.1f} MB) from a server on 127.0.0.1; "
          f"{cores} cores; resize to 256 (keep_ratio), {per_shard} samples per shard")
    print(f"{'run':<44}{'seconds':>10}{'images/s':>12}")
    print(f"{'plain img2dataset (multiprocessing)':<44}{plain_s:>10.1f}{args.images / plain_s:>12.1f}")
    print(f"{'witbuild dedup+download+finalize':<44}{wit_s:>10.1f}{args.images / wit_s:>12.1f}")
    for name, sec in fig["witbuild"]["stages"].items():
        print(f"  {name:<42}{sec:>10.1f}")
    print(f"overhead of witbuild over plain img2dataset: {fig['overhead']:+.1%} (aim: <= +10%); "
          f"final samples {kept:,} of {args.images:,}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(fig, indent=1))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
