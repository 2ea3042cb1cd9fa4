"""The LSH buckets of a Spark task verified at once, in numpy: their pairs within the pHash threshold.

A bucket of ``(band, band value)`` holds ~14 items on a web of 100,000 images (13 bits a band at 4 bits), and
1 in 20 holds more than ``MAX_REPEATS``: a task compares millions of pairs. Looped in Python bucket by bucket
(:func:`~witbuild.dedup.near.bucket_pairs`), that was 5-8 s of one core at 100k, the largest part of finalize's
Python. Here the members of all the batch's buckets are one array, sorted by bucket and key, and the items ``d``
apart in that order (d = 1, 2, ... up to the largest bucket) are compared with one XOR and popcount each. The
repeats of one value are capped as ``occurrence_pairs`` caps them (blank images must not cost k² checks): the
first ``MAX_REPEATS`` of a value in key order take part, the others are paired with the value's first only.

Each pair comes out **once**, from the first band its two hashes share (a pair of equal hashes from band 0):
every bucket holding both items pairs them alike (the repeats of a value are all in every bucket one of them is
in, so the capping does not depend on the bucket), so the pairs of the first shared band are those of every
band, and no later step has to merge them (a shuffle of each pair ~2.5 times over at 100k).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from witbuild.dedup.near import MAX_REPEATS, PAIR_SCHEMA, TWIN_BITS, bucket_pairs
from witbuild.dedup.phash import popcount64

_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # row of a, row of b, bits
CROWDED = 1024  # a bucket with more items than this (repeats capped) is compared value by value (bucket_pairs)


def verify_buckets(batch: pa.RecordBatch, threshold: int, bands: int, exact: bool) -> pa.RecordBatch:
    """Rows ``a, b, bits, ha`` (``PAIR_SCHEMA``) of the buckets in ``batch`` (``band``, ``members``: key, _phash
    and, when ``exact``, sha256), as :func:`witbuild.dedup.near._bucket_pairs` describes them."""
    members = batch.column("members")
    sizes = pc.list_value_length(members).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(members)
    bucket = np.repeat(np.arange(sizes.size), sizes)
    # collect_list's order depends on the tasks: rows by bucket, then key
    order = pc.sort_indices(pa.table({"bucket": bucket, "key": flat.field("key")}),
                            [("bucket", "ascending"), ("key", "ascending")])
    keys = flat.field("key").take(order)
    hashes = flat.field("_phash").take(order).to_numpy(zero_copy_only=False).view(np.uint64)
    bucket = bucket[order.to_numpy()]
    band = np.repeat(batch.column("band").to_numpy(zero_copy_only=False).astype(np.int64), sizes)
    live = np.arange(bucket.size)
    found: list[_Pairs] = []
    if exact:
        owner = _twin_owners(bucket, flat.field("sha256").take(order))
        named = np.flatnonzero((owner >= 0) & (band == 0))
        found.append((owner[named], named, np.full(named.size, TWIN_BITS, np.int64)))
        live = np.flatnonzero(owner < 0)
    for rows_a, rows_b, bits in _live_pairs(keys.take(pa.array(live)), hashes[live], bucket[live], threshold, bands):
        found.append((live[rows_a], live[rows_b], bits))
    a, b, bits = (np.concatenate([f[k] for f in found]) if found else np.zeros(0, np.int64) for k in range(3))
    keep = (bits == TWIN_BITS) | _first_shared_band(hashes[a], hashes[b], band[a], bands)
    a, b, bits = a[keep], b[keep], bits[keep]
    return pa.RecordBatch.from_arrays([keys.take(pa.array(a)), keys.take(pa.array(b)), pa.array(bits, pa.int32()),
                                       pa.array(hashes[a].view(np.int64), pa.int64())], schema=PAIR_SCHEMA)


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Where each run of rows equal in every one of ``columns`` starts (rows already grouped)."""
    n = columns[0].size
    change = np.zeros(n, bool)
    if n:
        change[0] = True
        for c in columns:
            change[1:] |= c[1:] != c[:-1]
    return np.flatnonzero(change)


def _run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    return np.diff(np.r_[starts, n]).astype(np.int64)


