"""Confidence intervals over a few seeds: Student's t, because with 3–5 runs a normal interval is too narrow.

The difference between two variants is paired by seed: seed s of both variants shares the data order's seed and
the vision tower's initial weights (each variant fits its own BPE vocabulary, so the text tower starts apart), so
the per-seed differences cancel much of what the seed alone does, and the interval of their mean is narrower than
the two variants' intervals suggest.

The metrics are counts over a fixed folder (k of n images), so several seeds can give exactly the same value or the
same difference. A t-interval needs a spread to scale: with none it is no interval of width 0 (which would claim
certainty from 3 runs) but no interval at all, flagged ``no_spread``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95
NO_SPREAD = 1e-9  # a standard deviation below this is rounding noise of equal values, not spread


def mean_ci(values: Sequence[float | None], level: float = LEVEL) -> dict:
    """``{"mean", "low", "high", "sd", "n"}``: the mean and its two-sided t-interval. ``low`` and ``high`` are None
    where no interval can be estimated: one run (``sd`` None too), or runs that all agree (``sd`` 0 and
    ``"no_spread": True``)."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "sd": None, "n": 0}
    mean = math.fsum(xs) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    if sd < NO_SPREAD:
        return {"mean": mean, "low": None, "high": None, "sd": 0.0, "n": n, "no_spread": True}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def paired_difference(a: dict[int, float | None], b: dict[int, float | None], level: float = LEVEL) -> dict:
    """Mean and t-interval of ``a[s] - b[s]`` over the seeds where both have a value (``seeds``), and whether the
    interval excludes 0 (``excludes_zero``: the difference is unlikely to be seed noise alone; never without an
    interval)."""
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    out = mean_ci([a[s] - b[s] for s in seeds], level)  # type: ignore[operator]
    out["seeds"] = seeds
    out["excludes_zero"] = bool(out["low"] is not None and (out["low"] > 0 or out["high"] < 0))
    return out
