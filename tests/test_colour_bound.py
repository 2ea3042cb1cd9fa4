"""The colour check's early rejection never rejects a pair the exact check passes, and rejects the far ones.

The reference is ``colour_diffs`` (numpy, vectorised), which the bound's loop does not call; the pairs are the
labelled copies, colour variants and pHash-mined distinct drawings of ``witbuild.demo.dup_pairs``, plus noise."""

from __future__ import annotations

import os

import numpy as np
import pytest

from witbuild.dedup import colour_bound, near
from witbuild.dedup.colour_bound import certainly_apart
from witbuild.dedup.near import (
    THUMB_SIDE,
    ColourLimits,
    colour_diffs,
    find_removals,
    image_signature,
    near_duplicate_removals,
)
from witbuild.demo.dup_pairs import labelled_pairs

pytestmark = pytest.mark.skipif(colour_bound.numba is None, reason="numba is not installed")


@pytest.fixture(scope="module")
def thumbs():
    """Thumbnail pairs of every labelled kind, and both orders of each pair."""
    a, b = [], []
    for p in labelled_pairs(12, seed=5, photos=False, hard_within=4, max_tries=60):
        sa, sb = image_signature(p.a), image_signature(p.b)
        a += [sa[1], sb[1]]
        b += [sb[1], sa[1]]
    return a, b


def _exact(thumbs):
    diffs = colour_diffs(*thumbs)
    return np.array([d.mean for d in diffs]), np.array([d.tail for d in diffs])


@pytest.mark.parametrize("limits", [(5.0, 20.0), (1.0, 5.0), (2.0, 40.0), (30.0, 80.0), (0.0, 0.0)])
def test_rejected_pairs_fail_the_exact_check(thumbs, limits) -> None:
    mean, tail = _exact(thumbs)
    apart = certainly_apart(*thumbs, THUMB_SIDE, *limits)
    fails = (mean > limits[0]) | (tail > limits[1])
    assert not (apart & ~fails).any()
    assert apart.sum() >= fails.sum() - 5, (apart.sum(), fails.sum())  # measured: all but 0-2 of 6-180 failing


def test_a_pair_exactly_at_its_limits_is_not_rejected(thumbs) -> None:
    """Each pair's own exact values as the limits: it passes (≤), so the bound must let it through; a hair below
    either limit it fails, and is rejected unless its pixels sit too close to the limit to prove it."""
    mean, tail = _exact(thumbs)
    for i in range(len(mean)):
        one = ([thumbs[0][i]], [thumbs[1][i]])
        assert not certainly_apart(*one, THUMB_SIDE, mean[i], tail[i])[0], i
        assert certainly_apart(*one, THUMB_SIDE, mean[i] - 0.05, np.inf)[0] or mean[i] < 0.05, i


def test_pairs_checked_together_get_the_verdicts_they_get_alone(thumbs) -> None:
    """Nothing of one pair carries into the next: the CIELAB a pair remembers by colour was computed under its own
    gain, and a thumbnail met again in another pair (here every one, in both orders) has another gain there."""
    for limits in ((5.0, 20.0), (30.0, 80.0)):
        together = certainly_apart(*thumbs, THUMB_SIDE, *limits)
        alone = [certainly_apart([x], [y], THUMB_SIDE, *limits)[0] for x, y in zip(*thumbs, strict=True)]
        assert together.tolist() == alone


