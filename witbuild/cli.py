"""The ``witbuild`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError

from witbuild import __version__
from witbuild.demo import DEMO_HOST, DEMO_PORT
from witbuild.output_folder import folder_problem
from witbuild.stats.cli import stats_command
from witbuild.yaml_io import first_error, validate

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build CLIP-style image-text datasets from the web.")
app.command("stats")(stats_command)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def version() -> None:
    """Print witbuild's version."""
    typer.echo(__version__)


@app.command("demo-web")
def demo_web(
    out: Path = typer.Argument(..., help="Folder for the WARC and WAT files."),
    pages: int = typer.Option(2000, min=1, help="Number of pages."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same files."),
    site: str = typer.Option("http://demo.witbuild.test", help="scheme://host[:port] of the pages' URLs."),
) -> None:
    """Write a synthetic web (pages with images and captions of every kind) as WARC and WAT files, and the
    held-out digits and colours as labelled folders (eval/digits, eval/colours) for zero-shot evaluation."""
    from witbuild.demo.eval_images import write_eval_colours, write_eval_digits
    from witbuild.demo.web import generate_pages, summarize, write_warc, write_wat

    _check_site(site)
    if problem := folder_problem(out):
        _fail(problem)
    out.mkdir(parents=True, exist_ok=True)
    page_list = list(generate_pages(pages, site=site, seed=seed))
    warc, wat = out / "demo-00000.warc.gz", out / "demo-00000.warc.wat.gz"
    write_warc(page_list, warc)
    write_wat(page_list, wat)
    held_out = sum(write_eval_digits(out / "eval" / "digits").values())
    colours = write_eval_colours(out / "eval" / "colours")
    typer.echo(f"wrote {warc} and {wat}: {_describe(summarize(page_list))}; "
               f"{held_out} held-out digits in {out / 'eval' / 'digits'}; {sum(colours.values())} held-out drawings "
               f"in {len(colours)} colours in {out / 'eval' / 'colours'}")


def _check_site(site: str) -> None:
    """The pages' origin: an http(s) ``scheme://host[:port]`` and nothing more, as every URL of the web starts."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(site)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        _fail(f"--site {site!r}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        _fail(f"--site {site!r}: give scheme://host[:port] with scheme http or https")


def _describe(figures: dict[str, int]) -> str:
    return (f"{figures['pages']} pages, {figures['img_tags']} <img> tags, {figures['downloadable']} downloadable "
            f"images ({figures['digit']} digits of {figures['distinct_digits']} distinct scans, {figures['drawn']} "
            f"drawings, {figures['skimage']} skimage samples), {figures['broken']} broken links")


@app.command("balance-plan")
def balance_plan(
    build: Path = typer.Argument(..., help="A build output folder whose match stage has finished."),
    t: int = typer.Option(None, min=1, help="Cap per entry (default: the build config's balance.t, else 20,000)."),
    target_size: int = typer.Option(None, min=1, help="Solve t for this expected number of pairs instead."),
    top: int = typer.Option(10, min=0, help="How many of the most matched entries to list."),
) -> None:
    """Dry run of balancing: expected size, t, and the head/tail split, without writing anything."""
    import numpy as np

    from witbuild import layout
    from witbuild.config import load_config
    from witbuild.stages.balance import plan_matched

    if not build.is_dir():
        _fail(f"{build}: no such build folder")
    if not (Path(layout.stage_dir(str(build), "match")) / layout.SUCCESS_FILE).is_file():
        _fail(f"{build}/stages/match is not a finished match stage")
    try:  # this folder, wherever the build wrote it from (a relative output, a copied build)
        cfg = load_config(layout.config_path(str(build)), output=str(build))
        bcfg = _plan_settings(cfg.balance, t, target_size)
        entries, manifest = _matched_querylist(build)
    except ValidationError as exc:
        _fail(f"{layout.config_path(str(build))}: {first_error(exc)}")
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    from witbuild.spark import get_session

    spark = get_session(cfg.spark)
    plan = plan_matched(spark, layout.stage_dir(str(build), "match"), len(entries), bcfg)
    typer.echo(f"query list {manifest['version']} ({len(entries):,} entries)")
    typer.echo(plan.describe())
    for i in np.argsort(-plan.counts, kind="stable")[:top]:
        c = int(plan.counts[i])
        if plan.uniform is not None:
            typer.echo(f"  {entries[i]!r:<30} c_e = {c:>10,}  expected kept {c * plan.uniform:>12,.1f}")
        else:  # a pair is drawn at the largest p of its entries: an entry keeps min(c_e, t) or more
            typer.echo(f"  {entries[i]!r:<30} c_e = {c:>10,}  p_e = {min(1.0, plan.t / max(c, 1)):.4f}  "
                       f"min(c_e, t) {min(c, plan.t):>12,.1f}")


def _matched_querylist(build: Path) -> tuple[list[str], dict]:
    """The query list the build's match stage matched against, as the build keeps it: a dry run makes no list,
    and ids read against another list would name other entries."""
    import json

    from witbuild import layout
    from witbuild.curate.querylist_artifact import stored_querylist

    entries, manifest = stored_querylist(str(build))
    counts = Path(layout.stage_dir(str(build), "match")) / layout.COUNTS_FILE
    matched = json.loads(counts.read_text(encoding="utf-8")).get("info", {}).get("querylist_version")
    if matched != manifest.get("version"):
        raise ValueError(f"{build}/querylist is version {manifest.get('version')}, but the match stage matched "
                         f"against {matched}: the list changed since; run the build again to redo match")
    return entries, manifest


def _plan_settings(bcfg, t: int | None, target_size: int | None):
    """The build's balance settings with ``--t`` or ``--target-size`` in place of its own; the method stays."""
    from witbuild.curate.balance import BalanceConfig

    if t is not None and target_size is not None:
        raise ValueError("give --t or --target-size, not both")
    if t is None and target_size is None:
        return bcfg
    if bcfg.method == "uniform" and t is not None:
        raise ValueError("this build samples uniformly (balance.method=uniform): it has no t; give --target-size")
    return validate(BalanceConfig, {**bcfg.model_dump(), "t": t, "target_size": target_size}, "balance")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the demo web and the build."),
    pages: int = typer.Option(2000, min=10, help="Pages of the demo web."),
    seed: int = typer.Option(0, help="Seed of the demo web."),
    config: Path = typer.Option(None, help="Build config (default: configs/demo.yaml of the source tree)."),
    crawl: bool = typer.Option(False, help="Crawl the served site instead of reading its WARC file."),
    master: str = typer.Option("local[2]", help="Spark master for spark-submit."),
    port: int = typer.Option(DEMO_PORT, min=1, max=65535, help="Port of 127.0.0.1 the demo web is served on. "
                             "Its image URLs, and so the pair ids, carry it: the same port (and seed, pages and "
                             "config) builds the same dataset on every run."),
) -> None:
    """Build a dataset from the bundled demo web: write it as WARC/WAT, serve it (pages, images,
    robots.txt) on 127.0.0.1, and run the build job on it with spark-submit. The held-out digits and colours go to
    <out>/eval/digits and <out>/eval/colours for zero-shot evaluation."""
    import errno
    import subprocess
    import sys

    import witbuild.job
    from witbuild.demo.eval_images import write_eval_colours, write_eval_digits
    from witbuild.demo.server import DemoWebServer, demo_job_settings
    from witbuild.demo.web import summarize, write_warc, write_wat
    from witbuild.spark import spark_submit_env

    if problem := folder_problem(out):  # before the web is served and written
        _fail(f"--out {problem}")
    if config is None:
        default = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
        config = default if default.is_file() else None
    sets = demo_job_settings(pages)[1::2]
    try:  # the config as the job will read it, before the web is written and served
        from witbuild.config import load_config

        load_config(config, inputs=[str(out / "web" / "demo-00000.warc.gz")], output=str(out / "build"), sets=sets)
    except ValidationError as exc:
        _fail(f"{config}: {first_error(exc)}")
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    try:
        server = DemoWebServer(n_pages=pages, seed=seed, port=port)
    except OSError as exc:  # no fall-back to another port: the build would silently differ from every other
        why = "already in use (another witbuild demo?)" if exc.errno == errno.EADDRINUSE else exc.strerror
        typer.echo(f"error: cannot serve the demo web on {DEMO_HOST}:{port}: {why}; stop what holds it or "
                   f"choose another --port (the build then differs from one on port {DEMO_PORT})", err=True)
        raise typer.Exit(2) from None
    web_dir = out / "web"
    web_dir.mkdir(parents=True, exist_ok=True)
    with server as web:
        page_list = list(web.pages.values())
        write_warc(page_list, web_dir / "demo-00000.warc.gz")
        write_wat(page_list, web_dir / "demo-00000.warc.wat.gz")
        held_out = sum(write_eval_digits(out / "eval" / "digits").values())
        colours = sum(write_eval_colours(out / "eval" / "colours").values())
        typer.echo(f"demo web: {_describe(summarize(page_list))}; served at {web.site}; WARC and WAT in {web_dir}; "
                   f"{held_out} held-out digits in {out / 'eval' / 'digits'}, {colours} held-out colour drawings in "
                   f"{out / 'eval' / 'colours'}")
        source = web.seed_url if crawl else str(web_dir / "demo-00000.warc.gz")
        cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
               "--driver-memory", "1g", "--executor-memory", "1g", witbuild.job.__file__,
               *(["--config", str(config)] if config else []), "--input", source, "--output", str(out / "build"),
               *demo_job_settings(pages)]
        typer.echo("$ " + " ".join(cmd))
        rc = subprocess.call(cmd, env=spark_submit_env())
    raise typer.Exit(rc)


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment config (YAML): build config, variants, seeds, training."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override an experiment config value, "
                                   "e.g. --set seeds=[0,1,2,3,4]. Repeatable."),
) -> None:
    """Measure what curation buys: build the variants of one pool (raw: a uniform sample at the balanced size;
    balanced: MetaCLIP balancing; any named in the config), train the same model on each with every seed,
    evaluate all on the same held-out folder, and report means with 95% intervals and seed-paired differences
    (terminal table, experiment.json, report.html)."""
    from witbuild.experiment.config import ExperimentError, load_experiment_config
    from witbuild.experiment.report import failed_variants, format_table
    from witbuild.experiment.run import run_experiment

    if not config.is_file():
        typer.echo(f"error: experiment config not found: {config}", err=True)
        raise typer.Exit(2)
    try:
        cfg = load_experiment_config(config, sets)
        summary = run_experiment(cfg)
    except ExperimentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_table(summary))
    typer.echo(f"report: {Path(cfg.output) / 'report.html'}, {Path(cfg.output) / 'experiment.json'}")
    if failed := failed_variants(summary):
        typer.echo(f"failed: {', '.join(failed)} (see the report)", err=True)
        raise typer.Exit(1)


