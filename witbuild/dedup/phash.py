"""64-bit perceptual hashes and banded-LSH near-duplicate grouping, in numpy.

Pure functions on arrays of hashes: Spark code calls them per partition (on the members of a band bucket)
and tests and benchmarks call them on a whole set. Hashes are unsigned 64-bit ints (``np.uint64``); Spark's
LongType is signed, so :func:`as_uint64` also accepts int64 arrays (same bits) and :func:`to_signed64`
gives the value to store.

Near duplicates are pairs within ``threshold`` bits (Hamming). They are found by banding: the bits are cut
into ``bands`` disjoint bands; with ``bands >= threshold + 1`` a pair within the threshold differs in at
most ``threshold`` bands, so by the pigeonhole principle it has an identical band. Candidates are pairs
with an identical band (bucketed by sorting, never a dict per hash), then verified by Hamming distance.

Scaling. 5 bands of 13 bits collide for random hashes with probability 2^-13 per band, so checking all
pairs per bucket costs ~n²·5/2^14 comparisons (6e8 at n=1M): quadratic. So a bucket of more than
``max_bucket`` hashes is re-banded instead: the bits in which its members vary are dealt into
``threshold + 1`` parts and the bucket is bucketed again on key + part, recursively (up to ``max_depth``
levels). A near pair differs only in those bits, so the pigeonhole argument holds again and the search
stays exact, with at most ``max_bucket / 2`` comparisons per hash per bucketing, at any n: the cost is a
few sorts of n (n log n) instead of n². ``benchmarks/bench_dedup.py`` measures it.

Skewed data. Identical hashes (thousands of blank images) are collapsed with ``np.unique`` first and
grouped without any comparison. Bands and parts are dealt round-robin from the varying bits ordered by
balance, so a nearly constant bit (the pHash DC bit, a band shared by a whole Spark bucket) never makes a
band useless. For grouping, pairs are folded into components as they come and buckets already inside one
component are skipped: a dense cluster (all members near each other, quadratic pair count) is joined
without enumerating its pairs. A bucket still above ``max_bucket`` at ``max_depth`` is compared all-pairs
when it has at most ``EXACT_BUCKET_LIMIT`` members, else by leader clustering (bounded time, verified
edges, may miss pairs: logged, counted in :class:`LshStats`).

The public :func:`band_keys` / :func:`band_masks` are the fixed layout (contiguous bands, band 0 lowest)
for bucketing a whole data set in Spark; inside a bucket the functions here adapt the layout themselves.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

HASH_BITS = 64
DEFAULT_THRESHOLD = 4
MAX_BUCKET = 64  # re-band buckets larger than this (see the module docstring; tuned in benchmarks/bench_dedup.py)
MAX_DEPTH = 3  # re-banding levels before the fallback
EXACT_BUCKET_LIMIT = 1024  # buckets still big at max_depth: all-pairs up to this size, else leaders
FALLBACK_LEADERS = 1024  # leader-clustering budget per bucket
PAIR_CHUNK = 1 << 22  # candidate pairs materialised at once

_FULL = (1 << HASH_BITS) - 1
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)


# --------------------------------------------------------------------------- hashing images


def phash64(image: Image.Image) -> int:
    """imagehash's pHash (hash_size=8) as an unsigned 64-bit int, first hash bit most significant.

    The same number as ``int(str(imagehash.phash(img)), 16)``, computed on the image made hashable by
    :func:`hashable_image` (alpha composited on white, CMYK/palette/16-bit converted), so that the hidden
    colour of transparent pixels and the storage mode do not change the hash.
    """
    import imagehash

    bits = imagehash.phash(hashable_image(image), hash_size=8).hash
    return int.from_bytes(np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes(), "big")


PHASH_SIDE = 32  # imagehash's phash: hash_size 8 × highfreq_factor 4


def phash_grey(image: Image.Image) -> np.ndarray:
    """The 32×32 grey pixels imagehash's pHash transforms, of the image made hashable (:func:`hashable_image`)."""
    from PIL import Image

    grey = hashable_image(image).convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(grey)


