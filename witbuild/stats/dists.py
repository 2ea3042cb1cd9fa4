"""Mergeable, streaming distributions: exact integer counts, log-binned ratios, and concentration measures.

Why these and not a list of values: ``stats`` reads tens of millions of rows in parallel threads, each folding its
batches into its own accumulator; percentiles of a list cannot be merged, counts per value can, and for integer
quantities (words, characters, pixels) counts per value are exact and small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
INT_CAP = 1 << 20  # larger values are binned at the cap (their min/max/mean stay exact)
MAX_BINS = 40
NICE_WIDTHS = tuple(m * 10**e for e in range(9) for m in (1, 2, 5))
RATIO_STEP = 0.002  # fine bins of ln(ratio): ratio percentiles are exact to ±0.1 %
RATIO_LIMIT = math.log(1024.0)
RATIO_BINS_PER_OCTAVE = 4  # coarse histogram of ratios: quarter octaves (×1.19)
RATIO_OCTAVES = 5  # coarse histogram spans 1/32 .. 32, with under- and overflow
SCORE_STEP = 0.001  # fine bins of a cosine similarity in [-1, 1]: score percentiles are exact to ±0.0005
SCORE_WIDTHS = (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5)  # histogram bin widths to choose from


def nearest_rank(cumulative: np.ndarray, n: int, q: float) -> int:
    """Index of the q-quantile by nearest rank: the smallest value with at least ``q·n`` values at or below it."""
    rank = max(1, math.ceil(q * n - 1e-9))
    return int(np.searchsorted(cumulative, rank, side="left"))


@dataclass
class IntDist:
    """Exact distribution of non-negative integers: counts per value, grown to the largest value seen."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n: int = 0
    total: int = 0
    lo: int | None = None
    hi: int | None = None

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        values = np.asarray(values).astype(np.int64, copy=False)
        binned = np.bincount(np.clip(values, 0, INT_CAP))
        if len(binned) > len(self.counts):
            grown = np.zeros(len(binned), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[: len(binned)] += binned
        self.n += len(values)
        self.total += int(values.sum())
        lo, hi = int(values.min()), int(values.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def merge(self, other: IntDist) -> None:
        if other.n == 0:
            return
        if len(other.counts) > len(self.counts):
            self.counts, other_counts = other.counts.copy(), self.counts
        else:
            other_counts = other.counts
        self.counts[: len(other_counts)] += other_counts
        self.n += other.n
        self.total += other.total
        self.lo = other.lo if self.lo is None else min(self.lo, other.lo)  # type: ignore[type-var]
        self.hi = other.hi if self.hi is None else max(self.hi, other.hi)  # type: ignore[type-var]

    def summary(self) -> dict[str, Any] | None:
        """count, min, max, mean, nearest-rank percentiles and a histogram of at most ``MAX_BINS`` bins."""
        if self.n == 0:
            return None
        cum = np.cumsum(self.counts)
        pct = {f"p{p}": nearest_rank(cum, self.n, p / 100) for p in PERCENTILES}
        return {"count": self.n, "min": self.lo, "max": self.hi, "mean": round(self.total / self.n, 4),
                "percentiles": pct, "histogram": self._histogram(pct["p99"])}

    def _histogram(self, p99: int) -> dict[str, Any]:
        lo, hi = int(self.lo or 0), int(self.hi or 0)
        upper = hi if hi <= max(2 * p99, p99 + 20) else p99  # a long thin tail goes to ``overflow``
        upper = min(upper, INT_CAP)
        width = next(w for w in NICE_WIDTHS if (upper - lo + 1) / w <= MAX_BINS)
        start = lo // width * width
        nbins = (upper - start) // width + 1
        stop = start + nbins * width
        padded = np.zeros(stop - start, dtype=np.int64)
        chunk = self.counts[start:stop]
        padded[: len(chunk)] = chunk
        binned = padded.reshape(nbins, width).sum(axis=1)
        return {"edges": [start + i * width for i in range(nbins + 1)], "counts": binned.tolist(),
                "underflow": 0, "overflow": int(self.counts[stop:].sum())}


def _ratio_bins() -> int:
    return 2 * math.ceil(RATIO_LIMIT / RATIO_STEP) + 1


@dataclass
class _FloatMoments:
    """Count, sum, min and max of the float values a distribution has seen (mergeable)."""

    n: int = 0
    total: float = 0.0
    lo: float | None = None
    hi: float | None = None

    def _note(self, values: np.ndarray) -> None:
        self.n += len(values)
        self.total += float(values.sum())
        lo, hi = float(values.min()), float(values.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def _merge_moments(self, other: _FloatMoments) -> None:
        self.n += other.n
        self.total += other.total
        self.lo = other.lo if self.lo is None else min(self.lo, other.lo)  # type: ignore[type-var]
        self.hi = other.hi if self.hi is None else max(self.hi, other.hi)  # type: ignore[type-var]


@dataclass
class RatioDist(_FloatMoments):
    """Positive ratios (aspect = width / height): fine ln-bins for percentiles, a quarter-octave histogram."""

    fine: np.ndarray = field(default_factory=lambda: np.zeros(_ratio_bins(), dtype=np.int64))
    coarse: np.ndarray = field(default_factory=lambda: np.zeros(
        2 * RATIO_OCTAVES * RATIO_BINS_PER_OCTAVE + 2, dtype=np.int64))  # [underflow, bins..., overflow]

    def add(self, ratios: np.ndarray) -> None:
        ratios = np.asarray(ratios, dtype=np.float64)
        ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
        if len(ratios) == 0:
            return
        logs = np.log(ratios)
        centre = len(self.fine) // 2
        idx = np.clip(np.rint(logs / RATIO_STEP).astype(np.int64) + centre, 0, len(self.fine) - 1)
        self.fine += np.bincount(idx, minlength=len(self.fine))
        k = RATIO_OCTAVES * RATIO_BINS_PER_OCTAVE
        # quarter-octave bin of log2(r); a tiny epsilon keeps exact powers of 2^(1/4) in the bin they start
        coarse = np.floor(np.log2(ratios) * RATIO_BINS_PER_OCTAVE + 1e-9).astype(np.int64)
        self.coarse += np.bincount(np.clip(coarse + k + 1, 0, 2 * k + 1), minlength=len(self.coarse))
        self._note(ratios)

    def merge(self, other: RatioDist) -> None:
        if other.n == 0:
            return
        self.fine += other.fine
        self.coarse += other.coarse
        self._merge_moments(other)

    def summary(self) -> dict[str, Any] | None:
        if self.n == 0:
            return None
        cum = np.cumsum(self.fine)
        centre = len(self.fine) // 2
        pct = {f"p{p}": round(math.exp((nearest_rank(cum, self.n, p / 100) - centre) * RATIO_STEP), 3)
               for p in PERCENTILES}
        k = RATIO_OCTAVES * RATIO_BINS_PER_OCTAVE
        inner = self.coarse[1:-1]
        used = np.flatnonzero(inner)
        first, last = (int(used[0]), int(used[-1])) if len(used) else (k, k)
        edges = [round(2 ** ((i - k) / RATIO_BINS_PER_OCTAVE), 4) for i in range(first, last + 2)]
        return {"count": self.n, "min": round(self.lo, 4), "max": round(self.hi, 4),  # type: ignore[arg-type]
                "mean": round(self.total / self.n, 4), "percentiles": pct,
                "histogram": {"edges": edges, "counts": inner[first: last + 1].tolist(),
                              "underflow": int(self.coarse[0]), "overflow": int(self.coarse[-1])},
                "resolution": f"percentiles ±{RATIO_STEP / 2:.1%}"}


def _score_bins() -> int:
    return round(2 / SCORE_STEP) + 1


@dataclass
class ScoreDist(_FloatMoments):
    """Cosine similarities (CLIP scores, in [-1, 1]): fine bins for percentiles, a histogram over the range used."""

    fine: np.ndarray = field(default_factory=lambda: np.zeros(_score_bins(), dtype=np.int64))

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if len(scores) == 0:
            return
        idx = np.clip(np.rint((scores + 1.0) / SCORE_STEP).astype(np.int64), 0, len(self.fine) - 1)
        self.fine += np.bincount(idx, minlength=len(self.fine))
        self._note(scores)

    def merge(self, other: ScoreDist) -> None:
        if other.n == 0:
            return
        self.fine += other.fine
        self._merge_moments(other)

    def summary(self) -> dict[str, Any] | None:
        if self.n == 0:
            return None
        cum = np.cumsum(self.fine)
        pct = {f"p{p}": round(nearest_rank(cum, self.n, p / 100) * SCORE_STEP - 1.0, 4) for p in PERCENTILES}
        lo, hi = float(self.lo), float(self.hi)  # type: ignore[arg-type]
        width = next((w for w in SCORE_WIDTHS if (hi - lo) / w < MAX_BINS), SCORE_WIDTHS[-1])
        start = math.floor(lo / width + 1e-9) * width
        nbins = max(1, math.floor((hi - start) / width + 1e-9) + 1)
        values = np.arange(len(self.fine)) * SCORE_STEP - 1.0
        which = np.clip(np.floor((values - start) / width + 1e-9).astype(np.int64), 0, nbins - 1)
        counts = np.bincount(which, weights=self.fine, minlength=nbins).astype(np.int64)
        return {"count": self.n, "min": round(lo, 4), "max": round(hi, 4), "mean": round(self.total / self.n, 4),
                "percentiles": pct,
                "histogram": {"edges": [round(start + i * width, 4) for i in range(nbins + 1)],
                              "counts": counts[:nbins].tolist(), "underflow": 0, "overflow": 0},
                "resolution": f"percentiles ±{SCORE_STEP / 2}"}


def concentration(x: np.ndarray) -> dict[str, Any] | None:
    """How evenly counts spread over entries: Shannon entropy (bits, and over its maximum log2 n) and Gini.

    ``x`` holds one count per entry of the population (zeros included: an entry balancing emptied still counts).
    """
    x = np.asarray(x, dtype=np.float64)
    n, total = len(x), float(x.sum())
    if n == 0 or total <= 0:
        return None
    p = x[x > 0] / total
    entropy = float(-(p * np.log2(p)).sum())
    ranks = np.arange(1, n + 1, dtype=np.float64)
    gini = float(2 * (ranks * np.sort(x)).sum() / (n * total) - (n + 1) / n)
    return {"entries": n, "nonzero_entries": int((x > 0).sum()), "total": int(total), "max": int(x.max()),
            "entropy_bits": round(entropy, 6), "normalized_entropy": round(entropy / math.log2(n), 6) if n > 1 else 1.0,
            "effective_entries": round(2**entropy, 3), "gini": round(gini, 6)}


def rank_frequency(x: np.ndarray, points: int = 200) -> dict[str, list[int]]:
    """Counts sorted from the largest, at ~``points`` log-spaced ranks (what a log-log plot needs)."""
    xs = np.sort(np.asarray(x, dtype=np.int64)[np.asarray(x) > 0])[::-1]
    if len(xs) == 0:
        return {"ranks": [], "counts": []}
    ranks = np.unique(np.rint(np.logspace(0, math.log10(len(xs)), points)).astype(np.int64))
    return {"ranks": ranks.tolist(), "counts": xs[ranks - 1].tolist()}