def test_noise_is_rejected_early() -> None:
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, THUMB_SIDE * THUMB_SIDE * 3, dtype=np.uint8).tobytes() for _ in range(50)]
    b = [rng.integers(0, 256, THUMB_SIDE * THUMB_SIDE * 3, dtype=np.uint8).tobytes() for _ in range(50)]
    assert certainly_apart(a, b, THUMB_SIDE, 5.0, 20.0).all()
    assert not certainly_apart(a, a, THUMB_SIDE, 0.0, 0.0).any()  # identical thumbnails: ΔE 0 everywhere
    assert certainly_apart([], [], THUMB_SIDE, 5.0, 20.0).shape == (0,)


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("broadcast_rows", [near.BROADCAST_ROWS, 0])
def test_spark_removals_equal_the_in_process_reference(spark, monkeypatch, broadcast_rows) -> None:
    """near_duplicate_removals (LSH in Spark, the bound, then the exact check) against find_removals (every
    candidate pair through colour_diffs), on labelled pairs hashed together, so that groups and chains form.
    Both ways of bringing thumbnails to the pairs: broadcast joins (few pairs) and tasks by group (many)."""
    monkeypatch.setattr(near, "BROADCAST_ROWS", broadcast_rows)
    keys, hashes, thumbs = [], [], []
    for n, p in enumerate(labelled_pairs(10, seed=11, photos=False, hard_within=4, max_tries=60)):
        for side, data in (("a", p.a), ("b", p.b)):
            h, t = image_signature(data)
            keys.append(f"{n:04d}{side}")
            hashes.append(h - (1 << 64) if h >= 1 << 63 else h)
            thumbs.append(t)
    df = spark.createDataFrame(list(zip(keys, hashes, thumbs, strict=True)), "key string, _phash long, _thumb binary")
    expected = find_removals(keys, hashes, thumbs, 4, 5, ColourLimits())
    got = near_duplicate_removals(df, 4, 5, ColourLimits())
    assert [(r.key, r.duplicate_of, r.phash_distance) for r in got] == \
        [(r.key, r.duplicate_of, r.phash_distance) for r in expected]
    assert [r.colour for r in got] == [r.colour for r in expected]  # the exact values, bit for bit
    assert expected  # the set holds duplicates to find


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("broadcast_rows", [near.BROADCAST_ROWS, 0])
def test_exact_duplicates_found_in_the_lsh_pass_are_those_of_removing_them_first(spark, monkeypatch,
                                                                              broadcast_rows) -> None:
    """duplicate_verdicts with exact on: the twins (same sha256) of a smaller key, and the near-duplicate
    removals among the rest, against removing exact duplicates first and then find_removals. Twins of kept and
    of removed samples, a twin smaller than the picture's first key, and rows without a sha256 (no twins)."""
    import hashlib

    from witbuild.dedup.near import duplicate_verdicts

    monkeypatch.setattr(near, "BROADCAST_ROWS", broadcast_rows)
    rows = []  # key, sha256, pHash (signed), thumbnail
    for n, p in enumerate(labelled_pairs(10, seed=11, photos=False, hard_within=4, max_tries=60)):
        for side, data in (("a", p.a), ("b", p.b)):
            h, t = image_signature(data)
            sha = hashlib.sha256(data).hexdigest()
            signed = h - (1 << 64) if h >= 1 << 63 else h
            rows.append((f"{n:04d}{side}", sha, signed, t))
            if n % 3 == 0:  # a twin after it, and one before the picture's first key
                rows += [(f"{n:04d}{side}2", sha, signed, t), (f"{n:04d}0{side}", sha, signed, t)]
            if n % 4 == 1:  # the same picture with no known bytes: never a twin
                rows.append((f"{n:04d}{side}9", "", signed, t))
    first: dict[str, str] = {}
    twins = sorted(key for key, sha, _, _ in sorted(rows) if sha and first.setdefault(sha, key) != key)
    rest = [r for r in rows if r[0] not in set(twins)]
    expected = find_removals([r[0] for r in rest], [r[2] for r in rest], [r[3] for r in rest], 4, 5, ColourLimits())
    df = spark.createDataFrame(rows, "key string, sha256 string, _phash long, _thumb binary")
    got_twins, got = duplicate_verdicts(df, 4, 5, ColourLimits(), exact=True)
    assert got_twins == twins and len(twins) > 10
    assert [(r.key, r.duplicate_of, r.phash_distance, r.colour) for r in got] == \
        [(r.key, r.duplicate_of, r.phash_distance, r.colour) for r in expected]
    assert expected and any(r.key.endswith("9") for r in expected)  # a sha-less copy goes as a near duplicate


