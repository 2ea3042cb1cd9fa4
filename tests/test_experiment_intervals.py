"""Confidence intervals of the experiment report, against scipy's own t-interval and t-test."""

from __future__ import annotations

import pytest
from scipy import stats

from witbuild.experiment.intervals import mean_ci, paired_difference


def test_mean_ci_is_scipys_t_interval() -> None:
    xs = [0.61, 0.64, 0.58, 0.66]
    ci = mean_ci(xs)
    low, high = stats.t.interval(0.95, len(xs) - 1, loc=stats.tmean(xs), scale=stats.sem(xs))
    assert ci["mean"] == pytest.approx(sum(xs) / 4)
    assert (ci["low"], ci["high"]) == (pytest.approx(low), pytest.approx(high))
    assert ci["n"] == 4 and ci["sd"] == pytest.approx(stats.tstd(xs))


def test_mean_ci_of_one_run_has_no_interval() -> None:
    assert mean_ci([0.5]) == {"mean": 0.5, "low": None, "high": None, "sd": None, "n": 1}
    assert mean_ci([])["n"] == 0 and mean_ci([None, float("nan")])["mean"] is None


def test_paired_difference_agrees_with_the_paired_t_test() -> None:
    a = {0: 0.70, 1: 0.66, 2: 0.72, 3: 0.69}
    b = {0: 0.65, 1: 0.64, 2: 0.66, 3: 0.66, 9: 0.99}  # seed 9 has no partner: left out
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2, 3] and d["n"] == 4
    seeds = d["seeds"]
    p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    assert d["excludes_zero"] == (p < 0.05)  # a 95% interval excludes 0 exactly when the paired test rejects
    assert d["low"] > 0


def test_pairing_removes_the_seed_effect() -> None:
    # the seed moves both variants by a lot; the variant adds a steady 0.02: unpaired intervals overlap,
    # the paired one does not contain 0
    seed_effect = {0: 0.0, 1: 0.10, 2: -0.08, 3: 0.05}
    a = {s: 0.5 + e + 0.02 + 0.001 * s for s, e in seed_effect.items()}
    b = {s: 0.5 + e for s, e in seed_effect.items()}
    ca, cb = mean_ci(list(a.values())), mean_ci(list(b.values()))
    assert ca["low"] < cb["high"]
    assert paired_difference(a, b)["excludes_zero"]


def test_equal_values_have_no_interval() -> None:
    """Runs that all agree give no t-interval (its width would be 0: certainty from a few runs), flagged."""
    ci = mean_ci([0.7, 0.7, 0.7])
    assert ci == {"mean": pytest.approx(0.7), "low": None, "high": None, "sd": 0.0, "n": 3, "no_spread": True}


def test_the_same_gain_on_every_seed_is_no_spread_and_not_marked() -> None:
    """Accuracies are k/n: every seed gaining one image of 516 gives differences equal but for float rounding
    (sd ~1e-17), which must not pass for an interval that excludes 0."""
    a = {s: (101 + s) / 516 for s in range(3)}
    b = {s: (100 + s) / 516 for s in range(3)}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(1 / 516) and d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["low"] is None and d["high"] is None and d["no_spread"] and not d["excludes_zero"]
    spread = paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.45})
    assert spread["low"] is not None and "no_spread" not in spread


def test_a_seed_without_a_value_on_either_side_is_not_paired() -> None:
    d = paired_difference({0: 0.6, 1: 0.7, 2: None}, {0: 0.5, 1: 0.55, 2: 0.5, 3: 0.4})
    assert d["seeds"] == [0, 1] and d["n"] == 2
