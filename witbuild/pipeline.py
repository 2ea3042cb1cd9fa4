"""Runs the stages of a build in order (witbuild/stages/registry.py), each into ``<output>/stages/<name>/``
atomically, and never reuses a finished stage made under another config.

A stage writes under ``<output>/stages/_tmp/<name>/``; only when it has finished (Spark's
``_SUCCESS`` plus our ``_counts.json`` and ``_fingerprint.json``) is the folder renamed to its final name,
so a killed build never leaves a partial output that a re-run could take for a finished one. A finished
stage whose fingerprint (witbuild/fingerprint.py) differs from the one the config gives now, or whose files
changed on disk since it finished (witbuild/stage_files.py), is redone with every later stage; those past
``--until-stage`` are removed and named, not redone.

The counts chain: each stage reads exactly the rows the stage before it wrote, so a stage whose ``rows_in`` is
not its upstream's ``rows_out`` lost or invented rows on the way, and the build fails before it is marked
finished.

One build at a time writes a folder: a second one started into it (while the first runs) is refused
(:func:`output_lock`), since both would write the same temporary folders and remove each other's stages.
``build_report.json`` is rewritten as each stage ends, listing the stages of this run only, so a run that stops
half-way never leaves a report of stages that are no longer there for ``witbuild stats`` to read.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyspark
import pyspark.sql

from witbuild import __version__, layout
from witbuild.config import BuildConfig
from witbuild.counters import StageCounts
from witbuild.fingerprint import Fingerprint, changes, respelled, stage_fingerprints
from witbuild.output_folder import LockHeld, take_lock
from witbuild.provenance import code_revision
from witbuild.spark import fs_and_path, read_task_counts
from witbuild.stage_files import listing_changes, output_files, read_listing, write_listing
from witbuild.stages.context import StageContext
from witbuild.stages.registry import REGISTRY, STAGE_NAMES, Stage, later_stages, stage

log = logging.getLogger(__name__)

COUNTS_FILE = layout.COUNTS_FILE
#: The files the pipeline writes into a stage's folder as it finishes, each rewritten then.
BOOKKEEPING = (layout.SUCCESS_FILE, COUNTS_FILE, layout.FINGERPRINT_FILE, layout.FILES_FILE)
__all__ = ["COUNTS_FILE", "CountsChainError", "OutputInUse", "OutputNotLockable", "StageContext", "StageResult",
           "output_lock", "run_build"]

StageFn = Callable[[StageContext], StageCounts | None]


@dataclass
class StageResult:
    name: str
    counts: StageCounts
    seconds: float
    skipped: bool


class CountsChainError(RuntimeError):
    """A stage read another number of rows than the stage before it wrote."""


class OutputInUse(RuntimeError):
    """Another build is writing the output folder."""


_HELD_LOCKS: dict[str, int] = {}  # real path of a locked output -> how many of this process's callers hold it


#: A filesystem that has no POSIX locks (NFS without lockd, some FUSE mounts) says so with these: the build goes
#: on unlocked, as it did before builds took the lock, and says so.


class OutputNotLockable(OSError):
    """The output's lock file cannot be made or opened (a folder in its place, no permission)."""


@contextlib.contextmanager
def output_lock(output: str) -> Iterator[None]:
    """Hold ``<output>/_build.lock`` (an exclusive POSIX lock, ``lockf``) while a build writes the folder;
    OutputInUse when another process holds it. The kernel drops the lock when its holder ends, however it ends
    (kill -9 too), and a forked child never inherits it, so a killed build never leaves a stale lock behind.
    Re-entrant within one process (the job takes it before Spark starts, then the pipeline again), through one
    open file: closing any other descriptor of the file would drop a POSIX lock. A remote output is not locked:
    object stores have no such lock."""
    folder = layout.local_path(output)
    if folder is None:
        log.debug("output %s is not local: not locked against a second build", output)
        yield
        return
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    fh = _open_lock_file(folder)
    try:
        _lock(fh, output)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
    finally:
        fh.close()  # releases the lock