def phash64_batch(greys: Sequence[np.ndarray]) -> list[int]:
    """:func:`phash64` of many images from their :func:`phash_grey` pixels: the same numbers, bit for bit.

    The same transforms as imagehash (scipy's DCT-II along each axis, the median of the 8×8 low frequencies)
    on a stack of images at once; per image, imagehash's numpy and scipy calls cost more than the decode."""
    import scipy.fftpack

    if not greys:
        return []
    stack = np.stack(greys)
    low = scipy.fftpack.dct(scipy.fftpack.dct(stack, axis=1), axis=2)[:, :8, :8].reshape(len(greys), 64)
    bits = low > np.median(low, axis=1)[:, None]
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits, axis=1)]


def hashable_image(image: Image.Image) -> Image.Image:
    """``image`` as L or RGB, the modes pHash's grey conversion handles correctly.

    Transparent pixels are composited on white (how pages usually show them; their stored colour is
    arbitrary and encoder-dependent). 16-bit greys are scaled by 1/257 and 32-bit int/float greys by their
    range: ``convert("L")`` would clip them to white.
    """
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            grey = arr / 257.0
        else:
            finite = arr[np.isfinite(arr)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            grey = np.zeros_like(arr) if hi <= lo else (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # CMYK (Pillow undoes Adobe's inversion when decoding), YCbCr, HSV, ...


def phash_bytes(data: bytes) -> int | None:
    """:func:`phash64` of encoded image bytes (first frame of an animation); None when Pillow cannot decode
    them. Never raises: one bad download must not fail a Spark task."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return phash64(im)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        log.debug("phash_bytes: undecodable image: %s: %s", type(exc).__name__, exc)
        return None


# --------------------------------------------------------------------------- hash values


def as_uint64(hashes: Any) -> np.ndarray:
    """Hashes as a ``np.uint64`` array: uint64 as is, signed ints reinterpreted (Spark LongType keeps the
    same 64 bits as a signed value), Python ints of either sign masked to 64 bits."""
    arr = np.asarray(hashes)
    if arr.dtype == np.uint64:
        return arr
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint64)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64).view(np.uint64)
    if not isinstance(hashes, np.ndarray) or arr.dtype == object:
        # Python ints past int64 in a list: numpy turns a mix of signs into float64 (losing bits)
        arr = np.asarray(hashes, dtype=object)
        if all(isinstance(x, (int, np.integer)) for x in arr.ravel()):
            return np.array([int(x) & _FULL for x in arr.ravel()], dtype=np.uint64).reshape(arr.shape)
    raise TypeError(f"hashes must be integers, got dtype {arr.dtype}")


def to_unsigned64(h: int) -> int:
    """The unsigned 64-bit hash with the same bits as ``h`` (of either sign convention)."""
    return h & _FULL


def to_signed64(h: int) -> int:
    """The signed 64-bit value with the same bits as hash ``h`` (what a Spark LongType column stores)."""
    h &= _FULL
    return h - (1 << HASH_BITS) if h >> (HASH_BITS - 1) else h


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (either sign convention)."""
    return ((a ^ b) & _FULL).bit_count()


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (``np.bitwise_count`` on numpy ≥ 2, a byte table before)."""
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POP8[np.ascontiguousarray(x).view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def hamming_array(a: Any, b: Any) -> np.ndarray:
    """Vectorised :func:`hamming` with numpy broadcasting (``a[:, None]`` vs ``b[None, :]`` gives a matrix)."""
    return popcount64(np.bitwise_xor(as_uint64(a), as_uint64(b)))


# --------------------------------------------------------------------------- bands


def resolve_bands(threshold: int, bands: int | None) -> int:
    """``bands``, or ``threshold + 1`` (the fewest bands with the pigeonhole guarantee) when None."""
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be in 0..{HASH_BITS - 1}, got {threshold}")
    b = threshold + 1 if bands is None else bands
    if not 1 <= b <= HASH_BITS:
        raise ValueError(f"bands must be in 1..{HASH_BITS}, got {b}")
    return b


def band_widths(bands: int) -> list[int]:
    """Bits per band: 64 // bands each, the remainder spread one bit each over the first bands.

    Even widths rather than a wide last band: the narrowest band sets the random collision rate, so
    5 bands as 13,13,13,13,12 give half the candidates of 12,12,12,12,16.
    """
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be in 1..{HASH_BITS}, got {bands}")
    base, extra = divmod(HASH_BITS, bands)
    return [base + 1] * extra + [base] * (bands - extra)


def band_masks(bands: int) -> np.ndarray:
    """One uint64 bit mask per band; band 0 holds the least significant bits."""
    masks, shift = [], 0
    for w in band_widths(bands):
        masks.append(((1 << w) - 1) << shift)
        shift += w
    return np.array(masks, dtype=np.uint64)


def band_keys(h: np.ndarray, bands: int) -> np.ndarray:
    """``(n, bands)`` uint64 band values (each band shifted down to bit 0); column j is band j.

    Two hashes share a bucket of band j when column j is equal; the band index is part of the bucket key
    (equal values in different columns mean nothing).
    """
    h = as_uint64(h).ravel()
    out = np.empty((h.size, bands), dtype=np.uint64)
    shift = 0
    for j, w in enumerate(band_widths(bands)):
        out[:, j] = (h >> np.uint64(shift)) & np.uint64((1 << w) - 1)
        shift += w
    return out


def _varying(values: np.ndarray) -> int:
    """Bits that are not the same in all ``values``: the only bits in which two of them can differ."""
    if values.size == 0:
        return 0
    return int(np.bitwise_or.reduce(values) ^ np.bitwise_and.reduce(values))


def _balance_order(values: np.ndarray) -> np.ndarray:
    """Bit positions, the most balanced (set in about half of ``values``) first."""
    ones = np.zeros(HASH_BITS, dtype=np.int64)
    for i in range(0, values.size, 1 << 20):
        chunk = np.ascontiguousarray(values[i : i + (1 << 20)], dtype="<u8").view(np.uint8).reshape(-1, 8)
        ones += np.unpackbits(chunk, axis=1, bitorder="little").sum(axis=0, dtype=np.int64)
    return np.argsort(np.abs(ones - values.size / 2), kind="stable")


def _split_masks(bits: np.ndarray, parts: int, order: np.ndarray | None = None) -> np.ndarray:
    """``(k, parts)`` uint64: the set bits of each ``bits[i]`` dealt round-robin into ``parts`` groups, in
    the bit ``order`` given (most balanced first), so every group gets its share of informative bits: a
    group made of nearly constant bits would split nothing. Groups are 0 for values with fewer set bits."""
    bits = np.asarray(bits, dtype=np.uint64).reshape(-1)
    positions = (np.arange(HASH_BITS) if order is None else np.asarray(order)).astype(np.uint64)
    is_set = ((bits[:, None] >> positions) & np.uint64(1)).astype(bool)
    group = (np.cumsum(is_set, axis=1) - 1) % parts
    weights = np.uint64(1) << positions
    out = np.empty((bits.size, parts), dtype=np.uint64)
    for g in range(parts):
        out[:, g] = np.where(is_set & (group == g), weights, np.uint64(0)).sum(axis=1, dtype=np.uint64)
    return out


def _split_bits(bits: int, parts: int, order: np.ndarray | None = None) -> list[int]:
    """:func:`_split_masks` for one value, empty groups dropped."""
    return [int(m) for m in _split_masks(np.array([bits], dtype=np.uint64), parts, order)[0] if m]


# --------------------------------------------------------------------------- runs and pairs


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each run of equal values in a sorted array."""
    n = sorted_keys.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1)).astype(np.int64)
    return starts, np.diff(np.append(starts, n))


