"""Run an experiment: the pool once, each variant through balance → dedup → download → finalize, the same training
per seed on each, one evaluation on the same held-out folder, and the report.

Every variant's build folder starts from copies of the pool's extract, filter and match stages, so the build's own
stage fingerprints decide what is reused (a variant that changes a filter setting redoes filter and match; a re-run
of the experiment reuses every finished stage). A variant that fails (its build, or a training run) is recorded
with its error and the others go on; a build that keeps no sample is such a failure, and trains nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from witbuild.experiment.config import (
    BALANCED,
    BASELINE,
    BOOTSTRAP,
    ExperimentConfig,
    ExperimentError,
    check_heldout,
    check_inputs,
    check_train_config,
    check_variants,
)
from witbuild.output_folder import folder_problem
from witbuild.provenance import code_revision

log = logging.getLogger(__name__)

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "trainer" / "train.py"
POOL_STAGES = ("extract", "filter", "match")
BOOTSTRAP_STAGES = ("extract", "filter", "match", "balance", "dedup", "download")  # reused from balanced
CLASS_COUNTS_FILE = "class_counts.json"


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Build, train and evaluate every variant; returns the report's summary (also written to ``cfg.output``)."""
    from witbuild.experiment.report import write_report
    from witbuild.spark import get_session

    out = Path(cfg.output)
    if problem := folder_problem(out):  # known before any variant is built
        raise ExperimentError(f"output {problem}")
    check_train_config(cfg)
    if not TRAIN_SCRIPT.is_file():
        raise ExperimentError(f"the trainer is not at {TRAIN_SCRIPT}: run the experiment from a source checkout")
    if cfg.demo_web is not None:
        from witbuild.demo.server import demo_job_settings

        cfg = cfg.model_copy(update={"build_sets": [*demo_job_settings(cfg.demo_web.pages)[1::2], *cfg.build_sets]})
    # every variant's download keeps its answers in one cache, so an image two variants share is fetched once
    cache = (out / "download-cache").resolve()
    cfg = cfg.model_copy(update={"build_sets": [*cfg.build_sets, f"download.cache_dir={cache}"]})
    planned = check_variants(cfg, cfg.inputs or (["demo-00000.warc.gz"] if cfg.demo_web else None))
    if cfg.zeroshot_dir:
        check_heldout(cfg.heldout_dir())
    if cfg.demo_web is None:
        check_inputs(planned[BALANCED])
    started = time.monotonic()
    seconds: dict[str, Any] = {"builds": {}, "training": {}}
    with _build_inputs(cfg, out) as (inputs, served):
        heldout = cfg.heldout_dir().resolve()
        _, names = check_heldout(heldout)
        configs = check_variants(cfg, inputs)
        spark = get_session(configs[BALANCED].spark)
        t0 = time.monotonic()
        pool = _build_pool(spark, configs[BALANCED], out / "pool")
        counts = class_counts(spark, pool / "stages" / "match", names)
        counts_file = out / CLASS_COUNTS_FILE
        counts_file.write_text(json.dumps(counts, indent=1) + "\n")
        seconds["pool"] = round(time.monotonic() - t0, 1)
        variants = {name: {"sets": sets, "dataset": {}, "runs": {}, "error": None}
                    for name, sets in cfg.variant_sets().items()}
        for name in (BALANCED, BASELINE, *cfg.variants):
            t0, before = time.monotonic(), len(served)
            _build_variant(spark, cfg, inputs, name, variants, pool, out)
            seconds["builds"][name] = round(time.monotonic() - t0, 1)
            if cfg.demo_web is not None:  # what reached the server: the cache answers the rest
                variants[name]["dataset"]["image_requests"] = sum("/img/" in p for p in served[before:])
    for name, v in variants.items():
        if v["error"] is None:
            t0 = time.monotonic()
            _train_variant(cfg, name, v, out, heldout, counts_file)
            seconds["training"][name] = round(time.monotonic() - t0, 1)
    if cfg.bootstrap is not None:
        t0 = time.monotonic()
        _build_bootstrap(spark, cfg, inputs, variants, out)
        seconds["builds"][BOOTSTRAP] = round(time.monotonic() - t0, 1)
        if variants[BOOTSTRAP]["error"] is None:
            t0 = time.monotonic()
            _train_variant(cfg, BOOTSTRAP, variants[BOOTSTRAP], out, heldout, counts_file)
            seconds["training"][BOOTSTRAP] = round(time.monotonic() - t0, 1)
    seconds["total"] = round(time.monotonic() - started, 1)
    results = {"baseline": BASELINE, "seeds": cfg.seeds, "variants": variants, "heldout": str(heldout),
               "class_counts": counts, "train_config": cfg.train_config, "train_sets": cfg.train_sets,
               "seconds": seconds, "config": cfg.model_dump(mode="json"), "code": code_revision()}
    return write_report(results, out)


