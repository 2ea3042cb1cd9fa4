"""The experiment report: intervals checked against scipy computed here, the seed pairing, failed variants, the
terminal table's exact numbers and the files written."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats

from witbuild.experiment.report import (
    difference_cell,
    failed_variants,
    format_table,
    mean_cell,
    summarize,
    write_html,
    write_report,
)

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
    assert "retrieval_R@1" not in s["differences"]["balanced"]  # scored on each variant's own pairs
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
    assert "; code" not in page  # results of an older witbuild record no code
    coded = {**results, "code": {"version": "0.1.0", "commit": "c8e7c5056423f728", "modified": True}}
    write_report(coded, tmp_path / "coded")
    assert "seeds 0, 1, 2; code 0.1.0 (c8e7c50, modified)</p>" in (tmp_path / "coded" / "report.html").read_text()


def _run(z: float, probe: float, retrieval: float) -> dict:
    return {"zeroshot": z, "head": 0.7, "tail": 0.3, "linear_probe": probe, "retrieval_R@1": retrieval}


def _two_variants(raw: dict, balanced: dict, raw_error: str | None = None, bal_error: str | None = None) -> dict:
    return {"baseline": "raw", "seeds": [0, 1, 2], "variants": {
        "raw": {"sets": [], "dataset": {}, "runs": raw, "error": raw_error},
        "balanced": {"sets": [], "dataset": {}, "runs": balanced, "error": bal_error}}}


def test_retrieval_is_shown_per_variant_and_never_differenced(tmp_path) -> None:
    """Each variant's retrieval is scored on its own held-out pairs: a steady gain on every seed is no difference
    the report may give, let alone mark, and both the table and the page say why."""
    raw = {str(s): _run(0.5 + s / 100, 0.8, 0.62 + s / 50) for s in range(3)}
    bal = {str(s): _run(0.5 + s / 100 + 0.01 * (s + 1), 0.8, 0.69 + s / 50 + s / 1000) for s in range(3)}
    summary = write_report(_two_variants(raw, bal), tmp_path)
    assert "retrieval_R@1" not in summary["differences"]["balanced"]
    assert summary["variants"]["balanced"]["metrics"]["retrieval_R@1"]["n"] == 3
    assert "retrieval_R@1" in summary["unpaired"]
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert saved["results"]["variants"]["balanced"]["runs"]["0"]["retrieval_R@1"] == 0.69  # per-run numbers kept
    text = format_table(summary)
    diff_table = text.split("differences from raw")[1]
    assert "retrieval" not in diff_table
    assert "retrieval R@1, own pairs" in text.split("differences from raw")[0]
    explained = "the mean of image→text and text→image R@1, each variant scored on its own held-out pairs: " \
                "not comparable across variants"
    assert explained in text
    page = (tmp_path / "report.html").read_text()
    assert explained in page and "retrieval R@1, own pairs" in page


def test_a_difference_without_spread_has_no_interval_and_no_mark(tmp_path) -> None:
    """The same number of images gained on every seed: the difference is shown with its n and no star, and the
    JSON records no interval rather than one of width 0."""
    raw = {str(s): _run((100 + s) / 516, (200 + 3 * s) / 258, 0.6) for s in range(3)}
    bal = {str(s): _run((101 + s) / 516, (201 + 3 * s) / 258, 0.6) for s in range(3)}
    summary = write_report(_two_variants(raw, bal), tmp_path)
    row = next(line for line in format_table(summary).splitlines() if line.startswith("balanced − raw"))
    assert "+0.2 (no spread, n=3)" in row and "+0.4 (no spread, n=3)" in row and "*" not in row
    assert "+0.0 (no spread, n=3)" in row  # head and tail: the same on both sides
    saved = json.loads((tmp_path / "experiment.json").read_text())["summary"]["differences"]["balanced"]["zeroshot"]
    assert saved["low"] is None and saved["high"] is None and saved["no_spread"] and not saved["excludes_zero"]
    head = summary["variants"]["raw"]["metrics"]["head"]
    assert head["no_spread"] and mean_cell(head) == "70.0 (no spread, n=3)"
    assert "no spread: every seed gave the same value" in format_table(summary)


def test_one_failed_seed_costs_that_seed_not_the_variant() -> None:
    raw = {str(s): _run(0.50 + s / 100, 0.80, 0.6) for s in range(3)}
    bal = {"0": _run(0.53, 0.81, 0.6), "1": _run(0.545, 0.815, 0.6)}
    s = summarize(_two_variants(raw, bal, bal_error="training failed: seed 2 (exit 1)"))
    d = s["differences"]["balanced"]["zeroshot"]
    ci = stats.ttest_rel([0.53, 0.545], [0.50, 0.51]).confidence_interval(0.95)
    assert d["seeds"] == [0, 1] and d["n"] == 2 and d["mean"] == pytest.approx(0.0325)
    assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high))
    text = format_table(s)
    row = next(line for line in text.splitlines() if line.startswith("balanced − raw"))
    assert row.endswith("n=2: 0, 1") and f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}] *" in row
    assert "balanced (failed)" in text and failed_variants(s) == ["balanced"]


def test_a_failed_baseline_is_tagged_failed_and_pairs_the_seeds_it_has() -> None:
    raw = {"0": _run(0.50, 0.80, 0.6), "1": _run(0.51, 0.82, 0.6)}
    bal = {str(s): _run(0.53 + s / 100 + s / 1000, 0.81, 0.6) for s in range(3)}
    s = summarize(_two_variants(raw, bal, raw_error="training failed: seed 2 (exit 1)"))
    assert s["note"] is None and s["differences"]["balanced"]["zeroshot"]["seeds"] == [0, 1]
    text = format_table(s)
    assert "raw (baseline, failed)" in text and "balanced − raw" in text
    assert failed_variants(s) == ["raw"] and failed_variants(summarize(_results())) == ["broken"]


def test_a_metric_over_fewer_seeds_than_its_row_says_so() -> None:
    raw = {str(s): _run(0.50 + s / 100, 0.80 + s / 90, 0.6) for s in range(3)}
    bal = {str(s): _run(0.53 + s / 100 + s / 1000, 0.82 + s / 80, 0.6) for s in range(3)}
    bal["2"]["linear_probe"] = None
    s = summarize(_two_variants(raw, bal))
    row = next(line for line in format_table(s).splitlines() if line.startswith("balanced − raw"))
    probe = s["differences"]["balanced"]["linear_probe"]
    assert probe["n"] == 2 and difference_cell(probe, 3).endswith("(n=2) *") and row.endswith("n=3: 0, 1, 2")
    assert "(n=2)" in row


def test_a_build_that_kept_no_sample_trains_nothing_and_says_so() -> None:
    from witbuild.experiment.run import empty_build

    reason = empty_build({"pool_pairs": 5575, "balanced_pairs": 0, "downloaded": 0, "samples": 0})
    assert reason == "build kept 0 samples (pool_pairs 5,575, balanced_pairs 0, downloaded 0): no training run launched"
    assert empty_build({"samples": 12}) is None and empty_build({}) is not None