def _concat_ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lens)])`` without the Python loop."""
    lens = np.asarray(lens, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())


def _run_pairs(starts: np.ndarray, lens: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Positions (left < right) of every pair inside each run, at most ~PAIR_CHUNK pairs per yield (a run
    is never split, so one yield can exceed it by one run)."""
    if starts.size == 0:
        return
    npairs = lens * (lens - 1) // 2
    cum = np.cumsum(npairs)
    i = 0
    while i < lens.size:
        base = int(cum[i - 1]) if i else 0
        j = max(int(np.searchsorted(cum, base + PAIR_CHUNK, side="right")), i + 1)
        st, ln = starts[i:j], lens[i:j]
        offs = np.arange(ln.sum()) - np.repeat(np.cumsum(ln) - ln, ln)
        pos = np.repeat(st, ln) + offs
        partners = np.repeat(ln, ln) - 1 - offs
        left = np.repeat(pos, partners)
        right = left + 1 + (np.arange(left.size) - np.repeat(np.cumsum(partners) - partners, partners))
        yield left, right
        i = j


@dataclass
class LshStats:
    """What a near-duplicate pass did; pass one in to read it (benchmarks, job counters)."""

    identical: int = 0  # items whose hash equals an earlier item's (grouped without comparison)
    candidates: int = 0  # candidate pairs compared (repeats across bands included)
    verified: int = 0  # of those, within the threshold
    pruned: int = 0  # candidate pairs skipped because both ends were already in one group (groups only)
    largest_bucket: int = 0  # most distinct hashes seen in one bucket, at any level
    split_buckets: int = 0  # buckets above max_bucket re-banded on their varying bits
    fallback_buckets: int = 0  # buckets still above max_bucket at max_depth: all-pairs or leaders
    leader_items: int = 0  # members of buckets grouped by leader clustering (recall may drop there)


