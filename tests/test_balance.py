"""MetaCLIP balancing: per-entry kept counts on a synthetic long-tail pool, the multi-entry keep probability,
determinism of the hash draws, and solving t for a target size."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from pydantic import ValidationError

from witbuild.curate.balance import (
    DEFAULT_T,
    BalanceConfig,
    balance_batch,
    count_matches,
    entry_probabilities,
    expected_size_pairs,
    expected_size_single,
    head_tail_split,
    keep_pair,
    keep_probabilities,
    keep_probability,
    solve_t,
    uniform_draw,
)

SIGMAS = 5.0


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, list[str], list[list[int]], np.ndarray]:
    """~1.1M single-entry pairs; entry counts spread geometrically from 1 to 200,000 (a long tail)."""
    counts = np.unique(np.round(np.geomspace(1, 200_000, 60)).astype(np.int64))
    rows = [[e] for e in range(len(counts))]
    matched = list(itertools.chain.from_iterable([rows[e]] * int(c) for e, c in enumerate(counts)))
    entry_of_pair = np.repeat(np.arange(len(counts)), counts)
    uids = [f"pair-{i:08d}" for i in range(len(matched))]
    return counts, uids, matched, entry_of_pair


@pytest.mark.slow  # the ~1.1M-pair pool
def test_kept_per_entry_is_min_count_t(pool) -> None:
    counts, uids, matched, entry_of_pair = pool
    t = 1000
    assert counts.min() == 1 and counts.max() == 200_000 and (counts > t).sum() > 20 and (counts <= t).sum() > 20
    p = entry_probabilities(counts, t)
    np.testing.assert_allclose(p, np.minimum(1.0, t / counts))
    assert np.array_equal(count_matches(matched, len(counts)), counts)

    keep = balance_batch(uids, matched, p, seed=0)
    kept = np.bincount(entry_of_pair[keep], minlength=len(counts))
    mean = np.minimum(counts, t)
    sd = np.sqrt(counts * p * (1 - p))
    assert np.array_equal(kept[counts <= t], counts[counts <= t]), "tail entries must be kept whole"
    z = (kept - mean) / np.where(sd > 0, sd, 1)
    assert np.abs(z).max() < SIGMAS, f"worst entry off by {np.abs(z).max():.1f} sigma"
    # and the head is really capped: 200,000 matches -> about 1,000 kept
    assert abs(kept[-1] - t) < SIGMAS * sd[-1]
    total_sd = math.sqrt(float((sd**2).sum()))
    assert abs(keep.sum() - expected_size_single(counts, t)) < SIGMAS * total_sd
    # the draws of one seed look uniform: z-scores are not all tiny (a broken, too-regular sampler would be)
    assert np.abs(z[counts > t]).max() > 0.5


@pytest.mark.slow  # the ~1.1M-pair pool
def test_same_seed_same_output_other_seed_different(pool) -> None:
    counts, uids, matched, entry_of_pair = pool
    sub = slice(0, 300_000)
    p = entry_probabilities(counts, 1000)
    a = balance_batch(uids[sub], matched[sub], p, seed=0)
    b = balance_batch(uids[sub], matched[sub], p, seed=0)
    c = balance_batch(uids[sub], matched[sub], p, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # head entries: the two seeds' decisions are independent, so they disagree at rate 2 p (1 - p)
    head = p[entry_of_pair[sub]] < 1
    pe = p[entry_of_pair[sub]][head]
    disagree = (a[head] != c[head]).sum()
    want = (2 * pe * (1 - pe)).sum()
    assert abs(disagree - want) < SIGMAS * math.sqrt(want)
    # batch order and batching do not matter: a draw depends on (uid, entry, seed) only
    perm = np.random.default_rng(3).permutation(2000)
    sub_uids = [uids[i] for i in perm]
    sub_matched = [matched[i] for i in perm]
    assert np.array_equal(balance_batch(sub_uids, sub_matched, p, 0), a[perm])


def test_scalar_reference_equals_batch() -> None:
    rng = random.Random(5)
    p = np.array([0.5, 0.2, 1.0, 0.1, 0.9, 0.01])
    uids = [f"u{rng.getrandbits(40)}" for _ in range(3000)] + ["", "ünï\ud800", "12"]
    matched = [sorted(rng.sample(range(6), rng.randint(0, 4))) for _ in uids]
    batch = balance_batch(uids, matched, p, seed=42)
    scalar = [keep_pair(u, m, p, 42) for u, m in zip(uids, matched, strict=True)]
    assert batch.tolist() == scalar
    draws = [uniform_draw(u, e, 7) for u in uids[:500] for e in range(6)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < SIGMAS * math.sqrt(1 / 12 / len(draws))
    assert uniform_draw(123, 4, 0) == uniform_draw("123", 4, 0)  # uids are used as str(uid)


def test_multi_entry_probability_exact_and_empirical() -> None:
    counts = np.array([2000, 5000, 10, 10000])
    p = entry_probabilities(counts, 1000)
    np.testing.assert_allclose(p, [0.5, 0.2, 1.0, 0.1])
    cases = {
        (0, 1): 1 - 0.5 * 0.8,  # 0.6
        (1, 3): 1 - 0.8 * 0.9,  # 0.28
        (0, 1, 3): 1 - 0.5 * 0.8 * 0.9,  # 0.64
        (2, 3): 1.0,
        (3,): 0.1,
        (): 0.0,
    }
    for ids, want in cases.items():
        assert keep_probability(ids, p) == pytest.approx(want, abs=1e-12)
    matched = [list(ids) for ids in cases]
    np.testing.assert_allclose(keep_probabilities(matched, p), list(cases.values()), atol=1e-12)
    assert expected_size_pairs(matched, p) == pytest.approx(sum(cases.values()))

    n = 100_000
    for ids, want in cases.items():
        keep = balance_batch([f"{ids}-{i}" for i in range(n)], [list(ids)] * n, p, seed=11)
        rate = keep.mean()
        sd = math.sqrt(want * (1 - want) / n)
        assert abs(rate - want) <= SIGMAS * sd + 1e-12, f"{ids}: rate {rate:.4f}, expected {want:.4f}"
    # with the pool counts of overlapping matches, the single-entry formula is an upper bound
    assert expected_size_single(count_matches(matched, 4), 1000) >= expected_size_pairs(matched, p)


def test_keep_probabilities_matches_scalar_on_random_lists() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(50)
    p[:5] = 1.0
    matched = [sorted(rng.choice(50, size=rng.integers(0, 8), replace=False).tolist()) for _ in range(2000)]
    vec = keep_probabilities(matched, p)
    np.testing.assert_allclose(vec, [keep_probability(m, p) for m in matched], atol=1e-12)


@pytest.mark.slow  # the ~1.1M-pair pool
def test_solve_t_hits_target(pool) -> None:
    counts, uids, matched, _ = pool
    target = 30_000
    t = solve_t(target, counts, rtol=1e-4)
    assert expected_size_single(counts, t) == pytest.approx(target, rel=1e-4)
    assert 1 < t < 200_000
    keep = balance_batch(uids, matched, entry_probabilities(counts, t), seed=3)
    assert abs(keep.sum() - target) < SIGMAS * math.sqrt(target)
    # a target above the whole pool keeps everything
    assert solve_t(10 * counts.sum(), counts) == counts.max()
    with pytest.raises(ValueError):
        solve_t(0, counts)
    with pytest.raises(ValueError):
        solve_t(10, np.zeros(3, dtype=np.int64))


def test_solve_t_with_multi_entry_pairs() -> None:
    rng = np.random.default_rng(1)
    n_entries = 300
    weights = 1 / np.arange(1, n_entries + 1)  # Zipf: a few head entries dominate
    weights /= weights.sum()
    matched = [sorted(set(rng.choice(n_entries, size=rng.integers(1, 5), p=weights).tolist())) for _ in range(20_000)]
    counts = count_matches(matched, n_entries)
    target = 5_000
    t = solve_t(target, counts, matched=matched, rtol=1e-4)
    assert expected_size_pairs(matched, entry_probabilities(counts, t)) == pytest.approx(target, rel=1e-4)
    # the counts-only formula overestimates, so it would pick a smaller t for the same target
    assert solve_t(target, counts) < t
    keep = balance_batch([str(i) for i in range(len(matched))], matched, entry_probabilities(counts, t), seed=0)
    assert abs(keep.sum() - target) < SIGMAS * math.sqrt(target)


def test_head_tail_split() -> None:
    split = head_tail_split(np.array([0, 5, 1000, 1001, 3]), 1000)
    assert split.head.tolist() == [3]
    assert split.tail.tolist() == [1, 2, 4]
    assert split.unused.tolist() == [0]


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        entry_probabilities([1, 2], 0)
    with pytest.raises(ValueError, match="entry ids"):
        count_matches([[0, 3]], 3)
    with pytest.raises(ValueError, match="entry ids"):
        balance_batch(["a"], [[-1]], np.ones(3), 0)
    with pytest.raises(ValueError, match="uids"):
        balance_batch(["a", "b"], [[0]], np.ones(3), 0)
    assert balance_batch([], [], np.ones(3), 0).tolist() == []
    assert balance_batch(["a", "b"], [[], []], np.ones(3), 0).tolist() == [False, False]
    assert entry_probabilities([0, 5, 20], 10).tolist() == [1.0, 1.0, 0.5]


def test_config() -> None:
    cfg = BalanceConfig()
    assert cfg.t is None and cfg.fixed_t == DEFAULT_T == 20_000 and cfg.seed == 0
    assert BalanceConfig(t=500).fixed_t == 500
    assert BalanceConfig(target_size=10_000).fixed_t is None
    with pytest.raises(ValidationError) as err:
        BalanceConfig(t=500, target_size=10_000)
    assert "balance.t" in str(err.value) and "balance.target_size" in str(err.value)
    # a saved config loads again (defaults do not count as "set")
    saved = BalanceConfig(target_size=10_000, seed=3).model_dump()
    assert BalanceConfig(**saved) == BalanceConfig(target_size=10_000, seed=3)
    with pytest.raises(ValidationError):
        BalanceConfig(t=0)
    with pytest.raises(ValidationError):
        BalanceConfig(seed=-1)
    with pytest.raises(ValidationError):
        BalanceConfig(tt=5)
    assert BalanceConfig(method="uniform", target_size=100).method == "uniform"
    for bad in ({"method": "uniform"}, {"method": "uniform", "t": 5}, {"method": "random", "target_size": 5}):
        with pytest.raises(ValidationError, match=r"uniform|method"):
            BalanceConfig(**bad)
