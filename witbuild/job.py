"""Build a WIT-style image-text dataset: ``spark-submit jobs/build_wit.py --config build.yaml``.

Examples::

    spark-submit jobs/build_wit.py --input 'crawl/*.warc.gz' --output out/ --until-stage extract
    spark-submit jobs/build_wit.py --config build.yaml --set extract.keep_empty_text=true

Exit status: 0 when every stage finished, 2 for a usage or input error (nothing was run) or an output folder
another build is writing, 1 when a stage failed, 130 (Ctrl-C, SIGINT) or 143 (SIGTERM) when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from witbuild.config import STAGES, BuildConfig, load_config
from witbuild.output_folder import folder_problem
from witbuild.sources.inputs import InputError, expand_inputs
from witbuild.yaml_io import first_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="build_wit.py", description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", help="YAML build config (every field is described in BuildConfig, witbuild/config.py, "
                   "and its sections)")
    p.add_argument("--input", action="append", metavar="PATH|GLOB|URL",
                   help="WARC/WAT file, glob or folder, or a seed URL to crawl; repeatable; "
                   "replaces input.* of the config")
    p.add_argument("--output", help="output folder (overrides the config's output)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set crawl.delay_seconds=0.5; repeatable")
    p.add_argument("--until-stage", choices=STAGES, default=STAGES[-1], help="last stage to run")
    p.add_argument("--from-stage", choices=STAGES, help="redo this stage and the later ones (the earlier ones "
                   "must have finished); without it, finished stages are skipped")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    return p.parse_args(argv)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        for handler in logging.getLogger().handlers:
            handler.addFilter(not_py4j)
    with contextlib.ExitStack() as held:  # the output's lock, from the last check until Spark has stopped
        cfg = checked_config(args, held)
        if isinstance(cfg, int):
            return cfg
        return build(cfg, args)


def not_py4j(record: logging.LogRecord) -> bool:
    """Leave out py4j's own records (its connection's plumbing, logged on the root logger, with a traceback for
    a call cut by Ctrl-C): a failure they tell of reaches the job as an exception, said on one ``error:`` line."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname and not record.name.startswith("py4j")


