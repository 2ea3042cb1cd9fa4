"""Confidence intervals over a few seeds: Student's t, because with 3–5 runs a normal interval is too narrow.

The difference between two variants is paired by seed: seed s of both variants shares the model's initial weights
and the data order's seed, so the per-seed differences cancel what the seed alone does, and the interval of their
mean is narrower than the two variants' intervals suggest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95


def mean_ci(values: Sequence[float], level: float = LEVEL) -> dict:
    """``{"mean", "low", "high", "sd", "n"}``: the mean and its two-sided t-interval (low = high = mean for n = 1,
    where no spread can be measured, and ``sd`` is None)."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "sd": None, "n": 0}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> dict:
    """Mean and t-interval of ``a[s] - b[s]`` over the seeds both have, with the seeds used and whether the
    interval excludes 0 (``excludes_zero``: the difference is unlikely to be seed noise alone)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None]
    out = mean_ci(diffs, level)
    out["seeds"] = seeds
    out["excludes_zero"] = bool(out["low"] is not None and (out["low"] > 0 or out["high"] < 0))
    return out
