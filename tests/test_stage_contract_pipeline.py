"""The pipeline's side of the stage contract, with stand-in stage functions (no Spark): what happens to a stale
stage past ``--until-stage``, what ``--from-stage`` removes and says, and the chain of counts from stage to stage."""

from __future__ import annotations

import json
import logging
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from witbuild import layout, pipeline
from witbuild.config import BuildConfig, load_config
from witbuild.counters import StageCounts
from witbuild.pipeline import CountsChainError, StageResult, check_chain, import_ahead, run_build
from witbuild.stages.context import StageContext
from witbuild.stages.registry import STAGE_NAMES, Stage

ROWS = {"extract": (20, 16), "filter": (16, 12), "match": (12, 12), "balance": (12, 9), "dedup": (9, 8),
        "download": (8, 7), "finalize": (7, 6)}  # rows in, rows out: each stage reads what the one before wrote


def fake_stage(rows: dict[str, tuple[int, int]]) -> Callable[[StageContext], StageCounts]:
    """A stage function that writes one file and returns the given counts."""
    def run(ctx: StageContext) -> StageCounts:
        folder = Path(ctx.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "part.txt").write_text(ctx.name or "", encoding="utf-8")
        rows_in, rows_out = rows[ctx.name or ""]
        counts = StageCounts(rows_in=rows_in, rows_out=rows_out)
        counts.drop("some_reason", rows_in - rows_out)
        return counts
    return run


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int]]:
    """Every stage runs the stand-in; a test changes the counts a stage returns through the dict."""
    rows = dict(ROWS)
    monkeypatch.setattr(Stage, "load", lambda self: fake_stage(rows))
    monkeypatch.setattr(pipeline, "stale_querylist", lambda cfg, stale, last: stale)  # the stand-in makes no list
    monkeypatch.setattr(pipeline, "import_ahead", lambda stages: AHEAD.append([st.name for st in stages]))
    AHEAD.clear()
    return rows


AHEAD: list[list[str]] = []  # the stages each run_build imported ahead


@pytest.fixture
def web(tmp_path: Path) -> Path:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.warc.gz").write_bytes(b"a")
    return tmp_path / "web"


def config(web: Path, out: Path, *sets: str) -> BuildConfig:
    return load_config(inputs=[str(web / "*.warc.gz")], output=str(out), sets=list(sets))


def recorded_digest(out: Path, name: str) -> str:
    return json.loads((out / "stages" / name / layout.FINGERPRINT_FILE).read_text())["digest"]


def ran(results: list[StageResult]) -> list[str]:
    return [r.name for r in results if not r.skipped]


# --------------------------------------------------------------------------------------------
# A stale stage past --until-stage


def test_a_stale_stage_past_until_stage_is_removed_and_named(stages, web: Path, tmp_path: Path, caplog) -> None:
    """The stale dataset must not stay where training reads it; the log names what went and why."""
    out = tmp_path / "out"
    assert ran(run_build(None, config(web, out))) == list(STAGE_NAMES)
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(None, config(web, out, "dedup.phash_threshold=2"), until_stage="dedup")
    assert ran(results) == []
    assert "redoing" not in caplog.text  # nothing up to dedup is redone, and no empty list is said
    assert ("dedup.phash_threshold 4 → 2: removed finalize, stale, not redone (past --until-stage dedup)"
            in caplog.text)
    assert not (out / "stages" / "finalize").exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="witbuild.pipeline"):
        assert ran(run_build(None, config(web, out, "dedup.phash_threshold=2"))) == ["finalize"]


def test_an_earlier_change_redoes_up_to_until_stage_and_removes_the_rest(stages, web: Path, tmp_path: Path,
                                                                         caplog) -> None:
    out = tmp_path / "out"
    run_build(None, config(web, out))
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(None, config(web, out, "filter.min_words=4"), until_stage="match")
    assert ran(results) == ["filter", "match"]
    assert "filter.min_words 3 → 4: redoing filter, match\n" in caplog.text
    assert ("filter.min_words 3 → 4: removed balance, dedup, download, finalize, stale, not redone (past "
            "--until-stage match)") in caplog.text
    assert not any((out / "stages" / n).exists() for n in ("balance", "dedup", "download", "finalize"))
    assert ran(run_build(None, config(web, out, "filter.min_words=4"))) == ["balance", "dedup", "download",
                                                                            "finalize"]