class _PairSink:
    """Collects verified pairs (indices of distinct hashes) as deduplicated ``min * n + max`` codes."""

    prunes = False

    def __init__(self, n: int):
        self.n = n
        self.chunks: list[np.ndarray] = []
        self.size = 0
        self.limit = max(4 * n, PAIR_CHUNK)

    def live_runs(self, sidx: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Which runs ``sidx[start : start + len]`` may still add something."""
        return np.ones(starts.size, dtype=bool)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        keep = a != b
        a, b = a[keep], b[keep]
        self.chunks.append(np.minimum(a, b) * self.n + np.maximum(a, b))
        self.size += a.size
        if self.size > self.limit:
            codes = np.unique(np.concatenate(self.chunks))
            self.chunks, self.size = [codes], codes.size
            self.limit = max(self.limit, 2 * codes.size)

    def add_cliques(self, sidx: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> None:
        """Runs ``sidx[start : start + len]`` whose members are all within the threshold of each other: every
        pair of each (a run of distinct hashes that vary in at most ``threshold`` bits has at most
        2**threshold members)."""
        for start, n in zip(starts.tolist(), lens.tolist(), strict=True):
            i, j = np.triu_indices(n, 1)
            self.add(sidx[start + i], sidx[start + j])

    def pairs(self) -> np.ndarray:
        if not self.chunks:
            return _EMPTY_PAIRS
        codes = np.unique(np.concatenate(self.chunks))
        return np.column_stack((codes // self.n, codes % self.n)).astype(np.int64)


class _ComponentSink(_PairSink):
    """Keeps only the groups: verified pairs are folded into component labels every ~n/8 pairs, and
    buckets or pairs whose members are already in one component are skipped. This is what keeps dense
    clusters (all members near each other: quadratic pair counts) cheap; the components stay exact."""

    prunes = True

    def __init__(self, n: int):
        super().__init__(n)
        self.comp = np.arange(n, dtype=np.int64)
        self.limit = max(n // 8, 1024)

    def live_runs(self, sidx: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        c = self.comp[sidx[_concat_ranges(starts, lens)]]
        local = np.cumsum(lens) - lens
        return np.minimum.reduceat(c, local) != np.maximum.reduceat(c, local)

    def live_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.comp[a] != self.comp[b]

    def add_cliques(self, sidx: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> None:
        """A star per run joins it as every pair would."""
        self.add(np.repeat(sidx[starts], lens - 1), sidx[_concat_ranges(starts + 1, lens - 1)])

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        keep = self.comp[a] != self.comp[b]
        self.chunks.append(np.column_stack((a[keep], b[keep])))
        self.size += int(np.count_nonzero(keep))
        if self.size > self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.chunks:
            return
        edges = self.comp[np.concatenate(self.chunks)]  # between current components
        self.chunks, self.size = [], 0
        k = int(self.comp.max()) + 1
        # labels stay canonical (numbered by smallest member): components of components keep that order
        self.comp = connected_components(k, edges)[self.comp]

    def labels(self) -> np.ndarray:
        self.flush()
        return self.comp


def _verify_runs(
    u: np.ndarray, sidx: np.ndarray, starts: np.ndarray, lens: np.ndarray, r: int, stats: LshStats, sink: _PairSink
) -> None:
    for left, right in _run_pairs(starts, lens):
        a, b = sidx[left], sidx[right]
        if sink.prunes:
            live = sink.live_pairs(a, b)
            stats.pruned += int(a.size - np.count_nonzero(live))
            a, b = a[live], b[live]
        ok = popcount64(u[a] ^ u[b]) <= r
        stats.candidates += int(a.size)
        stats.verified += int(np.count_nonzero(ok))
        sink.add(a[ok], b[ok])


def _leader_links(u: np.ndarray, members: np.ndarray, r: int, stats: LshStats, sink: _PairSink) -> None:
    """Greedy leader clustering of one bucket still oversized at max_depth (a dense cluster), in bounded
    time: ≤ 2 × members × FALLBACK_LEADERS comparisons, ≤ members + leaders² edges (all verified).

    Leaders are picked in hash order: the smallest hash not within ``r`` of an earlier leader. Each member
    is linked to the first leader within ``r``, and to each other leader within ``r`` (one member per
    leader pair is enough to join them). What can be missed is a pair of members within ``r`` that share
    no leader (it may still be found through another band), and members near none of the leaders.
    """
    rem = members[np.argsort(u[members], kind="stable")]
    stats.leader_items += int(rem.size)
    leaders = []
    while rem.size and len(leaders) < FALLBACK_LEADERS:
        leaders.append(rem[0])
        rem = rem[popcount64(u[rem] ^ u[rem[0]]) > r]
    if rem.size:
        log.warning(
            "near-dup fallback: %d of a dense bucket of %d hashes near none of %d leaders: left ungrouped",
            rem.size, members.size, len(leaders),
        )  # fmt: skip
    lead = np.array(leaders, dtype=np.int64)
    step = max(1, PAIR_CHUNK // lead.size)
    for i in range(0, members.size, step):
        chunk = members[i : i + step]
        near = popcount64(u[chunk][:, None] ^ u[lead][None, :]) <= r
        has = near.any(axis=1)
        first = near.argmax(axis=1)
        sink.add(chunk[has], lead[first[has]])
        # a member near several leaders joins them: one verified member-leader edge per leader pair
        row, col = np.nonzero(near & (np.arange(lead.size) != first[:, None]))
        if row.size:
            _, rep = np.unique(first[row] * lead.size + col, return_index=True)
            sink.add(chunk[row[rep]], lead[col[rep]])


def _node(
    u: np.ndarray,
    idx: np.ndarray,
    masks: np.ndarray,
    r: int,
    max_bucket: int,
    max_depth: int,
    depth: int,
    stats: LshStats,
    sink: _PairSink,
    order: np.ndarray,
    vals: np.ndarray | None = None,
) -> None:
    """Verified pairs among ``u[idx]`` (``vals`` when given) in buckets of equal ``u & masks``, into ``sink``.

    One mask per member: members of one parent bucket share it, and members of different parent buckets
    differ in bits that all their masks hold, so keys never collide across parents. Buckets above
    ``max_bucket`` are re-banded: their own varying bits (the only bits in which two members can differ)
    are dealt into ``r + 1`` parts, and each part added to the mask gives a child bucketing; a pair within
    ``r`` leaves at least one part untouched, so it meets in that child (pigeonhole again: exact).
    ``order``: bit positions by balance, for the dealing.
    """
    keys = (u[idx] if vals is None else vals) & masks
    del vals
    by_key = np.argsort(keys)
    sidx = idx[by_key]
    starts, lens = _runs(keys[by_key])
    del keys
    if lens.size:
        stats.largest_bucket = max(stats.largest_bucket, int(lens.max()))
    small = (lens >= 2) & (lens <= max_bucket)
    _verify_runs(u, sidx, starts[small], lens[small], r, stats, sink)  # pairs already joined are skipped there
    big = lens > max_bucket
    if not big.any():
        return
    bst, bln = starts[big], lens[big]
    live = sink.live_runs(sidx, bst, bln)
    bst, bln = bst[live], bln[live]
    if bst.size == 0:
        return
    vals = u[sidx[_concat_ranges(bst, bln)]]
    local = np.cumsum(bln) - bln
    var = np.bitwise_or.reduceat(vals, local) ^ np.bitwise_and.reduceat(vals, local)
    del vals
    star = popcount64(var) <= r  # members agree on all but ≤ r bits: all within r of each other
    if star.any():
        sink.add_cliques(sidx, bst[star], bln[star])
    if depth >= max_depth:
        for s, n in zip(bst[~star].tolist(), bln[~star].tolist(), strict=True):
            stats.fallback_buckets += 1
            members = sidx[s : s + n]
            if n <= EXACT_BUCKET_LIMIT:
                _verify_runs(u, members, np.zeros(1, np.int64), np.array([n]), r, stats, sink)
            else:
                _leader_links(u, members, r, stats, sink)
        return
    go = ~star
    if not go.any():
        return
    stats.split_buckets += int(np.count_nonzero(go))
    gst, gln = bst[go], bln[go]
    pos = _concat_ranges(gst, gln)
    members, base = sidx[pos], masks[by_key[pos]]
    mvals = u[members]  # gathered once for the r + 1 children
    run_of = np.repeat(np.arange(gst.size), gln)
    parts = _split_masks(var[go], r + 1, order)  # each bucket's own varying bits: constant ones waste no part
    del by_key, sidx, starts, lens, pos  # the recursion below may go a few levels deep
    for g in range(r + 1):
        child = base | parts[:, g][run_of]
        _node(u, members, child, r, max_bucket, max_depth, depth + 1, stats, sink, order, mvals)
        del child


def _find_pairs(
    u: np.ndarray, threshold: int, bands: int, max_bucket: int, max_depth: int, stats: LshStats, sink: _PairSink
) -> None:
    """All verified pairs among distinct hashes ``u`` into ``sink``.

    Bands are dealt from the bits that vary in ``u`` (all 64 for real data; fewer for a Spark bucket whose
    members share a band), most balanced bits first and round-robin, so that no band is (nearly) constant.
    """
    if max_bucket < 2:
        raise ValueError(f"max_bucket must be ≥ 2, got {max_bucket}")
    if threshold == 0 or u.size < 2:
        return
    varying = _varying(u)
    idx = np.arange(u.size, dtype=np.int64)
    if varying.bit_count() <= threshold:  # all within the threshold of each other
        sink.add_cliques(idx, np.zeros(1, np.int64), np.array([u.size], np.int64))
        return
    order = _balance_order(u)
    for mask in _split_bits(varying, bands, order):
        masks = np.full(u.size, mask, dtype=np.uint64)
        _node(u, idx, masks, threshold, max_bucket, max_depth, 0, stats, sink, order)
        if isinstance(sink, _ComponentSink):
            sink.flush()


# --------------------------------------------------------------------------- public grouping API


def candidate_pairs(hashes: Any, bands: int) -> np.ndarray:
    """All ``(i, j)``, i < j, of items sharing at least one band value: the raw LSH candidates.

    Unverified and unbounded: a bucket of k items gives k(k-1)/2 pairs, and identical hashes are not
    collapsed. For inspection and tests; :func:`near_duplicate_pairs` never materialises this set.
    """
    h = as_uint64(hashes).ravel()
    n = h.size
    codes = []
    for mask in band_masks(bands):
        keys = h & mask
        order = np.argsort(keys)
        starts, lens = _runs(keys[order])
        keep = lens >= 2
        for left, right in _run_pairs(starts[keep], lens[keep]):
            a, b = order[left], order[right]
            codes.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not codes:
        return _EMPTY_PAIRS
    codes = np.unique(np.concatenate(codes))
    return np.column_stack((codes // n, codes % n)).astype(np.int64)


def near_duplicate_pairs(
    hashes: Any,
    threshold: int = DEFAULT_THRESHOLD,
    bands: int | None = None,
    *,
    max_bucket: int = MAX_BUCKET,
    max_depth: int = MAX_DEPTH,
    stats: LshStats | None = None,
) -> np.ndarray:
    """``(m, 2)`` int64 pairs ``(i, j)``, i < j, sorted, with Hamming(hash i, hash j) ≤ ``threshold``.

    Pairs of distinct hash values: all of them (pigeonhole guarantee, ``bands >= threshold + 1``), listed
    between the first occurrences of the two values. Identical hashes: each later occurrence is paired with
    the first one only (a star, not k² pairs). The connected components of the result are thus exactly the
    groups of the "within threshold" relation, except inside buckets of more than EXACT_BUCKET_LIMIT hashes
    still above ``max_bucket`` after ``max_depth`` re-bandings (leader clustering; ``stats.leader_items``).
    On a dense cluster the pair count itself is quadratic: for grouping, :func:`near_duplicate_groups`
    skips what is already joined.
    """
    stats = stats if stats is not None else LshStats()
    b = resolve_bands(threshold, bands)
    h = as_uint64(hashes).ravel()
    if h.size == 0:
        return _EMPTY_PAIRS
    u, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    sink = _PairSink(u.size)
    _find_pairs(u, threshold, b, max_bucket, max_depth, stats, sink)
    between = first[sink.pairs()]
    between.sort(axis=1)
    later = np.flatnonzero(first[inv] != np.arange(h.size))
    stats.identical = int(later.size)
    out = np.concatenate((between, np.column_stack((first[inv[later]], later))))
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component label per node 0..n-1 of the undirected graph ``pairs``; labels are numbered in the order
    of each component's smallest node (so equal inputs give equal labels)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size == 0:
        return np.arange(n, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    _, labels = scipy_components(graph, directed=False)
    return _canonical_labels(labels)


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inv.ravel()]


def near_duplicate_groups(
    hashes: Any,
    threshold: int = DEFAULT_THRESHOLD,
    bands: int | None = None,
    *,
    max_bucket: int = MAX_BUCKET,
    max_depth: int = MAX_DEPTH,
    stats: LshStats | None = None,
) -> np.ndarray:
    """Group label per item (transitive closure of "within ``threshold`` bits"), numbered by first item.

    Same search as :func:`near_duplicate_pairs`, but pairs are folded into components as they come, and
    buckets and candidate pairs already inside one component are skipped (``stats.pruned``): memory stays
    linear in n and a dense cluster is joined without enumerating its quadratic pairs.
    """
    stats = stats if stats is not None else LshStats()
    b = resolve_bands(threshold, bands)
    h = as_uint64(hashes).ravel()
    if h.size == 0:
        return np.zeros(0, dtype=np.int64)
    u, inv = np.unique(h, return_inverse=True)
    stats.identical = int(h.size - u.size)
    sink = _ComponentSink(u.size)
    _find_pairs(u, threshold, b, max_bucket, max_depth, stats, sink)
    return _canonical_labels(sink.labels()[inv.ravel()])


def keep_smallest_key(keys: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """True for the item with the smallest key of each label (first by position among equal keys)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(keys) != labels.size:
        raise ValueError(f"{len(keys)} keys for {labels.size} labels")
    if labels.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(np.asarray(keys), kind="stable")
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size)
    best = np.full(int(labels.max()) + 1, labels.size, dtype=np.int64)
    np.minimum.at(best, labels, rank)
    return rank == best[labels]