def _twin_owners(bucket: np.ndarray, sha256: pa.Array) -> np.ndarray:
    """Per row (sorted by bucket, then key), the row of the smallest key of its bucket with the same sha256,
    or -1 where that is the row itself or it has no sha256 (an empty or missing one names no bytes)."""
    shas = sha256.fill_null("")
    order = pc.sort_indices(pa.table({"bucket": bucket, "sha": shas, "row": np.arange(bucket.size)}),
                            [("bucket", "ascending"), ("sha", "ascending"), ("row", "ascending")]).to_numpy()
    sha_sorted = np.asarray(shas.take(pa.array(order)).to_numpy(zero_copy_only=False), dtype=object)
    starts = _run_starts(bucket[order], sha_sorted)
    first = order[np.repeat(starts, _run_lengths(starts, order.size))]
    owner = np.full(bucket.size, -1, np.int64)
    twin = (first != order) & (sha_sorted != "")
    owner[order[twin]] = first[twin]
    return owner


def _live_pairs(keys: pa.Array, hashes: np.ndarray, bucket: np.ndarray, threshold: int, bands: int) -> list[_Pairs]:
    """The pairs of rows sorted by bucket, then key, as ``bucket_pairs`` gives them bucket by bucket: within
    ``threshold`` bits, the repeats of a value capped (module docstring)."""
    n = hashes.size
    order = np.lexsort((hashes, bucket))  # stable: the repeats of a value stay in key order
    starts = _run_starts(bucket[order], hashes[order])
    lengths = _run_lengths(starts, n)
    rank, first = np.empty(n, np.int64), np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, lengths)
    first[order] = order[np.repeat(starts, lengths)]
    capped = np.flatnonzero(rank < MAX_REPEATS)
    run = _run_starts(bucket[capped])
    count = _run_lengths(run, capped.size)
    crowded = np.repeat(count > CROWDED, count)
    star = np.flatnonzero((rank >= MAX_REPEATS) & ~np.isin(bucket, bucket[capped[crowded]]))
    out = [(first[star], star, np.zeros(star.size, np.int64))]  # the value's first pairs the rest of its repeats
    a, b, bits = _pairs_by_offset(hashes[capped], run, np.where(count > CROWDED, 0, count), threshold)
    out.append((capped[a], capped[b], bits))
    for crowd in np.unique(bucket[capped[crowded]]).tolist():
        rows = np.flatnonzero(bucket == crowd)
        names = keys.take(pa.array(rows)).to_pylist()
        at = dict(zip(names, rows.tolist(), strict=True))
        pairs = bucket_pairs(names, hashes[rows].tolist(), threshold, bands)
        out.append((np.array([at[x] for x, _, _ in pairs], np.int64), np.array([at[y] for _, y, _ in pairs], np.int64),
                    np.array([d for _, _, d in pairs], np.int64)))
    return out


def _pairs_by_offset(hashes: np.ndarray, starts: np.ndarray, counts: np.ndarray, threshold: int) -> _Pairs:
    """Every pair of rows i < j of one run (``starts``; ``counts`` its rows compared, 0: none) within
    ``threshold`` bits: the rows ``d`` apart, for d = 1, 2, ..., compared at once."""
    lengths = _run_lengths(starts, hashes.size)
    size = np.repeat(counts, lengths)
    pos = np.arange(hashes.size) - np.repeat(starts, lengths)
    firsts, seconds, dists = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    rows = np.flatnonzero(pos + 1 < size)
    d = 1
    while rows.size:
        bits = popcount64(hashes[rows] ^ hashes[rows + d]).astype(np.int64)
        near = bits <= threshold
        firsts.append(rows[near])
        seconds.append(rows[near] + d)
        dists.append(bits[near])
        d += 1
        rows = rows[pos[rows] + d < size[rows]]
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(dists)


def _first_shared_band(a: np.ndarray, b: np.ndarray, band: np.ndarray, bands: int) -> np.ndarray:
    """Whether ``band`` is the first band in which hashes ``a`` and ``b`` agree (for equal hashes: band 0)."""
    shift = [64 * i // bands for i in range(bands + 1)]
    diff = a ^ b
    first = np.full(a.size, bands, np.int64)
    for i in reversed(range(bands)):
        mask = np.uint64(((1 << (shift[i + 1] - shift[i])) - 1) << (64 - shift[i + 1]))
        first[(diff & mask) == 0] = i
    return first == band
