"""MetaCLIP balancing: cap every query entry at about ``t`` pairs, so head entries ("photo", "the") stop
dominating and the tail is kept whole.

With ``c_e`` pairs matching entry ``e`` over the whole pool, each entry gets ``p_e = min(1, t / c_e)``. A pair
matching the entries ``E`` gets one independent uniform draw per matched entry and is kept when any draw is
below its ``p_e`` (MetaCLIP ``balancing.py``), so it is kept with probability ``P = 1 - prod_{e in E}(1 - p_e)``.
Pairs matching no entry are dropped. ``sum P`` over the pool is the exact expected size of the result
(:func:`expected_size_pairs`, needs the match lists). From the counts alone, :func:`expected_size_single` gives
``sum_e min(c_e, t) = sum_e c_e p_e``: exact when every pair matches one entry, and an upper bound otherwise
(union bound: ``P <= sum_{e in E} p_e``).

Draws are a deterministic function of (pair id, entry id, seed), so a re-run, or a Spark task retried on
another executor, keeps exactly the same pairs. The draw is:

- ``h = blake2b(utf8(uid), digest_size=8, key=seed as 8 little-endian bytes)`` read as a little-endian uint64
  (one cryptographic hash per pair, seed-keyed, so different seeds give unrelated streams);
- ``z = splitmix64_mix(h + (entry_id + 1) * 0x9E3779B97F4A7C15 mod 2**64)`` (SplitMix64's output function at
  the stream position of the entry: well-mixed, independent-looking values per entry, vectorisable in numpy);
- ``u = (z >> 11) / 2**53``, a float in [0, 1).

:func:`uniform_draw` is the scalar reference, :func:`balance_batch` the vectorised one; they agree bit for bit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

DEFAULT_T = 20_000
"""CLIP: "up to 20,000 (image, text) pairs per query"; MetaCLIP's t for 400M pairs."""

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_TO_UNIT = 2.0**-53


class BalanceConfig(BaseModel):
    """Balancing settings: either a per-entry cap ``t`` or a ``target_size`` to solve ``t`` for, not both."""

    model_config = ConfigDict(extra="forbid")

    t: int | None = Field(
        None,
        ge=1,
        description=f"Per-entry cap: p_e = min(1, t / c_e). None: {DEFAULT_T:,} "
        "(MetaCLIP/CLIP for 400M pairs) unless target_size is set.",
    )
    target_size: int | None = Field(
        None,
        ge=1,
        description="Expected number of pairs after balancing; t is "
        "solved for it from the pool's counts. Exclusive with t.",
    )
    seed: int = Field(0, ge=0, lt=2**64, description="Seed of the per-(pair, entry) draws.")
    method: Literal["metaclip", "uniform"] = Field(
        "metaclip",
        description="metaclip: cap each entry at t; uniform: no balancing, every matched pair kept with the same "
        "probability target_size / pool (the unbalanced control of an experiment at equal size; needs target_size).",
    )

    @model_validator(mode="after")
    def _t_or_target(self) -> BalanceConfig:
        if self.method == "uniform" and (self.target_size is None or self.t is not None):
            raise ValueError("balance.method=uniform keeps a uniform random sample of the pool: set "
                             "balance.target_size (its expected size) and leave balance.t unset")
        if self.t is not None and self.target_size is not None:
            raise ValueError(
                f"balance.t ({self.t}) and balance.target_size ({self.target_size}) are both set: set one of them "
                "(t is solved from target_size)"
            )
        return self

    @property
    def fixed_t(self) -> int | None:
        """The cap to use directly: ``t``, or :data:`DEFAULT_T` when neither is set; None when t must be solved
        for ``target_size`` (:func:`solve_t`)."""
        if self.target_size is not None:
            return None
        return self.t if self.t is not None else DEFAULT_T


# --------------------------------------------------------------------------------------------- probabilities


def count_matches(matched: Iterable[Sequence[int]], n_entries: int) -> np.ndarray:
    """c_e: the number of pairs matching each entry (each pair's ids must be unique, as :class:`Matcher` gives)."""
    flat = np.fromiter(itertools.chain.from_iterable(matched), dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n_entries):
        raise ValueError(f"entry ids must lie in [0, {n_entries}); got {flat.min()}..{flat.max()}")
    return np.bincount(flat, minlength=n_entries).astype(np.int64)


def entry_probabilities(counts: np.ndarray | Sequence[int], t: float) -> np.ndarray:
    """p_e = min(1, t / c_e) (1.0 for entries no pair matches)."""
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    c = np.asarray(counts, dtype=np.float64)
    if c.size and c.min() < 0:
        raise ValueError("counts must be non-negative")
    p = np.ones_like(c)
    np.divide(t, c, out=p, where=c > t)
    return p


def keep_probability(matched_ids: Sequence[int], p: np.ndarray) -> float:
    """P = 1 - prod(1 - p_e) over the entries a pair matches (0.0 when it matches none)."""
    return 1.0 - math.prod(1.0 - float(p[e]) for e in matched_ids)


def _flatten(matched: Sequence[Sequence[int]], n_entries: int) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(m) for m in matched), dtype=np.int64, count=len(matched))
    flat = np.fromiter(itertools.chain.from_iterable(matched), dtype=np.int64, count=int(lens.sum()))
    if flat.size and (flat.min() < 0 or flat.max() >= n_entries):
        raise ValueError(f"entry ids must lie in [0, {n_entries}); got {flat.min()}..{flat.max()}")
    return lens, flat