def checked_config(args: argparse.Namespace, held: contextlib.ExitStack) -> BuildConfig | int:
    """The build's config once every check that needs no Spark has passed and the output folder is locked for
    this build; else the exit status, 2, with the error printed."""
    from witbuild.pipeline import OutputInUse, OutputNotLockable, output_lock

    try:
        cfg = load_config(args.config, inputs=args.input, output=args.output, sets=args.set)
        check_output_folder(cfg.output)
        if cfg.input.paths:
            expand_inputs(cfg.input.paths)  # a missing input is an error before Spark starts
        for name in ("match.entries_path", "langid.model_path"):
            section, key = name.split(".")
            value = getattr(getattr(cfg, section), key)
            if value and not Path(value).is_file():
                raise InputError(f"{name}: file not found: {value}")
        if cfg.match.entries_path:  # an unusable list is known now, not after extract and filter
            from witbuild.curate.match import load_entries

            load_entries(cfg.match.entries_path, max_chars=cfg.querylist.max_entry_chars,
                         max_entries=cfg.querylist.max_entries)
        check_languages(cfg, args.until_stage)
        if cfg.dedup.decontaminate:  # read by finalize, after the downloads: a wrong folder is known now
            from witbuild.dedup.eval_set import check_eval_folder

            check_eval_folder(cfg.dedup.decontaminate)
        if cfg.clip_score.enabled:  # a checkpoint that is missing, unreadable or not its model: before Spark
            from witbuild.curate.clip_score import load_scorer, pin_checkpoint

            load_scorer(cfg.clip_score)
            cfg.clip_score = pin_checkpoint(cfg.clip_score)
        from witbuild.pipeline import check_stages

        check_stages(cfg.output, args.until_stage, args.from_stage)
        held.enter_context(output_lock(cfg.output))
        absolute_execution_paths(cfg)
    except ValidationError as exc:  # pydantic's several lines, as one
        print(f"error: {args.config or 'config'}: {first_error(exc)}", file=sys.stderr)
        return 2
    except (InputError, OSError, ValueError, OutputInUse, OutputNotLockable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return cfg


def absolute_execution_paths(cfg: BuildConfig) -> None:
    """Make the output folder (and the crawl's WARC folder) absolute, here in the driver: Spark's tasks write
    there (the stage outputs, their counters, the crawl's WARCs), and an executor resolves a relative path in its
    own working directory, which on a cluster is not the driver's. Both only say where a build runs
    (``EXECUTION_ONLY``: in no fingerprint), so their spelling changes nothing the build decides."""
    from witbuild.spark import absolute_local

    cfg.output = absolute_local(cfg.output)
    if cfg.crawl.warc_dir:
        cfg.crawl.warc_dir = absolute_local(cfg.crawl.warc_dir)


#: Paths Spark's tasks read, with the first stage whose tasks read them (input.paths: extract's tasks open the
#: files; the rest: each executor loads the model, the checkpoint or the response cache itself)
EXECUTOR_PATHS = (("input.paths", "extract"), ("langid.model_path", "filter"), ("download.cache_dir", "download"),
                  ("clip_score.checkpoint", "finalize"), ("clip_score.model_json", "finalize"),
                  ("clip_score.bpe_vocab", "finalize"))


def _is_relative_local(value: str, key: str) -> bool:
    if "://" in value or os.path.isabs(os.path.expanduser(value)):
        return False
    # a model_json that names no file here is the name of a model config shipped with the trainer
    return key != "clip_score.model_json" or Path(value).is_file()


def relative_executor_paths(cfg: BuildConfig, until_stage: str) -> list[str]:
    """``setting value`` for each relative local path that Spark's tasks of the stages up to ``until_stage`` read."""
    found = []
    for key, stage in EXECUTOR_PATHS:
        if STAGES.index(stage) > STAGES.index(until_stage):
            continue
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        for v in value if isinstance(value, list) else [value]:
            if v and _is_relative_local(str(v), key):
                found.append(f"{key} {v}")
    return found


def session_problem(master: str, conf: dict[str, str], cfg: BuildConfig, until_stage: str) -> str | None:
    """Why this session must not run the build, or None: checked once Spark has started (spark-submit's
    ``--master`` and ``--conf`` are known only then) and before any stage runs."""
    from witbuild.spark import is_local_master

    if conf.get("spark.speculation", "false").strip().lower() == "true":
        return ("spark.speculation=true is refused: the download (img2dataset) writes its shards from Spark tasks, "
                "outside Spark's output committer, so two attempts of one task would write the same files (a shard "
                "mixing both attempts' bytes, an empty tar); leave speculation off")
    if not is_local_master(master) and (relative := relative_executor_paths(cfg, until_stage)):
        return (f"relative paths on a cluster (spark.master {master}): each executor would read "
                f"{'; '.join(relative)} from its own working directory, not this one; give an absolute path every "
                "machine reaches, or a URL")
    return None


class Interrupted(BaseException):
    """The build was told to stop (SIGTERM); a BaseException, as KeyboardInterrupt is, so that no stage's
    ``except Exception`` takes it for a failure of its own."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted("SIGTERM")


def interrupted_status(exc: BaseException) -> tuple[int, str]:
    """The exit status and the name of what stopped a build: Ctrl-C (KeyboardInterrupt, or the ``sys.exit(0)``
    of img2dataset's own SIGINT handler, which must not end a stopped build as a success) or SIGTERM."""
    if isinstance(exc, Interrupted):
        return 128 + signal.SIGTERM, "SIGTERM"
    return 128 + signal.SIGINT, "SIGINT"


def build(cfg: BuildConfig, args: argparse.Namespace) -> int:
    """Start Spark and run the build; the exit status."""
    from witbuild.pipeline import run_build
    from witbuild.spark import get_session

    try:
        spark = get_session(cfg.spark, executor_env=cfg.download.opencv_env)
    except Exception as exc:  # e.g. a spark.master nobody listens on: Spark's own words, on one line
        logging.getLogger("build_wit").debug("Spark did not start", exc_info=True)
        where = f" (spark.master {cfg.spark.master})" if cfg.spark.master else ""
        print(f"error: Spark did not start{where}: {_one_line(exc)}", file=sys.stderr)
        return 2
    if problem := session_problem(spark.sparkContext.master, dict(spark.sparkContext.getConf().getAll()), cfg,
                                  args.until_stage):
        print(f"error: {problem}", file=sys.stderr)
        stop_spark(spark)
        return 2

    def show(result):  # printed as each stage ends, so a long build reports as it goes
        state = " (already finished: skipped)" if result.skipped else f" in {result.seconds:.1f}s"
        print(result.counts.format(result.name) + f"\n[{result.name}] done{state}", flush=True)
        if empty := empty_output(result):
            print(f"warning: {empty}", file=sys.stderr, flush=True)

    sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = run_build(spark, cfg, until_stage=args.until_stage, from_stage=args.from_stage, on_stage=show)
    except InputError as exc:  # the input, found unusable once read: the user's to fix, said in one line
        logging.getLogger("build_wit").debug("build stopped", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        logging.getLogger("build_wit").error("build failed", exc_info=True)  # for a bug report; the last line says it
        print(f"error: build failed: {_one_line(exc, limit=500)}; {UNFINISHED}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit, Interrupted) as exc:
        if isinstance(exc, SystemExit) and exc.code not in (0, None):  # a library that ended the process itself
            logging.getLogger("build_wit").error("build failed", exc_info=True)
            print(f"error: build failed: a stage ended the process with exit status {exc.code}; {UNFINISHED}",
                  file=sys.stderr)
            return 1
        status, why = interrupted_status(exc)
        logging.getLogger("build_wit").debug("build interrupted", exc_info=True)
        done = finished_stages(cfg.output, args.until_stage)
        after = f" after stage {done[-1]}" if done else " before any stage finished"
        print(f"error: build interrupted by {why}{after}: the stage it was in is left unfinished, and a re-run goes "
              "on from there", file=sys.stderr, flush=True)
        return status
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        stop_spark(spark)
    print(summary(results))
    print(f"build report: {cfg.output.rstrip('/')}/build_report.json")
    return 0


def finished_stages(output: str, until_stage: str) -> list[str]:
    """The stages up to ``until_stage`` finished on disk, in order, up to the first that is not."""
    from witbuild.pipeline import is_finished

    done = []
    for name in STAGES[: STAGES.index(until_stage) + 1]:
        if not is_finished(output, name):
            break
        done.append(name)
    return done


def stop_spark(spark) -> None:
    """Stop the session; a JVM already gone (a Ctrl-C in a terminal reaches it too) is not another error."""
    try:
        spark.stop()
    except Exception as exc:
        logging.getLogger("build_wit").debug("stopping Spark: %s", _one_line(exc))


def check_languages(cfg, until_stage: str) -> None:
    """``langid.allowed`` codes the language id model never predicts (``english`` for ``en``) are an error before
    Spark starts, where the filter stage would drop every row; only for a build that reaches the filter, and only
    where the model can be loaded here (the stage itself says so otherwise)."""
    if not cfg.langid.allowed or STAGES.index(until_stage) < STAGES.index("filter"):
        return
    from witbuild.text.langid import unknown_codes

    try:
        unknown = unknown_codes(cfg.langid)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("build_wit").warning("language codes not checked: %s", exc)
        return
    if unknown:
        raise InputError(f"langid.allowed: the language id model has no label {', '.join(unknown)} (it writes "
                         "ISO 639 codes: en, de, zh, ...)")


def empty_output(result) -> str | None:
    """Why a stage that was given rows kept none, or None: an empty dataset is a setting to look at (a language
    code fastText does not know, a text attribute no page has), and the build says so as it happens."""
    c = result.counts
    if c.rows_in == 0 or c.rows_out > 0:
        return None
    top = ", ".join(f"{k} {v:,}" for k, v in list(c.to_dict()["dropped"].items())[:3]) or "no reason counted"
    return f"{result.name} kept none of its {c.rows_in:,} rows ({top}): every later stage is empty"


def check_output_folder(output: str) -> None:
    """A local output that cannot be a folder is an error before Spark starts (fsspec URLs are left to the
    filesystem)."""
    try:
        output.encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system allows but Spark's Java paths cannot name
        raise InputError(f"output {output!r} is not a UTF-8 path, which Spark cannot write to") from None
    if "://" not in output and (problem := folder_problem(output)):
        raise InputError(f"output {problem}")


UNFINISHED = "the stage it was in is left unfinished, and a re-run goes on from there (the traceback is logged above)"
PY_TRACEBACK = "Traceback (most recent call last):"
CRASHED = "Python worker exited unexpectedly (crashed)"
# Spark's summary of a failed job: "Task 3 in stage 7.0 failed 4 times, most recent failure: Lost task 3.3 in stage
# 7.0 (TID 41) (10.0.0.5 executor 2): <the task's exception>"
TASK_FAILED = re.compile(r"Task (\S+) in stage (\S+) failed (\d+) times?, most recent failure: "
                         r"Lost task \S+ in stage \S+ \(TID \d+\) \(([^)]*)\): (.*)")
CAUSED_BY = re.compile(r"^Caused by: ([\w$.]+)(?:: (.+))?$", re.M)
# causes that tell how a connection to a dead process ended, not why it died
PLUMBING = ("java.io.EOFException", "java.io.IOException", "java.net.", "py4j.")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line: from a Spark failure (Py4J's text of the Java exception chain, or
    PySpark's of a Python worker's traceback) the innermost message that says what went wrong, with which task
    failed how often; the Java stack and the Python frames stay in the log."""
    text = " ".join(innermost_message(_exception_text(exc)).split())
    return text if len(text) <= limit else text[:limit] + " …"


def _exception_text(exc: BaseException) -> str:
    """``str(exc)``; a Py4J error asks the JVM for its text, and a JVM already gone leaves its own first line."""
    try:
        return str(exc)
    except Exception:
        return str(getattr(exc, "errmsg", "") or type(exc).__name__)


def innermost_message(text: str) -> str:
    """What a failed Spark job's text says went wrong: a Python worker's exception line, Spark's word that a
    Python worker crashed, or the deepest Java cause with a message, after which task failed how many times;
    any other text as it is."""
    task = TASK_FAILED.search(text)
    where = f" (task {task[1]} in stage {task[2]} failed {task[3]} times, last on {task[4]})" if task else ""
    if PY_TRACEBACK in text and (line := _python_exception(text.rsplit(PY_TRACEBACK, 1)[1])):
        return line + where
    if CRASHED in text:
        return ("a Python worker exited unexpectedly (crashed): killed, out of memory or a native library's crash"
                + where)
    causes = [m for m in CAUSED_BY.finditer(text) if m[2] and not m[1].startswith(PLUMBING)]
    if causes:
        return f"{causes[-1][1].rsplit('.', 1)[-1]}: {causes[-1][2]}{where}"
    if task:
        return task[5] + where
    return _without_py4j_call(text)


def _python_exception(after_traceback: str) -> str | None:
    """The exception line that ends a Python traceback (the text after its header): the first line past the
    indented frames, up to where Java's text (or a blank line) begins."""
    lines = after_traceback.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() and not line[:1].isspace()), None)
    if start is None:
        return None
    message = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("\tat ", "Caused by:", "Driver stacktrace")) or "SQLSTATE" in line:
            break
        message.append(line.strip())
    return " ".join(message)


def _without_py4j_call(text: str) -> str:
    """Py4J's ``An error occurred while calling o87.collectToPython.`` line says only which call failed: the Java
    exception after it is the message."""
    first, _, rest = text.partition("\n")
    if first.startswith("An error occurred while calling") and rest.strip():
        return rest.lstrip(": ").split("\n", 1)[0]
    return text


def summary(results: list) -> str:
    """The funnel of the whole build, one line per stage, printed at the end."""
    lines = [f"{'stage':<10}{'in':>12}{'out':>12}{'dropped':>12}{'seconds':>10}  top drop reasons"]
    for r in results:
        c = r.counts
        top = ", ".join(f"{k} {v:,}" for k, v in list(c.to_dict()["dropped"].items())[:3])
        seconds = "skipped" if r.skipped else f"{r.seconds:.1f}"
        lines.append(f"{r.name:<10}{c.rows_in:>12,}{c.rows_out:>12,}{c.rows_dropped:>12,}{seconds:>10}  {top}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