@contextlib.contextmanager
def _build_inputs(cfg: ExperimentConfig, out: Path) -> Iterator[tuple[list[str], list[str]]]:
    """The build's inputs and the paths the demo server was asked for; with ``demo_web`` the demo web is written
    and served (on 127.0.0.1, for the downloads) while the variants are built, and its held-out folders written."""
    if cfg.demo_web is None:
        yield list(cfg.inputs), []
        return
    import errno

    from witbuild.demo.eval_images import write_eval_colours, write_eval_digits
    from witbuild.demo.server import DemoWebServer
    from witbuild.demo.web import write_warc

    d = cfg.demo_web
    try:
        server = DemoWebServer(n_pages=d.pages, seed=d.seed, port=d.port)
    except OSError as exc:
        why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ExperimentError(f"cannot serve the demo web on 127.0.0.1:{d.port}: {why}") from None
    with server as web:
        warc = out / "web" / "demo-00000.warc.gz"
        warc.parent.mkdir(parents=True, exist_ok=True)
        write_warc(list(web.pages.values()), warc)
        write_eval_digits(out / "eval" / "digits")
        write_eval_colours(out / "eval" / "colours")
        yield [str(warc)], web.requests


def _build_pool(spark: Any, base: Any, folder: Path) -> Path:
    """extract → filter → match once, under the balanced variant's config (the variants differ after it)."""
    from witbuild.pipeline import run_build

    log.info("experiment: building the pool (extract, filter, match) in %s", folder)
    run_build(spark, base.model_copy(update={"output": str(folder)}), until_stage="match")
    return folder


def class_counts(spark: Any, matched: Path, names: dict[str, str]) -> dict[str, int]:
    """Pairs of the matched pool whose text names each class (its name or a plural of it, as a whole word):
    the frequency that splits the classes into head and tail. One Spark aggregation over the pool."""
    from pyspark.sql import functions as F

    text = spark.read.parquet(str(matched)).select(F.lower("text").alias("t"))
    cols = [F.sum(F.col("t").rlike(r"\b\Q" + name.lower() + r"\E(?:e?s)?\b").cast("long")).alias(f"c{i}")
            for i, name in enumerate(names.values())]
    row = text.agg(*cols).collect()[0]
    return {c: int(row[f"c{i}"] or 0) for i, c in enumerate(names)}


def _build_variant(spark: Any, cfg: ExperimentConfig, inputs: list[str], name: str, variants: dict, pool: Path,
                   out: Path, stages: tuple[str, ...] = POOL_STAGES) -> None:
    from witbuild.config import load_config
    from witbuild.pipeline import run_build

    v = variants[name]
    if name == BASELINE:
        size = variants[BALANCED]["dataset"].get("balanced_pairs")
        if not size:
            v["error"] = "the balanced variant failed, so raw has no size to match"
            return
        v["sets"] = [*v["sets"], f"balance.target_size={size}"]
    folder = out / "variants" / name / "build"
    try:
        _seed_stages(pool, folder, stages)
        vcfg = load_config(cfg.build_config, inputs=inputs or None, output=str(folder),
                           sets=[*cfg.build_sets, *v["sets"]])
        log.info("experiment: building variant %s (%s)", name, " ".join(v["sets"]) or "the build config as it is")
        results = {r.name: r.counts for r in run_build(spark, vcfg)}
    except Exception as exc:  # one variant's failure leaves the others' results
        log.exception("experiment: variant %s failed to build", name)
        v["error"] = f"build failed: {exc}"
        return
    balance = results["balance"]  # distinct pairs (what raw's uniform sample draws from), rows where not recorded
    v["dataset"] = {"pool_pairs": balance.info.get("pool", balance.rows_in),
                    "balanced_pairs": balance.info.get("pairs_out", balance.rows_out),
                    "downloaded": results["download"].rows_out, "samples": results["finalize"].rows_out}
    if "low_clip_score" in results["finalize"].dropped:
        v["dataset"]["low_clip_score"] = results["finalize"].dropped["low_clip_score"]
    v["build"] = str(folder)
    v["error"] = empty_build(v["dataset"])