@pytest.mark.parametrize("base, ink", [(250, (250, 0, 0)), (10, (250, 250, 0))])
def test_a_colour_only_one_direction_sees_is_proved(base, ink) -> None:
    """A short line on a plain ground against the plain ground: pixels of the line find no ink near them in the
    other image, while every pixel of the plain one finds ground near it. The bound goes one way first (from the
    image with the smaller bytes, which gets the gain: the line's with red ink on white, the plain one's with
    yellow on black), and must still reach the other direction, which the exact mean takes when it is larger."""
    plain = np.full((THUMB_SIDE, THUMB_SIDE, 3), base, dtype=np.uint8)
    line = plain.copy()
    line[:8, 7] = ink
    diff = colour_diffs([line.tobytes()], [plain.tobytes()])[0]
    assert diff.mean > 1.0 and diff.tail < diff.mean  # 8 of 256 pixels: the 95th percentile misses them
    for pair in ([line.tobytes()], [plain.tobytes()]), ([plain.tobytes()], [line.tobytes()]):
        assert certainly_apart(*pair, THUMB_SIDE, diff.mean - 0.05, np.inf)[0]
        assert not certainly_apart(*pair, THUMB_SIDE, diff.mean, diff.tail)[0]


def test_a_task_of_pairs_and_thumbnails_checks_each_pair_as_colour_diffs_does(thumbs) -> None:
    """The grouped colour check gets its pairs and the thumbnails they name in any order, each thumbnail once:
    the pairs it passes on carry colour_diffs' values, the ones it leaves out fail the limits, and a pair whose
    thumbnail is missing is left out (it stays)."""
    import pyarrow as pa

    limits = ColourLimits()
    a, b = thumbs
    keys = {}
    for t in [*a, *b]:
        keys.setdefault(t, f"k{len(keys):04d}")
    pairs = [(keys[x], keys[y]) for x, y in zip(a, b, strict=True) if keys[x] != keys[y]]
    pairs.append((keys[a[0]], "missing"))
    thumb_rows = [(k, t) for t, k in keys.items()]
    rows = [{"ha": 0, "a": x, "b": y, "bits": 1, "key": None, "_thumb": None} for x, y in pairs]
    rows += [{"ha": 0, "a": None, "b": None, "bits": None, "key": k, "_thumb": t} for k, t in thumb_rows]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    table = pa.Table.from_pylist(rows)
    out = pa.Table.from_batches(list(near._grouped_colour_check(limits)(iter(table.to_batches(max_chunksize=7)))))
    got = {(r["a"], r["b"]): (r["mean"], r["tail"]) for r in out.to_pylist()}
    by_key = {k: t for k, t in thumb_rows}
    known = [(x, y) for x, y in pairs if y != "missing"]
    diffs = colour_diffs([by_key[x] for x, _ in known], [by_key[y] for _, y in known])
    for pair, diff in zip(known, diffs, strict=True):
        if limits.allows(diff) or pair in got:
            assert got[pair] == (diff.mean, diff.tail)
    assert (keys[a[0]], "missing") not in got and any(limits.allows(d) for d in diffs)


def test_warm_up_leaves_machine_code_that_another_process_loads(tmp_path) -> None:
    """The driver's warm-up (``Stage.warm_ups``) is worth its time only if the colour check's tasks, other
    processes, then load what it compiled instead of compiling again."""
    import subprocess
    import sys

    # the second process calls the loops as the colour check does (thumbnails from bytes: read-only arrays) and
    # with writeable ones; numba compiles per argument type, so a warm-up of other types would not count
    calls = ("import numpy as np; from witbuild.dedup import colour_bound as cb; "
             "t = np.frombuffer(bytes(range(256)) * 6, np.uint8).reshape(2, 768); "
             "cb.certainly_apart([bytes(768)], [bytes(range(256)) * 3], 16, 5.0, 20.0); "
             "cb.certainly_apart_rows(t.copy(), np.array([0]), np.array([1]), 16, 5.0, 20.0); ")
    stats = ("print(*(sum(getattr(f.stats, s).values()) for f in (cb._apart, cb._labs) "
             "for s in ('cache_hits', 'cache_misses')))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for code in ("from witbuild.dedup import colour_bound as cb; cb.warm_up(); " + stats, calls + stats)]
    assert [r.stdout.split() for r in runs] == [["0", "1", "0", "1"], ["1", "0", "1", "0"]]  # compiled; loaded