def keep_probabilities(matched: Sequence[Sequence[int]], p: np.ndarray) -> np.ndarray:
    """:func:`keep_probability` for a batch of pairs, vectorised (float64 array)."""
    p = np.asarray(p, dtype=np.float64)
    lens, flat = _flatten(matched, len(p))
    rows = np.repeat(np.arange(len(matched)), lens)
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-p[flat])  # -inf where p_e == 1
    total = np.bincount(rows, weights=log_miss, minlength=len(matched))
    return -np.expm1(total)


def expected_size_single(counts: np.ndarray | Sequence[int], t: float) -> float:
    """sum_e min(c_e, t): the expected size when every pair matches one entry; with pairs matching several
    entries the counts overlap and this is not the size (use :func:`expected_size_pairs`)."""
    return float(np.minimum(np.asarray(counts, dtype=np.float64), t).sum())


def expected_size_pairs(matched: Sequence[Sequence[int]], p: np.ndarray) -> float:
    """sum over pairs of P: the exact expected size of the balanced set."""
    return float(keep_probabilities(matched, p).sum())


def solve_t(
    target_size: float,
    counts: np.ndarray | Sequence[int],
    *,
    matched: Sequence[Sequence[int]] | None = None,
    rtol: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """The cap t whose expected size is ``target_size``, by bisection (the size never decreases with t).

    Uses :func:`expected_size_pairs` on ``matched`` when given (exact; e.g. a sample of the pool, with
    ``counts`` the pool's counts scaled the same way), else :func:`expected_size_single`. Stops when the size is
    within ``rtol`` of the target. A target at or above the whole matched pool returns ``max(counts)`` (keep
    everything) with a warning. The result is a float; rounding it changes the size by at most the number of head
    entries per unit of t.
    """
    if target_size <= 0:
        raise ValueError(f"target_size must be positive, got {target_size}")
    c = np.asarray(counts, dtype=np.float64)
    if c.size == 0 or c.max() <= 0:
        raise ValueError("no entry has any match: nothing to balance")

    def size(t: float) -> float:
        if matched is None:
            return expected_size_single(c, t)
        return expected_size_pairs(matched, entry_probabilities(c, t))

    lo, hi = 0.0, float(c.max())
    full = size(hi)
    if target_size >= full:
        logger.warning("target size %s >= expected size with no cap (%.0f): keeping everything", target_size, full)
        return hi
    mid = hi
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        s = size(mid)
        if abs(s - target_size) <= rtol * target_size:
            break
        if s < target_size:
            lo = mid
        else:
            hi = mid
    else:
        logger.warning("solve_t did not reach rtol=%g in %d iterations (t=%g)", rtol, max_iter, mid)
    return mid


class HeadTailSplit(NamedTuple):
    """Entry ids by count: ``head`` (c_e > t, sampled down), ``tail`` (0 < c_e <= t, kept whole), ``unused``."""

    head: np.ndarray
    tail: np.ndarray
    unused: np.ndarray


def head_tail_split(counts: np.ndarray | Sequence[int], t: float) -> HeadTailSplit:
    """Which entries balancing caps (head) and which it keeps whole (tail)."""
    c = np.asarray(counts)
    return HeadTailSplit(np.flatnonzero(c > t), np.flatnonzero((c > 0) & (c <= t)), np.flatnonzero(c == 0))


# ------------------------------------------------------------------------------------------------- sampling


def _uid_hash(uid: object, seed: int) -> int:
    key = (seed & _MASK64).to_bytes(8, "little")
    digest = hashlib.blake2b(str(uid).encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def uniform_draw(uid: object, entry_id: int, seed: int) -> float:
    """The pair's draw for one entry, in [0, 1) (see the module docstring); ``uid`` is used as ``str(uid)``."""
    state = (_uid_hash(uid, seed) + (entry_id + 1) * _GAMMA) & _MASK64
    return (_mix64_int(state) >> 11) * _TO_UNIT


def keep_pair(uid: object, matched_ids: Sequence[int], p: np.ndarray, seed: int) -> bool:
    """Scalar reference of :func:`balance_batch`: kept when any matched entry's draw is below its p_e."""
    return any(uniform_draw(uid, e, seed) < p[e] for e in matched_ids)


def balance_batch(uids: Sequence[object], matched: Sequence[Sequence[int]], p: np.ndarray, seed: int) -> np.ndarray:
    """Keep mask (bool array) for a batch of pairs: one blake2b per pair, the per-entry draws in numpy."""
    if len(uids) != len(matched):
        raise ValueError(f"{len(uids)} uids but {len(matched)} match lists")
    p = np.asarray(p, dtype=np.float64)
    n = len(uids)
    lens, flat = _flatten(matched, len(p))
    if flat.size == 0:
        return np.zeros(n, dtype=bool)
    base = np.fromiter((_uid_hash(u, seed) if k else 0 for u, k in zip(uids, lens, strict=True)), np.uint64, n)
    with np.errstate(over="ignore"):
        state = np.repeat(base, lens) + (flat.astype(np.uint64) + np.uint64(1)) * np.uint64(_GAMMA)
        draws = (_mix64(state) >> np.uint64(11)).astype(np.float64) * _TO_UNIT
    rows = np.repeat(np.arange(n), lens)
    return np.bincount(rows[draws < p[flat]], minlength=n) > 0
