"""Operating a build over time: two builds into one folder, a run that stops half-way, and a build told to stop
(Ctrl-C, SIGTERM) — what each leaves for a re-run, for ``witbuild stats`` and for the person who started it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_stage_contract_pipeline import ROWS, config, fake_stage
from witbuild import layout, pipeline
from witbuild.job import main as job_main
from witbuild.pipeline import OutputInUse, output_lock, run_build
from witbuild.stages.context import StageContext
from witbuild.stages.registry import STAGE_NAMES, Stage
from witbuild.stats.collect import read_funnel

FAILING: set[str] = set()  # stages that fail in the stand-in run, as a killed or crashed stage does


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """Every stage runs a stand-in that writes one file; one named in FAILING raises instead."""
    rows = dict(ROWS)
    write = fake_stage(rows)

    def run(ctx: StageContext):
        if ctx.name in FAILING:
            raise RuntimeError(f"{ctx.name} stopped")
        return write(ctx)

    monkeypatch.setattr(Stage, "load", lambda self: run)
    monkeypatch.setattr(pipeline, "import_ahead", lambda stages: None)
    FAILING.clear()
    yield rows
    FAILING.clear()


@pytest.fixture
def web(tmp_path: Path) -> Path:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.warc.gz").write_bytes(b"a")
    return tmp_path / "web"


def hold_lock_elsewhere(out: Path) -> subprocess.Popen:
    """Another process holding the output's lock, as a running build does; it holds it until killed."""
    code = ("import sys; from witbuild.pipeline import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# --------------------------------------------------------------------------------------------
# Two builds into one folder


def test_a_second_build_into_a_folder_in_use_is_refused(stages, web: Path, tmp_path: Path, capsys) -> None:
    """Both would write stages/_tmp/<name> and remove each other's stages (each failed with Spark's
    UNABLE_TO_INFER_SCHEMA, the folder left half of one and half of the other): the second is refused before
    Spark starts, naming the first, and the folder is free again once the first has ended, however it ended."""
    out = tmp_path / "out"
    holder = hold_lock_elsewhere(out)
    try:
        with pytest.raises(OutputInUse, match=f"in use by another build \\(pid {holder.pid}\\)"):
            run_build(None, config(web, out))
        assert not (out / "stages").exists()
        status = job_main(["--input", str(web / "*.warc.gz"), "--output", str(out), "--until-stage", "extract"])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2
        assert err == [f"error: output {out} is in use by another build (pid {holder.pid}): two builds into one "
                       "folder overwrite each other's stages; wait for it to end, or give another --output"]
    finally:
        holder.kill()  # as kill -9: no cleanup of its own, and the lock goes with the process
        holder.wait()
    assert [r.name for r in run_build(None, config(web, out))] == list(STAGE_NAMES)


def test_the_lock_is_reentrant_within_one_process_and_released_after(tmp_path: Path) -> None:
    """The job takes the lock before Spark starts and the pipeline takes it again; neither refuses the other,
    and the lock is free once the outer one is let go."""
    out = tmp_path / "out"
    with output_lock(str(out)), output_lock(str(out) + "/"):
        assert (out / layout.LOCK_FILE).read_text().strip() == str(os.getpid())
    holder = hold_lock_elsewhere(out)
    holder.kill()
    holder.wait()


def test_every_spelling_of_a_local_folder_is_one_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file:/x`` and ``file:///x`` are the folder ``/x`` to fsspec and Spark: locked there, not as a folder named
    ``file:`` in the working directory that no other spelling would see."""
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    holder = hold_lock_elsewhere(out)
    try:
        for spelling in (f"file:{out}", f"file://{out}", "out", "./out/"):
            with pytest.raises(OutputInUse), output_lock(spelling):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with output_lock(str(tmp_path / "a::b")):  # a name, not a chain of URLs
        assert (tmp_path / "a::b" / layout.LOCK_FILE).exists()
    with output_lock("s3://bucket/out"):  # another filesystem: not locked, and no package asked to decide it
        pass


def test_a_lock_file_that_cannot_be_opened_is_one_error_line(tmp_path: Path, web: Path, capsys) -> None:
    out = tmp_path / "out"
    (out / layout.LOCK_FILE).mkdir(parents=True)
    status = job_main(["--input", str(web / "*.warc.gz"), "--output", str(out), "--until-stage", "extract"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and "lock file" in err[0], err


def test_a_filesystem_without_locks_builds_unlocked_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog) -> None:
    """NFS without lockd answers ENOLCK: builds there worked before the lock, and still do, with a warning."""
    import errno
    import fcntl

    def no_locks(fh: object, flags: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"), output_lock(str(tmp_path / "out")):
        pass
    assert "no file locks" in caplog.text


# --------------------------------------------------------------------------------------------
# A run that stops half-way


def test_a_run_that_stops_leaves_no_report_of_stages_it_removed(stages, web: Path, tmp_path: Path) -> None:
    """A changed filter removes filter..finalize; a run stopped in match left the last run's build_report.json,
    whose funnel ``witbuild stats`` showed for a dataset no longer there (finalize's 6 images among them)."""
    out = tmp_path / "out"
    run_build(None, config(web, out))
    stages.update(filter=(16, 10), match=(10, 10), balance=(10, 9))  # the new filter keeps fewer rows
    FAILING.add("match")
    with pytest.raises(RuntimeError, match="match stopped"):
        run_build(None, config(web, out, "filter.min_words=4"))
    report = json.loads((out / layout.REPORT_FILE).read_text())
    assert list(report["stages"]) == ["extract", "filter"]
    assert report["stages"]["filter"]["rows_out"] == 10
    funnel, _ = read_funnel(out)
    assert [(s["stage"], s["rows_out"]) for s in funnel] == [("extract", 16), ("filter", 10)]
    FAILING.clear()
    run_build(None, config(web, out, "filter.min_words=4"))
    assert list(json.loads((out / layout.REPORT_FILE).read_text())["stages"]) == list(STAGE_NAMES)


@pytest.mark.parametrize("gone", ["folder", layout.SUCCESS_FILE])
def test_a_stage_redone_for_a_missing_folder_redoes_the_later_ones(stages, web: Path, tmp_path: Path, caplog,
                                                                   gone: str) -> None:
    """Removing download's folder (or its _SUCCESS) redid download alone and kept finalize, whose dataset came
    from the earlier download, which the new one need not equal (the web moves on): a stage redone redoes what
    was made from it. Past --until-stage it is left alone: that run redoes nothing there."""
    out = tmp_path / "out"
    run_build(None, config(web, out))
    target = out / "stages" / "download"
    if gone == "folder":
        shutil.rmtree(target)
    else:
        (target / gone).unlink()
    assert [r.name for r in run_build(None, config(web, out), until_stage="dedup") if not r.skipped] == []
    assert (out / "stages" / "finalize" / layout.SUCCESS_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(None, config(web, out))
    assert [r.name for r in results if not r.skipped] == ["download", "finalize"]
    assert ("download is not finished (its folder or _SUCCESS went since) and is redone, and finalize was made "
            "from its earlier output: redoing finalize") in caplog.text


def test_a_stage_library_sigint_handler_does_not_outlive_its_stage(stages, web: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """img2dataset installs a SIGINT handler that ends the process with ``sys.exit(0)`` (a success's status) and
    never removes it: a Ctrl-C in finalize went through it. Each stage's replaced handler is put back."""
    write = fake_stage(stages)

    def like_img2dataset(ctx: StageContext):
        if ctx.name == "download":
            signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(0))
        return write(ctx)

    monkeypatch.setattr(Stage, "load", lambda self: like_img2dataset)
    before = signal.getsignal(signal.SIGINT)
    run_build(None, config(web, tmp_path / "out"))
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------------------------
# A real build told to stop


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_build_told_to_stop_says_so_on_one_line_and_a_rerun_goes_on(sig: signal.Signals, tmp_path: Path,
                                                                       shared_warc: Path) -> None:
    """SIGTERM ended the build at once (status -15, nothing said) and Ctrl-C with a page of tracebacks; now
    either ends it with one ``error:`` line and 128 + the signal, and the re-run redoes only the unfinished
    stage."""
    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "jobs" / "build_wit.py"), "--input", str(shared_warc / "*.warc.gz"),
            "--output", str(out), "--until-stage", "filter", "--set", "spark.master=local[2]"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not (out / "stages" / "extract" / layout.SUCCESS_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the build ended before extract finished"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if proc.returncode == 0:  # filter finished before the signal came: nothing left to interrupt
        pytest.skip("filter finished before the signal arrived")
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert errors == [f"error: build interrupted by {sig.name} after stage extract: the stage it was in is left "
                      "unfinished, and a re-run goes on from there"], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not (out / "stages" / "filter").exists()
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[extract] done (already finished: skipped)" in rerun.stdout
    assert "[filter] done in" in rerun.stdout