def empty_build(dataset: dict[str, int]) -> str | None:
    """Why a variant's build leaves nothing to train on, or None: with 0 samples every training run would fail
    on its own, one torchrun per seed, each with a less telling message."""
    if dataset.get("samples"):
        return None
    steps = ", ".join(f"{k} {dataset[k]:,}" for k in ("pool_pairs", "balanced_pairs", "downloaded") if k in dataset)
    return f"build kept 0 samples ({steps}): no training run launched"


def _build_bootstrap(spark: Any, cfg: ExperimentConfig, inputs: list[str], variants: dict, out: Path) -> None:
    """The bootstrap variant: the balanced build's stages up to download reused, finalize redone with the balanced
    model (seed ``cfg.bootstrap_seed()``) scoring every sample and keeping the best ``keep_fraction``. Nothing is
    fetched again: the download stage is the balanced variant's."""
    assert cfg.bootstrap is not None
    seed = cfg.bootstrap_seed()
    run = (out / "variants" / BALANCED / "runs" / f"seed{seed}").resolve()
    v = variants[BOOTSTRAP] = {"sets": [f"clip_score.checkpoint={run}",
                                        f"clip_score.keep_fraction={cfg.bootstrap.keep_fraction}"],
                               "dataset": {}, "runs": {}, "error": None}
    if str(seed) not in variants[BALANCED]["runs"]:  # another seed's failure leaves this one's model usable
        v["error"] = f"the balanced variant has no trained model of seed {seed} to score with"
        return
    _build_variant(spark, cfg, inputs, BOOTSTRAP, variants, out / "variants" / BALANCED / "build", out,
                   stages=BOOTSTRAP_STAGES)


def _seed_stages(source: Path, folder: Path, stages: tuple[str, ...]) -> None:
    """Finished stages and the query list of ``source`` in the variant's build folder (hard links where possible)."""
    for rel in [*(Path("stages") / s for s in stages), Path("querylist")]:
        dst = folder / rel
        if dst.exists():
            shutil.rmtree(dst)
        if (source / rel).exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / rel, dst, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _train_variant(cfg: ExperimentConfig, name: str, v: dict, out: Path, heldout: Path, counts_file: Path) -> None:
    failed = []
    for seed in cfg.seeds:
        run_dir = out / "variants" / name / "runs" / f"seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        sets = [*cfg.train_sets, f"seed={seed}", f"eval.zeroshot_dir={heldout}",
                f"eval.class_counts={counts_file.resolve()}"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
               str(TRAIN_SCRIPT), "--data", v["build"], "--config", cfg.train_config, "--output", str(run_dir),
               *[a for s in sets for a in ("--set", s)]]
        log.info("experiment: training %s, seed %d", name, seed)
        with open(run_dir / "train.log", "w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        eval_file = run_dir / "eval.json"
        if rc != 0 or not eval_file.is_file():
            failed.append(f"seed {seed} (exit {rc}; {run_dir / 'train.log'})")
            continue
        v["runs"][str(seed)] = run_metrics(json.loads(eval_file.read_text()))
    if failed:
        v["error"] = "training failed: " + ", ".join(failed)


def run_metrics(ev: dict) -> dict[str, float | None]:
    """The report's metrics from one run's eval.json."""
    z, probe, r = ev.get("zeroshot") or {}, ev.get("linear_probe") or {}, ev.get("retrieval") or {}
    both = [r.get("image_to_text_R@1"), r.get("text_to_image_R@1")]
    return {"zeroshot": z.get("top1"), "head": (z.get("head") or {}).get("top1"),
            "tail": (z.get("tail") or {}).get("top1"), "linear_probe": probe.get("top1"),
            "retrieval_R@1": sum(both) / 2 if None not in both else None}
