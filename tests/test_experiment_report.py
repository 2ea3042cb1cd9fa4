"""The experiment report: intervals checked against scipy computed here, the seed pairing, failed variants, the
terminal table's exact numbers and the files written."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats

from witbuild.experiment.report import format_table, summarize, write_html, write_report

SEED_EFFECT = {0: 0.00, 1: 0.08, 2: -0.06}  # what the seed alone does, shared by every variant


def _runs(base: dict[str, float], shifts: dict[str, tuple[float, float, float]], str_keys: bool = True) -> dict:
    """Runs over seeds 0-2: the base value plus the seed effect plus a per-seed shift."""
    runs = {}
    for seed, eff in SEED_EFFECT.items():
        run = {m: round(v + eff + shifts.get(m, (0.0, 0.0, 0.0))[seed], 6) for m, v in base.items()}
        runs[str(seed) if str_keys else seed] = run
    return runs


RAW = {"zeroshot": 0.40, "head": 0.62, "tail": 0.18, "linear_probe": 0.77, "retrieval_R@1": 0.30}


def _results() -> dict:
    balanced = _runs(RAW, {"zeroshot": (0.031, 0.029, 0.032), "head": (-0.008, -0.012, -0.007),
                           "tail": (0.052, 0.047, 0.051), "linear_probe": (0.01, -0.01, 0.01)})
    balanced["2"]["retrieval_R@1"] = None  # not measured: skipped, n = 2
    balanced["0"]["imagenet_top5"] = 0.6  # a metric the report does not know: shown after the known ones
    near = _runs(RAW, {"zeroshot": (0.02, -0.02, 0.01), "linear_probe": (0.0, 0.01, -0.01)}, str_keys=False)
    return {"baseline": "raw", "seeds": [0, 1, 2], "variants": {
        "raw": {"sets": ["balance.method=uniform", "balance.target_size=2950"],
                "dataset": {"balanced_pairs": 2950, "samples": 2210}, "runs": _runs(RAW, {}), "error": None},
        "balanced": {"sets": ["balance.target_size=2950"], "dataset": {"balanced_pairs": 2950, "samples": 2188},
                     "runs": balanced, "error": None},
        "dedup<near>": {"sets": ["dedup.near=true"], "dataset": {"balanced_pairs": 2950, "samples": 2001},
                        "runs": near, "error": None},
        "broken": {"sets": ["balance.t=-1"], "dataset": {}, "runs": {}, "error": "ValueError: t must be > 0"},
    }}


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    low, high = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    return float(a.mean()), float(low), float(high)


def test_summarize_means_and_intervals_match_scipy() -> None:
    results = _results()
    s = summarize(results)
    assert s["metrics"] == ["zeroshot", "head", "tail", "linear_probe", "retrieval_R@1", "imagenet_top5"]
    for name in ("raw", "balanced", "dedup<near>"):
        runs = results["variants"][name]["runs"]
        for m in ("zeroshot", "head", "tail", "linear_probe", "retrieval_R@1"):
            values = [r[m] for r in runs.values() if r.get(m) is not None]
            mean, low, high = _t_interval(values)
            ci = s["variants"][name]["metrics"][m]
            assert ci["n"] == len(values)
            assert ci["mean"] == pytest.approx(mean) and ci["low"] == pytest.approx(low)
            assert ci["high"] == pytest.approx(high)
    assert s["variants"]["balanced"]["metrics"]["retrieval_R@1"]["n"] == 2
    top5 = s["variants"]["balanced"]["metrics"]["imagenet_top5"]
    assert top5["n"] == 1 and top5["low"] is None
    assert s["variants"]["dedup<near>"]["seeds"] == [0, 1, 2]


def test_paired_difference_uses_the_seed_pairing() -> None:
    results = _results()
    s = summarize(results)
    raw, bal = results["variants"]["raw"]["runs"], results["variants"]["balanced"]["runs"]
    a = [bal[k]["zeroshot"] for k in ("0", "1", "2")]
    b = [raw[k]["zeroshot"] for k in ("0", "1", "2")]
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    d = s["differences"]["balanced"]["zeroshot"]
    assert d["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (d["low"], d["high"]) == pytest.approx((expected.low, expected.high))
    assert d["seeds"] == [0, 1, 2] and d["excludes_zero"]
    # the seed effect cancels: the paired interval is far narrower than either variant's own
    own = s["variants"]["balanced"]["metrics"]["zeroshot"]
    assert (d["high"] - d["low"]) < (own["high"] - own["low"]) / 10
    assert not s["differences"]["balanced"]["linear_probe"]["excludes_zero"]
    assert s["differences"]["balanced"]["retrieval_R@1"]["seeds"] == [0, 1]
    assert s["differences"]["balanced"]["imagenet_top5"]["mean"] is None  # the baseline never measured it
    assert set(s["differences"]) == {"balanced", "dedup<near>"} and s["note"] is None


def test_table_numbers_and_markers() -> None:
    text = format_table(summarize(_results()))
    assert text == format_table(summarize(_results()))
    lines = text.splitlines()
    raw_row = next(line for line in lines if line.startswith("raw (baseline)"))
    assert "40.7 ± 17.4" in raw_row and "2,950" in raw_row and "2,210" in raw_row
    bal_row = next(line for line in lines if line.startswith("balanced − raw"))
    assert "+3.1 [+2.7, +3.4] *" in bal_row
    assert bal_row.count("*") == 3  # zero-shot, head third, tail third; not the linear probe nor retrieval
    assert "(n=2)" not in bal_row and "(n=1)" in next(line for line in lines if line.startswith("balanced "))
    near_row = next(line for line in lines if line.startswith("dedup<near> − raw"))
    assert "*" not in near_row
    assert "broken (failed)" in text and "broken: ValueError: t must be > 0" in text
    assert "broken − raw" not in text


def test_failed_baseline_gives_a_note_not_an_error(tmp_path) -> None:
    results = _results()
    results["variants"]["raw"].update(error="RuntimeError: out of memory", runs={})
    s = summarize(results)
    assert s["differences"] == {} and "raw" in s["note"]
    assert s["variants"]["balanced"]["metrics"]["zeroshot"]["n"] == 3
    text = format_table(s)
    assert "note: " in text and "raw: RuntimeError: out of memory" in text and " − raw" not in text
    absent = copy.deepcopy(results)
    absent["baseline"] = "missing"
    assert summarize(absent)["differences"] == {} and "missing" in summarize(absent)["note"]
    write_html(s, tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 1


def test_write_report(tmp_path) -> None:
    results = _results()
    summary = write_report(results, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "experiment.json").read_text())
    assert saved["summary"] == summary
    assert summarize(saved["results"]) == summary  # str seed keys after JSON give the same summary
    assert list(saved["results"]["variants"]) == list(results["variants"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<img class="plot" alt="') == 2 and page.count('src="data:image/png;base64,') == 2
    assert "dedup&lt;near&gt;" in page and "dedup<near>" not in page
    assert "ValueError: t must be &gt; 0" in page