def _open_lock_file(folder: str) -> Any:
    path = layout.lock_path(folder)
    try:
        return open(path, "a+", encoding="utf-8")  # held open until the build ends
    except OSError as exc:
        raise OutputNotLockable(exc.errno, f"cannot open the output's lock file {path}: {exc.strerror}") from None


def _lock(fh: Any, output: str) -> bool:
    """Take the lock (True); False where the filesystem has no locks; OutputInUse where another build holds it."""
    try:
        locked = take_lock(fh)
    except LockHeld as held:
        raise OutputInUse(
            f"output {output} is in use by another build{f' (pid {held.holder})' if held.holder else ''}: two "
            "builds into one folder overwrite each other's stages; wait for it to end, or give another "
            "--output") from None
    except OSError as exc:
        raise OutputNotLockable(exc.errno, f"cannot lock {fh.name}: {exc.strerror}") from None
    if not locked:
        log.warning("output %s: its filesystem has no file locks; not locked against a second build", output)
    return locked


def check_chain(upstream: StageResult | None, name: str, counts: StageCounts) -> None:
    """Fail when ``counts.rows_in`` is not what ``upstream`` wrote. Every stage reads all of its upstream's rows,
    whatever each calls them (download's rows are finalize's images), so no pair of stages is exempt; the first
    stage reads the build's inputs and has nothing to chain to."""
    if upstream is None or counts.rows_in == upstream.counts.rows_out:
        return
    raise CountsChainError(
        f"the counts do not chain: {upstream.name} wrote {upstream.counts.rows_out:,} {upstream.counts.unit} but "
        f"{name} read {counts.rows_in:,} {counts.unit}; {name} is left unfinished (a re-run redoes it)")


def is_finished(output: str, name: str) -> bool:
    fs, root = fs_and_path(layout.stage_dir(output, name))
    return fs.exists(f"{root}/{layout.SUCCESS_FILE}") and fs.exists(f"{root}/{COUNTS_FILE}")


def load_counts(output: str, name: str) -> StageCounts:
    return StageCounts.from_dict(_counts_record(output, name))


def made_by(output: str, name: str) -> dict[str, Any] | None:
    """The code that made a finished stage (:func:`witbuild.provenance.code_revision`), as it recorded it; None for
    a stage made before stages recorded it."""
    try:
        return _counts_record(output, name).get("code")
    except (OSError, ValueError):
        return None


def _counts_record(output: str, name: str) -> dict[str, Any]:
    fs, root = fs_and_path(layout.stage_dir(output, name))
    with fs.open(f"{root}/{COUNTS_FILE}", "r") as fh:
        return json.load(fh)


def read_fingerprint(path: str) -> Fingerprint | None:
    """The fingerprint in a file; None when there is none (or it is unreadable)."""
    fs, p = fs_and_path(path)
    try:
        with fs.open(p, "r") as fh:
            return Fingerprint.from_dict(json.load(fh))
    except (OSError, ValueError, AttributeError):
        return None