def test_from_stage_removes_the_stages_past_until_stage_and_says_so(stages, web: Path, tmp_path: Path,
                                                                     caplog) -> None:
    """--from-stage redoes work for a reason no fingerprint holds: what was made from the old output goes."""
    out = tmp_path / "out"
    run_build(None, config(web, out))
    with caplog.at_level(logging.INFO, logger="witbuild.pipeline"):
        results = run_build(None, config(web, out), from_stage="filter", until_stage="match")
    assert ran(results) == ["filter", "match"]
    assert "--from-stage filter: redoing filter, match" in caplog.text
    assert ("--from-stage filter: removed balance, dedup, download, finalize, not redone (past --until-stage "
            "match)") in caplog.text
    assert not any((out / "stages" / n).exists() for n in ("balance", "dedup", "download", "finalize"))


# --------------------------------------------------------------------------------------------
# The counts chain


def test_a_stage_that_reads_other_than_its_upstream_wrote_fails_the_build(stages, web: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    stages["balance"] = (11, 9)  # match wrote 12
    with pytest.raises(CountsChainError, match="match wrote 12 rows but balance read 11 rows"):
        run_build(None, config(web, out))
    assert (out / "stages" / "match" / layout.SUCCESS_FILE).is_file()
    assert not (out / "stages" / "balance").exists()  # never taken for finished: a re-run redoes it
    stages["balance"] = ROWS["balance"]
    assert ran(run_build(None, config(web, out))) == ["balance", "dedup", "download", "finalize"]


def test_the_chain_holds_across_a_change_of_unit() -> None:
    """Download's rows are finalize's images: the same things, counted under another name."""
    download = StageResult("download", StageCounts(rows_in=2545, rows_out=2455, unit="rows"), 1.0, False)
    check_chain(download, "finalize", StageCounts(rows_in=2455, rows_out=2225, unit="images"))
    with pytest.raises(CountsChainError, match="download wrote 2,455 rows but finalize read 2,400 images"):
        check_chain(download, "finalize", StageCounts(rows_in=2400, rows_out=2225, unit="images"))
    check_chain(None, "extract", StageCounts(rows_in=10911, rows_out=9191, unit="images"))  # nothing upstream


def test_the_demo_funnel_chains() -> None:
    """The README's demo funnel (in, out per stage), stage by stage."""
    funnel = [("extract", 10911, 9191), ("filter", 9191, 6051), ("match", 6051, 6051), ("balance", 6051, 3590),
              ("dedup", 3590, 2545), ("download", 2545, 2455), ("finalize", 2455, 2225)]
    upstream = None
    for name, rows_in, rows_out in funnel:
        counts = StageCounts(rows_in=rows_in, rows_out=rows_out)
        check_chain(upstream, name, counts)
        upstream = StageResult(name, counts, 0.0, False)


# --------------------------------------------------------------------------------------------
# A finished stage's files changed on disk


def test_an_unchanged_build_redoes_nothing(stages, web: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_build(None, config(web, out))
    listed = json.loads((out / "stages" / "match" / layout.FILES_FILE).read_text())
    assert set(listed) == {"part.txt", layout.SUCCESS_FILE, layout.COUNTS_FILE}
    assert ran(run_build(None, config(web, out))) == []
    run_build(None, config(web, out), from_stage="download")
    # the stages after the first to run are imported ahead: none that is skipped, nor the first (it starts at once)
    assert [list(STAGE_NAMES[1:]), [], ["finalize"]] == AHEAD


def test_import_ahead_imports_in_the_background_and_leaves_failures_to_the_stage(tmp_path: Path, monkeypatch,
                                                                                  caplog) -> None:
    # the import waits for the test: Python lists a module in sys.modules as soon as its import starts, so a timed
    # sleep in it raced the check below (the thread could be there first on a loaded machine)
    gate = types.ModuleType("gate_for_test")
    gate.OPEN = threading.Event()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gate_for_test", gate)
    (tmp_path / "slow_lib_for_test.py").write_text("import gate_for_test\ngate_for_test.OPEN.wait(10)\n"
                                                    "LOADED = True\n")
    (tmp_path / "broken_stage_for_test.py").write_text("raise ImportError('no such thing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("slow_lib_for_test", "broken_stage_for_test"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "warm_lib_for_test.py").write_text("WARM = []\ndef warm():\n    WARM.append(1)\n"
                                                  "def broken():\n    raise RuntimeError('cold')\n")
    monkeypatch.delitem(sys.modules, "warm_lib_for_test", raising=False)
    stages = [Stage("a", None, "broken_stage_for_test:run", ()), Stage("b", "a", "json:loads", (),
                                                                      imports=("slow_lib_for_test",),
                                                                      warm_ups=("warm_lib_for_test:broken",
                                                                                "warm_lib_for_test:warm"))]
    caplog.set_level(logging.DEBUG, logger="witbuild.pipeline")
    thread = import_ahead(stages)
    assert thread is not None and thread.daemon
    assert not getattr(sys.modules.get("slow_lib_for_test"), "LOADED", False)  # the caller went on at once
    gate.OPEN.set()
    thread.join(10)
    assert sys.modules["slow_lib_for_test"].LOADED
    assert sys.modules["warm_lib_for_test"].WARM == [1]  # after a warm-up that failed (logged, below)
    assert "warming up warm_lib_for_test:broken ahead failed: cold" in caplog.text
    assert "broken_stage_for_test" not in sys.modules and "importing broken_stage_for_test ahead failed" in caplog.text
    with pytest.raises(ImportError, match="no such thing"):
        stages[0].load()
    assert import_ahead([]) is None


@pytest.mark.parametrize(("stage", "edit", "said"), [
    ("match", lambda d: (d / "part.txt").unlink(), "match: 1 file missing since it finished: part.txt"),
    ("dedup", lambda d: (d / "part-00001.parquet").write_bytes(b"x"),
     "dedup: 1 file added since it finished: part-00001.parquet"),
    ("finalize", lambda d: (d / "part.txt").write_text("finalize, edited"),
     "finalize: 1 file of another size since it finished: part.txt (8 bytes → 16 bytes)"),
])
def test_a_finished_stage_whose_files_changed_is_redone_with_every_later_one(stages, web: Path, tmp_path: Path,
                                                                             caplog, stage, edit, said) -> None:
    """A deleted part file would be fewer rows read from then on, an added one more, without a word from Spark."""
    out = tmp_path / "out"
    run_build(None, config(web, out))
    edit(out / "stages" / stage)
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(None, config(web, out))
    assert ran(results) == list(STAGE_NAMES[STAGE_NAMES.index(stage):])
    assert f"{said}: redoing" in caplog.text
    assert ran(run_build(None, config(web, out))) == []


def test_a_stage_from_before_listings_is_listed_then_checked(stages, web: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    run_build(None, config(web, out))
    for listing in (out / "stages").glob(f"*/{layout.FILES_FILE}"):
        listing.unlink()
    (out / "stages" / "filter" / layout.FINGERPRINT_FILE).unlink()  # adopted: rewritten, which is no change
    with caplog.at_level(logging.INFO, logger="witbuild.pipeline"):
        assert ran(run_build(None, config(web, out))) == []
    assert "stage extract has no _files.json (made by an older witbuild): its files are listed now" in caplog.text
    assert all((out / "stages" / n / layout.FILES_FILE).is_file() for n in STAGE_NAMES)
    (out / "stages" / "balance" / "part.txt").unlink()
    assert ran(run_build(None, config(web, out))) == list(STAGE_NAMES[STAGE_NAMES.index("balance"):])


def test_a_finished_match_whose_query_list_is_gone_is_redone(web: Path, tmp_path: Path) -> None:
    """Balance reads the list match ran against; one counted over the filtered pool only match can make again, so
    a build whose ``querylist/`` went failed the same way on every re-run."""
    out = tmp_path / "out"
    cfg = config(web, out)
    last = STAGE_NAMES[-1]
    assert pipeline.stale_querylist(cfg, None, last) is None  # match not finished
    for name in ("match", "balance"):
        folder = out / "stages" / name
        folder.mkdir(parents=True)
        (folder / layout.SUCCESS_FILE).write_text("")
        (folder / layout.COUNTS_FILE).write_text("{}")
    assert pipeline.stale_querylist(cfg, None, last) is None  # balance finished: nothing reads the list
    later = ("dedup", ["dedup.phash_threshold 4 → 2"])
    assert pipeline.stale_querylist(cfg, later, last) == later
    balance = ("balance", ["balance.t 20 → 30"])
    stale = pipeline.stale_querylist(cfg, balance, last)
    assert stale is not None and stale[0] == "match" and "is gone" in stale[1][0]
    assert pipeline.stale_querylist(cfg, balance, "match") == balance  # balance does not run
    earlier = ("filter", ["filter.min_words 3 → 4"])
    assert pipeline.stale_querylist(cfg, earlier, last) == earlier
    assert pipeline.stale_querylist(config(web, out, "querylist.bigrams=false"), balance, last) == balance