querylist_app = typer.Typer(no_args_is_help=True, help="Query lists: the entries captions are matched against.")
app.add_typer(querylist_app, name="querylist")


@querylist_app.command("build")
def querylist_build(
    out: Path = typer.Argument(..., help="Folder for entries.txt, sources.tsv and manifest.json."),
    corpus: list[str] = typer.Option([], help="Texts for PMI bigrams: a Parquet folder with a 'text' column "
                                     "(e.g. a build's stages/extract) or text files, one text per line. Repeatable."),
    user_file: list[Path] = typer.Option([], help="Extra entries: a text file (one per line) or MetaCLIP's "
                                         "metadata.json. Repeatable."),
    max_entries: int = typer.Option(500_000, min=1),
    min_zipf: float = typer.Option(1.4, help="wordfreq Zipf threshold of the unigrams."),
    bigram_min_count: int = typer.Option(5, min=1),
    bigram_min_pmi: float = typer.Option(6.0),
    no_bigrams: bool = typer.Option(False, help="Leave out PMI bigrams."),
    no_wordnet: bool = typer.Option(False, help="Leave out WordNet lemmas."),
) -> None:
    """Build a versioned query list: wordfreq unigrams, PMI bigrams, WordNet, user files, "0".."99"."""
    from witbuild.curate.querylist import QueryListConfig, build_querylist, spark_pmi_bigrams, write_querylist

    try:
        cfg = validate(QueryListConfig, {
            "max_entries": max_entries, "min_zipf": min_zipf, "bigram_min_count": bigram_min_count,
            "bigram_min_pmi": bigram_min_pmi, "bigrams": not no_bigrams, "wordnet": not no_wordnet}, "querylist")
    except ValueError as exc:
        _fail(str(exc))
    if no_bigrams and corpus:
        _fail("--corpus is read for bigrams only: give --no-bigrams or --corpus, not both")
    if problem := folder_problem(out):
        _fail(problem)
    for f in user_file:
        if not f.is_file():
            _fail(f"--user-file {f}: file not found")
    bigrams = None
    if cfg.bigrams and corpus:
        bigrams = _corpus_bigrams(corpus, cfg, spark_pmi_bigrams)
        typer.echo(f"{len(bigrams):,} PMI bigrams in the corpus (seen {cfg.bigram_min_count}+ times, "
                   f"log2 PMI >= {cfg.bigram_min_pmi})")
    elif cfg.bigrams:
        typer.echo("no PMI bigrams: they are counted over a --corpus")
    try:
        ql = build_querylist(cfg, user_files=[str(f) for f in user_file], bigrams=bigrams)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    path = write_querylist(ql, out, cfg, {"corpus": corpus, "user_files": [str(f) for f in user_file]})
    typer.echo(f"wrote {path}: {len(ql.entries):,} entries, version {ql.version}")
    for name, n in ql.kept_per_source.items():
        typer.echo(f"  {name:<10} {n:>9,} kept of {ql.candidates_per_source.get(name, 0):,}")
    for reason, n in sorted(ql.skipped.items()):
        typer.echo(f"  skipped {reason:<24} {n:>9,}")


def _corpus_bigrams(corpus: list[str], cfg, spark_pmi_bigrams) -> list[str]:
    from witbuild.spark import get_session

    spark = get_session()
    frames = []
    for path in corpus:
        p = Path(path)
        if not p.exists():
            _fail(f"--corpus {path}: not found")
        if p.is_dir() and any(p.glob("*.parquet")):
            frame = spark.read.parquet(str(p))
            if "text" not in frame.columns:
                _fail(f"--corpus {path}: its Parquet has no 'text' column (it has {', '.join(frame.columns)})")
            frames.append(frame.select("text"))
        else:
            frames.append(spark.read.text(str(p)).withColumnRenamed("value", "text"))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    found = spark_pmi_bigrams(df, min_count=cfg.bigram_min_count, min_pmi=cfg.bigram_min_pmi, limit=cfg.max_bigrams,
                              language=cfg.language)
    return [g for g, _ in found]


def main() -> None:
    """The ``witbuild`` script: a usage error is one ``error:`` line and exit status 2, as every other error."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except typer.TyperException as exc:  # the base of click's usage errors (typer carries its own click)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
        else:
            command = ctx.command_path if ctx is not None else "witbuild"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"error: {command}: {' '.join(message.split())} (see {command} --help)", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