def save_fingerprint(path: str, fp: Fingerprint) -> None:
    fs, p = fs_and_path(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(p, "w") as fh:
        json.dump(fp.to_dict(), fh, indent=1, ensure_ascii=False)


def recorded_fingerprint(folder: str) -> Fingerprint | None:
    """The fingerprint a stage folder was written under; None when it has none."""
    return read_fingerprint(f"{folder.rstrip('/')}/{layout.FINGERPRINT_FILE}")


def write_fingerprint(folder: str, fp: Fingerprint) -> None:
    save_fingerprint(f"{folder.rstrip('/')}/{layout.FINGERPRINT_FILE}", fp)


def _remove(folder: str) -> None:
    fs, path = fs_and_path(folder)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def resumes(st: Stage, output: str, fp: Fingerprint) -> bool:
    """Whether a stage may go on from what an earlier attempt left in its temporary folder: only a resumable
    stage, and only work made under the same fingerprint (a killed download re-run with another image size
    starts over)."""
    kept = read_fingerprint(layout.stage_resume_fingerprint(output, st.name)) if st.resumable else None
    return kept is not None and kept.digest == fp.digest


def import_ahead(stages: list[Stage]) -> threading.Thread | None:
    """Imports the code of ``stages`` and the slow libraries they name (``Stage.imports``), then calls their
    warm-ups (``Stage.warm_ups``), in a background thread.

    A stage imported its code when it started, on the build's critical path: img2dataset took ~2 s there with a
    core idle (the driver imports; the executors wait). Meanwhile the earlier stages' driver mostly waits on
    Spark, so the import costs them little. A warm-up fills a cache the stage's tasks read: numba's machine code
    of the colour check, which each of finalize's first tasks otherwise compiled at once (~3 s of both cores on
    a fresh checkout, in local mode; executors on other machines still compile their own once). An import or
    warm-up that fails here is left to the stage, which meets the real error."""
    modules = list(dict.fromkeys(m for st in stages for m in (st.module, *st.imports)))
    warm_ups = list(dict.fromkeys(w for st in stages for w in st.warm_ups))
    if not modules and not warm_ups:
        return None

    def run() -> None:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations (img2dataset's) asks pypi.org otherwise
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the stage imports it again, and fails there with the real error
                log.debug("importing %s ahead failed: %s", name, exc)
        for target in warm_ups:
            module, _, function = target.partition(":")
            try:
                getattr(importlib.import_module(module), function)()
            except Exception as exc:
                log.debug("warming up %s ahead failed: %s", target, exc)

    thread = threading.Thread(target=run, name="witbuild-import-ahead", daemon=True)
    thread.start()
    return thread


def run_stage(spark: Any, cfg: BuildConfig, st: Stage, fp: Fingerprint, previous: str | None,
              upstream: StageResult | None = None) -> StageResult:
    """Run one stage into its temporary folder and rename it when it has finished; a finished stage is skipped.

    ``upstream``: the result of the stage it reads, whose ``rows_out`` its ``rows_in`` must equal (checked before
    the rename, so a stage with broken counts is never taken for a finished one)."""
    out = cfg.output
    if is_finished(out, st.name):
        log.info("stage %s already finished; skipping", st.name)
        return StageResult(st.name, load_counts(out, st.name), 0.0, skipped=True)
    tmp, counts_dir = layout.stage_tmp_dir(out, st.name), layout.stage_counts_dir(out, st.name)
    _remove(counts_dir)
    if not resumes(st, out, fp):
        _remove(tmp)
    for name in BOOKKEEPING:  # left by an attempt killed as it finished: not the tool's (img2dataset reads *.json)
        _remove(f"{tmp.rstrip('/')}/{name}")
    if st.resumable:
        save_fingerprint(layout.stage_resume_fingerprint(out, st.name), fp)
    started = time.monotonic()
    with _own_sigint():
        counts = (st.load()(StageContext(spark, cfg, tmp, counts_dir, previous, st.name))
                  or read_task_counts(counts_dir))
    check_chain(upstream, st.name, counts)
    fs, tmp_path = fs_and_path(tmp)
    with fs.open(f"{tmp_path}/{COUNTS_FILE}", "w") as fh:  # with the code that made the stage, kept when reused
        json.dump({**counts.to_dict(), "code": code_revision()}, fh, indent=1)
    write_fingerprint(tmp, fp)  # after the stage's own writes (Spark's overwrite replaces the folder)
    if not fs.exists(f"{tmp_path}/{layout.SUCCESS_FILE}"):
        fs.touch(f"{tmp_path}/{layout.SUCCESS_FILE}")
    write_listing(tmp)  # last: every file the stage left, relative to its folder, so the rename keeps it true
    _, final_path = fs_and_path(layout.stage_dir(out, st.name))
    if fs.exists(final_path):  # an unfinished earlier attempt (no _SUCCESS or no counts)
        fs.rm(final_path, recursive=True)
    fs.mv(tmp_path, final_path, recursive=True)
    _remove(counts_dir)
    _remove(layout.stage_resume_fingerprint(out, st.name))
    return StageResult(st.name, counts, time.monotonic() - started, skipped=False)


@contextlib.contextmanager
def _own_sigint() -> Iterator[None]:
    """Put back the SIGINT handler a stage's library replaced: img2dataset installs one that ends the process
    with ``sys.exit(0)``, a success's status, and never removes it, so a Ctrl-C in any later stage (finalize)
    went through it instead of stopping Spark's jobs."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None and signal.getsignal(signal.SIGINT) is not before:
            signal.signal(signal.SIGINT, before)


def write_report(cfg: BuildConfig, results: list[StageResult]) -> dict[str, Any]:
    """``build_report.json``: every stage's rows in/out and drops by reason, of the stages this run has passed
    so far (rewritten as each ends). ``code`` is this run's; each stage's ``code`` the code that made it (a stage
    reused from an earlier run keeps its own; null for one made before stages recorded it)."""
    report = {
        "witbuild_version": __version__,
        "code": code_revision(),
        "spark_version": pyspark.__version__,
        "output": cfg.output,
        "stages": {
            r.name: {**r.counts.to_dict(), "seconds": round(r.seconds, 3), "skipped": r.skipped,
                     "code": made_by(cfg.output, r.name)} for r in results
        },
    }
    fs, path = fs_and_path(layout.report_path(cfg.output))
    tmp = f"{path}.tmp"
    with fs.open(tmp, "w") as fh:  # then renamed: a Ctrl-C mid-write never leaves half a report
        json.dump(report, fh, indent=1)
    fs.mv(tmp, path)
    return report


def save_config(cfg: BuildConfig) -> None:
    fs, root = fs_and_path(cfg.output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(fs_and_path(layout.config_path(cfg.output))[1], "w") as fh:
        fh.write(cfg.dump_yaml())


def check_stages(output: str, until_stage: str | None, from_stage: str | None) -> None:
    """A clear ValueError for stage options that cannot work (checked before Spark starts)."""
    last = until_stage or STAGE_NAMES[-1]
    for name in (last, from_stage):
        if name is not None:
            stage(name)
    if from_stage is None:
        return
    if STAGE_NAMES.index(from_stage) > STAGE_NAMES.index(last):
        raise ValueError(f"--from-stage {from_stage} comes after --until-stage {last}")
    missing = [n for n in STAGE_NAMES[: STAGE_NAMES.index(from_stage)] if not is_finished(output, n)]
    if missing:
        raise ValueError(f"--from-stage {from_stage} needs the earlier stages finished; not finished: "
                         f"{', '.join(missing)}")


def first_stale_stage(output: str, expected: dict[str, Fingerprint],
                      last: str | None = None) -> tuple[str, list[str]] | None:
    """The first finished stage whose recorded fingerprint is not the expected one, and what changed; or the first
    finished one after a stage this run redoes for not being finished (its folder or ``_SUCCESS`` gone since):
    it was made from that stage's earlier output, which the redone one need not equal (a download fetches the
    web as it is now)."""
    redone = None
    respelt: dict[str, str] = {}  # a recorded digest -> today's, for stages recorded in an older spelling
    for st in REGISTRY:
        if not is_finished(output, st.name):
            if redone is None and (last is None or STAGE_NAMES.index(st.name) <= STAGE_NAMES.index(last)):
                redone = st.name
            continue
        if redone is not None:
            return st.name, [f"{redone} is not finished (its folder or {layout.SUCCESS_FILE} went since) and is "
                             f"redone, and {st.name} was made from its earlier output"]
        folder = layout.stage_dir(output, st.name)
        recorded = recorded_fingerprint(folder)
        if recorded is None:  # made by an older witbuild, or by hand: adopted, and said so
            log.warning("stage %s has no %s (made by an older witbuild or by hand): taken as made under this "
                        "config; --from-stage %s redoes it", st.name, layout.FINGERPRINT_FILE, st.name)
            write_fingerprint(folder, expected[st.name])
            _changed_on_disk(folder, st.name)  # its files listed as they are, too
            continue
        if recorded.digest != expected[st.name].digest:
            if respelled(recorded, respelt).digest != expected[st.name].digest:
                return st.name, [f"{st.name}: {why}" if why.startswith("its ") else why
                                 for why in changes(respelled(recorded, respelt), expected[st.name])
                                 ] + later_rule_changes(output, expected, st.name)
            log.info("stage %s: fingerprint recorded in an older spelling; respelt, nothing to redo", st.name)
            respelt[recorded.digest] = expected[st.name].digest
            write_fingerprint(folder, expected[st.name])
        changed = _changed_on_disk(folder, st.name)
        if changed:
            return st.name, changed
    return None


def named_querylist_changes(cfg: BuildConfig, stale: tuple[str, list[str]] | None) -> tuple[str, list[str]] | None:
    """``stale`` with its ``querylist changed`` spelt out from the list the build holds (``querylist:
    querylist.max_entries 500000 → 1000``), where the build records it."""
    if stale is None or "querylist changed" not in stale[1]:
        return stale
    from witbuild.curate.querylist_artifact import querylist_changes

    named = [f"querylist: {why}" for why in querylist_changes(cfg)]
    if not named:
        return stale
    at = stale[1].index("querylist changed")
    return stale[0], [*stale[1][:at], *named, *stale[1][at + 1:]]


def later_rule_changes(output: str, expected: dict[str, Fingerprint], name: str) -> list[str]:
    """``match: its rule changed (1 → 2)`` for each finished stage after ``name`` whose rule changed too: redone
    anyway with ``name``, but the log should not leave its own reason out."""
    out = []
    for st in REGISTRY[STAGE_NAMES.index(name) + 1:]:
        recorded = recorded_fingerprint(layout.stage_dir(output, st.name)) if is_finished(output, st.name) else None
        if recorded is None:
            continue
        was, now = recorded.external.get("rule", "1"), expected[st.name].external.get("rule", "1")
        if was != now:
            out.append(f"{st.name}: its rule changed ({was} → {now})")
    return out


def stale_querylist(cfg: BuildConfig, stale: tuple[str, list[str]] | None,
                    last: str) -> tuple[str, list[str]] | None:
    """``stale``, or match when balance is to run on a finished match whose query list is gone from the build
    (``querylist/`` lies outside every stage folder's listing) and only match can make it again: its bigrams are
    counted over the filtered pool, which balance does not read. (A list of other inputs changes match's
    fingerprint.) The build failed the same way on every re-run."""
    from witbuild.curate.querylist_artifact import querylist_current

    order = STAGE_NAMES.index
    if (stale is not None and order(stale[0]) <= order("match")) or order(last) < order("balance"):
        return stale
    balance_runs = (stale is not None and stale[0] == "balance") or not is_finished(cfg.output, "balance")
    from_pool = cfg.querylist.bigrams and not cfg.match.entries_path
    if balance_runs and from_pool and is_finished(cfg.output, "match") and not querylist_current(cfg):
        return "match", [f"{layout.querylist_dir(cfg.output)} is gone or is not the list match ran against"]
    return stale


def _changed_on_disk(folder: str, name: str) -> list[str]:
    """How a finished stage's files differ from those it left (witbuild/stage_files.py); a stage with no listing
    (made before listings) is listed now, and said so."""
    listed = read_listing(folder)
    if listed is None:
        log.info("stage %s has no %s (made by an older witbuild): its files are listed now", name,
                 layout.FILES_FILE)
        write_listing(folder)
        return []
    return [f"{name}: {change}" for change in listing_changes(listed, output_files(folder))]


def clear_stages(output: str, names: tuple[str, ...]) -> None:
    """Remove the outputs of the stages ``names`` (finished and temporary)."""
    for name in names:
        _remove(layout.stage_dir(output, name))
        _remove(layout.stage_tmp_dir(output, name))
        _remove(layout.stage_resume_fingerprint(output, name))


def _exists(path: str) -> bool:
    fs, p = fs_and_path(path)
    return fs.exists(p)


def present_stages(output: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``names`` with a folder in the build, finished or not."""
    return tuple(n for n in names if _exists(layout.stage_dir(output, n)) or _exists(layout.stage_tmp_dir(output, n)))


def past(last: str) -> tuple[str, ...]:
    """The stages after ``last``."""
    return STAGE_NAMES[STAGE_NAMES.index(last) + 1:]


def redo_stale(output: str, name: str, what: list[str], last: str) -> None:
    """Remove the stale stage ``name`` and every later one, and say which of them this run redoes (up to ``last``)
    and which it only removes (past ``--until-stage``). Those are removed, not kept: the dataset in
    ``stages/finalize`` is what training and ``witbuild stats`` read, and one made under other settings than
    the build's config says must not be there to be read."""
    why = "; ".join(what)
    redone = later_stages(name, last) if STAGE_NAMES.index(name) <= STAGE_NAMES.index(last) else ()
    removed = present_stages(output, tuple(n for n in later_stages(name) if n not in redone))
    clear_stages(output, later_stages(name))
    if redone:
        log.warning("%s: redoing %s", why, ", ".join(redone))
    if removed:
        log.warning("%s: removed %s, stale, not redone (past --until-stage %s)", why, ", ".join(removed), last)


def redo_from(output: str, first: str, last: str) -> None:
    """``--from-stage``: remove ``first`` and every later stage. Those past ``last`` are removed too, not kept:
    ``--from-stage`` redoes work for a reason no fingerprint holds (new code, a stage adopted from an older build),
    so a later run could not tell that they were made from the old outputs."""
    log.info("--from-stage %s: redoing %s", first, ", ".join(later_stages(first, last)))
    removed = present_stages(output, past(last))
    clear_stages(output, later_stages(first))
    if removed:
        log.warning("--from-stage %s: removed %s, not redone (past --until-stage %s)", first, ", ".join(removed),
                    last)


def run_build(
    spark: Any,
    cfg: BuildConfig,
    *,
    until_stage: str | None = None,
    from_stage: str | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run the stages up to ``until_stage`` (inclusive), skipping finished ones made under the same config.

    A finished stage whose fingerprint changed (its config, its input, a file it read) is redone with every
    later stage (those past ``until_stage`` removed, not redone), and the log says what changed. ``from_stage``
    redoes that stage and every later one; the stages before it must have finished. Each stage that runs must
    read as many rows as the one before it wrote (CountsChainError).
    """
    with output_lock(cfg.output):
        return _run_build(spark, cfg, until_stage, from_stage, on_stage)


def _run_build(spark: Any, cfg: BuildConfig, until_stage: str | None, from_stage: str | None,
               on_stage: Callable[[StageResult], None] | None) -> list[StageResult]:
    last = until_stage or STAGE_NAMES[-1]
    check_stages(cfg.output, until_stage, from_stage)
    expected = stage_fingerprints(cfg)
    stale = stale_querylist(cfg, named_querylist_changes(cfg, first_stale_stage(cfg.output, expected, last)), last)
    if stale is not None and (from_stage is None or STAGE_NAMES.index(stale[0]) < STAGE_NAMES.index(from_stage)):
        redo_stale(cfg.output, *stale, last)
    if from_stage is not None:
        redo_from(cfg.output, from_stage, last)
    save_config(cfg)
    _remove(layout.report_path(cfg.output))  # an earlier run's: it may list stages removed above
    results: list[StageResult] = []
    done: dict[str, StageResult] = {}
    previous: str | None = None
    stages = REGISTRY[: STAGE_NAMES.index(last) + 1]
    import_ahead([st for st in stages if not is_finished(cfg.output, st.name)][1:])
    for st in stages:
        upstream = done[st.reads] if st.reads else None
        result = run_stage(spark, cfg, st, expected[st.name], previous, upstream)
        results.append(result)
        done[st.name] = result
        write_report(cfg, results)
        if on_stage:
            on_stage(result)
        previous = layout.stage_dir(cfg.output, st.name)
    return results