def near_duplicate_keep_mask(
    keys: Sequence[str],
    hashes: Any,
    threshold: int = DEFAULT_THRESHOLD,
    bands: int | None = None,
    *,
    max_bucket: int = MAX_BUCKET,
    max_depth: int = MAX_DEPTH,
    stats: LshStats | None = None,
) -> np.ndarray:
    """Boolean keep-mask: in each near-duplicate group the sample with the smallest key is kept.

    Smallest key, not first seen, so the result does not depend on partitioning or input order.
    """
    if len(keys) != np.asarray(hashes).size:
        raise ValueError(f"{len(keys)} keys for {np.asarray(hashes).size} hashes")
    labels = near_duplicate_groups(hashes, threshold, bands, max_bucket=max_bucket, max_depth=max_depth, stats=stats)
    return keep_smallest_key(keys, labels)


def near_any(
    hashes: Any,
    reference_hashes: Any,
    threshold: int = DEFAULT_THRESHOLD,
    bands: int | None = None,
    *,
    max_bucket: int = MAX_BUCKET,
    max_depth: int = MAX_DEPTH,
) -> np.ndarray:
    """Boolean mask: hash i is within ``threshold`` bits of at least one reference hash.

    For decontamination against an evaluation set, so exact (no leader fallback): the same banding and
    re-banding of oversized buckets, and an all-pairs check of query × bucket past ``max_depth``.
    """
    b = resolve_bands(threshold, bands)
    q = as_uint64(hashes).ravel()
    ref = np.unique(as_uint64(reference_hashes).ravel())
    if q.size == 0 or ref.size == 0:
        return np.zeros(q.size, dtype=bool)
    uq, inv = np.unique(q, return_inverse=True)
    hit = np.isin(uq, ref)
    varying = _varying(np.concatenate((uq, ref)))
    if varying.bit_count() <= threshold:
        hit[:] = True
    elif threshold > 0:
        all_refs = np.arange(ref.size, dtype=np.int64)
        order = _balance_order(ref)
        for mask in _split_bits(varying, b, order):
            todo = np.flatnonzero(~hit)
            if todo.size == 0:
                break
            _cross_node(uq, todo, ref, all_refs, mask, threshold, max_bucket, max_depth, 0, hit, order)
    return hit[inv.ravel()]


def _cross_node(
    uq: np.ndarray,
    qi: np.ndarray,
    ref: np.ndarray,
    ri: np.ndarray,
    mask: int,
    r: int,
    max_bucket: int,
    max_depth: int,
    depth: int,
    hit: np.ndarray,
    order: np.ndarray,
) -> None:
    """Set ``hit[q]`` for queries ``qi`` within ``r`` of a reference in ``ri`` that shares bits ``mask``."""
    m = np.uint64(mask)
    rk = ref[ri] & m
    by_key = np.argsort(rk)
    rk, ri = rk[by_key], ri[by_key]
    qk = uq[qi] & m
    lo = np.searchsorted(rk, qk, side="left")
    cnt = np.searchsorted(rk, qk, side="right") - lo
    direct = (cnt > 0) & ((cnt <= max_bucket) | (depth >= max_depth))
    _cross_verify(uq, qi[direct], lo[direct], cnt[direct], ref, ri, r, hit)
    big = (cnt > max_bucket) & (depth < max_depth)
    if not big.any():
        return
    cover = np.zeros(rk.size + 1, dtype=np.int64)
    np.add.at(cover, lo[big], 1)
    np.add.at(cover, lo[big] + cnt[big], -1)
    bucket_refs = ri[np.cumsum(cover[:-1]) > 0]
    bq = qi[big]
    free = _varying(np.concatenate((uq[bq], ref[bucket_refs]))) & ~mask  # where a query and its bucket can differ
    if free.bit_count() <= r:
        hit[bq] = True
        return
    for sub in _split_bits(free, r + 1, order):
        todo = bq[~hit[bq]]
        if todo.size == 0:
            return
        _cross_node(uq, todo, ref, bucket_refs, mask | sub, r, max_bucket, max_depth, depth + 1, hit, order)


def _cross_verify(
    uq: np.ndarray,
    qi: np.ndarray,
    lo: np.ndarray,
    cnt: np.ndarray,
    ref: np.ndarray,
    ri: np.ndarray,
    r: int,
    hit: np.ndarray,
) -> None:
    """Compare each query ``qi[k]`` with references ``ri[lo[k] : lo[k] + cnt[k]]``, ≤ PAIR_CHUNK at a time."""
    cum = np.cumsum(cnt)
    i = 0
    while i < qi.size:
        base = int(cum[i - 1]) if i else 0
        j = max(int(np.searchsorted(cum, base + PAIR_CHUNK, side="right")), i + 1)
        c = cnt[i:j]
        qq = np.repeat(qi[i:j], c)
        pos = _concat_ranges(lo[i:j], c)
        near = popcount64(uq[qq] ^ ref[ri[pos]]) <= r
        hit[qq[near]] = True
        i = j
