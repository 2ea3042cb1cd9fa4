"""Near-duplicate verdicts: a colour check on pHash candidate pairs, and representatives without chains.

pHash sees grey levels only and its 4-bit neighbourhood is wide for simple graphics: a red and a blue star of
one outline hash alike, and so do many distinct icons on plain backgrounds. Two rules make a removal safe:

1. **A second, independent check** on every pair the LSH verified (never on all pairs): the CIELAB colour
   difference (ΔE) of the two images' 16×16 thumbnails, each pixel compared with the closest of the 3×3
   neighbouring pixels of the other thumbnail (a 1-5% crop moves content by under one thumbnail pixel) after one
   brightness gain (a brighter copy is still a copy). A removal needs both a small mean ΔE (the picture as a
   whole) and a small 95th percentile (no recoloured shape covering 5% of it). Measured limits and spreads:
   ``DedupConfig.colour_max_mean`` / ``colour_max_tail`` and ``benchmarks/bench_dedup.py``.
2. **No chained removals**: in a stable order (smallest key first) each sample not yet removed is kept and
   removes its near duplicates that are not yet decided. Every removed sample is thus within the thresholds of
   the kept sample it is recorded against; in a chain A~B~C with C far from A, A and C stay.

The thumbnail is computed when an image is decoded for its pHash (one decode, by the download as it writes the
shard, see ``shard_signatures.py``, else by finalize; 0.1-0.2 ms more per 256×192 image, measured by
``benchmarks/bench_dedup.py``); the comparison runs only on verified candidate pairs.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from witbuild.dedup.phash import (
    as_uint64,
    hamming_array,
    hashable_image,
    near_duplicate_pairs,
    phash64_batch,
    phash_grey,
)

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

HASH_SIDE = 64  # images are hashed reduced to no less than this per side: 2× what pHash looks at (32×32)
THUMB_SIDE = 16  # thumbnail side in pixels: 768 bytes of RGB per image
BROADCAST_ROWS = 100_000  # pairs or removals joined by broadcast (≤ ~80 MB with two thumbnails a row)
CHECK_PAIRS_PER_TASK = 20_000  # colour checks per Spark task (~3 s of one core)
CHECKED_SCHEMA = "a string, b string, bits int, mean double, tail double"  # colour-checked pairs
PAIR_BATCH = 256  # pairs colour-checked at once (~30 MB of float64 intermediates)
# verified pairs, with the pHash of a: the pairs of one group of equal hashes share it, so their colour check
# gets each thumbnail of the group once (see _checked_in_groups)
PAIR_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("bits", pa.int32()), ("ha", pa.int64())])
MAX_REPEATS = 64  # items of one hash value checked pairwise (see occurrence_pairs)
TWIN_BITS = -1  # ``bits`` of a verified-pairs row that names an exact duplicate (same sha256), not a pair
DEFAULT_MAX_MEAN = 5.0  # ΔE; DedupConfig.colour_max_mean and colour_max_tail give the measured spread
DEFAULT_MAX_TAIL = 20.0


def _pillow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pillow")
    except PackageNotFoundError:  # pragma: no cover - Pillow comes with the download extra
        return "none"


# names what image_signatures computes; signatures saved under another version are computed again. Pillow's
# version is part of it: its resampling changes between versions (13.0 makes the vertical pass first when the
# height shrinks by more than twice the width's pixels, older ones always the horizontal one; the rounding in
# between differs), so its pixels, and the hashes, are those of one version
SIGNATURE_VERSION = f"phash-reduced{HASH_SIDE}-thumb{THUMB_SIDE}-1-pillow{_pillow_version()}"

_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_OVER_WHITE = (_SRGB_TO_XYZ / _WHITE[:, None]).T  # linear RGB rows @ this = XYZ / white
_F_TO_LAB = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]])  # f(X, Y, Z) -> L, a, b
_LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
_SRGB = np.arange(256) / 255.0
_LINEAR = np.where(_SRGB > 0.04045, ((_SRGB + 0.055) / 1.055) ** 2.4, _SRGB / 12.92)  # sRGB byte -> linear light


def thumbnail(image: Image.Image) -> bytes:
    """16×16 RGB thumbnail (area average) of the image as :func:`~witbuild.dedup.phash.phash64` sees it."""
    from PIL import Image

    seen = hashable_image(image)
    rgb = seen if seen.mode == "RGB" else seen.convert("RGB")
    # reducing_gap: an integer box reduction first, then the exact one (half the time; pixels within 1 level)
    return rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, reducing_gap=2.0).tobytes()


def reduce_factor(size: tuple[int, int]) -> int:
    """The largest of 8, 4, 2, 1 that leaves an image of ``size`` at least ``HASH_SIDE`` pixels on each side
    (the factor Pillow's JPEG ``draft`` picks for that size)."""
    scale = min(size[0] // HASH_SIDE, size[1] // HASH_SIDE)
    return next((f for f in (8, 4, 2) if scale >= f), 1)


def reduced_image(im: Image.Image) -> Image.Image:
    """``im`` (opened, not yet loaded) as :func:`hashable_image`, shrunk by :func:`reduce_factor`.

    A JPEG is decoded at that scale by libjpeg (in the DCT domain: 1/f² of the pixels ever made, several times
    faster than a full decode); any other format is decoded whole and box-reduced by the same factor, which is
    what the DCT scaling computes, so a PNG and a JPEG of one picture still hash alike. pHash looks at
    32×32 pixels and the thumbnail at 16×16; keeping twice that keeps resized copies as close as a full
    decode does (``benchmarks/bench_dedup.py --quality-only``: at 32 px, 56 of 60 resized copies stayed within
    the threshold; at 64, 58; full decode 60; precision and recall overall within a point of a full decode)."""
    f = reduce_factor(im.size)
    reduced = ((im.size[0] + f - 1) // f, (im.size[1] + f - 1) // f)
    if f > 1 and im.format == "JPEG":
        im.draft(im.mode, (HASH_SIDE, HASH_SIDE))
    seen = hashable_image(im)
    return seen.reduce(f) if seen.size != reduced else seen


def image_signature(data: bytes) -> tuple[int, bytes] | None:
    """(pHash, thumbnail) of encoded image bytes from one reduced decode (:func:`reduced_image`); None when
    Pillow cannot decode them. Never raises: one bad download must not fail a Spark task."""
    return image_signatures([data])[0]


def image_signatures(images: Sequence[bytes]) -> list[tuple[int, bytes] | None]:
    """:func:`image_signature` of each of ``images``, the pHashes computed together (:func:`phash64_batch`)."""
    return signatures_from_inputs([signature_inputs(data) for data in images])


def signatures_from_inputs(inputs: Sequence[tuple[np.ndarray, bytes] | None]) -> list[tuple[int, bytes] | None]:
    """(pHash, thumbnail) from :func:`signature_inputs` results, the pHashes computed together."""
    hashes = iter(phash64_batch([got[0] for got in inputs if got is not None]))
    return [(next(hashes), got[1]) if got is not None else None for got in inputs]


def signature_inputs(data: bytes) -> tuple[np.ndarray, bytes] | None:
    """(pHash input pixels, thumbnail) of one image from one reduced decode, or None when Pillow cannot decode
    it: the per-image part of :func:`image_signatures`, which can run as images arrive."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            seen = reduced_image(im)  # converted once: both take L/RGB as they are
            return phash_grey(seen), thumbnail(seen)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        log.debug("image_signature: undecodable image: %s: %s", type(exc).__name__, exc)
        return None


def _lab(linear: np.ndarray) -> np.ndarray:
    """Linear RGB (``(..., 3)``, 0..1) to CIELAB (D65): distances there follow perceived colour differences."""
    xyz = np.minimum(linear, 1.0) @ _XYZ_OVER_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return f @ _F_TO_LAB + _LAB_OFFSET


def _nearest_deltas(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of ``a``, the smallest ΔE to the 3×3 neighbourhood of the same pixel in ``b``, and the same per
    pixel of ``b`` against ``a`` (both ``(pairs, side, side, 3)`` CIELAB). A neighbour outside the thumbnail
    counts as the border pixel it would repeat, which is itself a neighbour, so only the neighbours inside are
    compared; each squared distance is computed once and serves both directions."""
    s = THUMB_SIDE
    ab = np.full(a.shape[:3], np.inf)
    ba = np.full(a.shape[:3], np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ys, xs = slice(max(0, -dy), s - max(0, dy)), slice(max(0, -dx), s - max(0, dx))  # p: p + (dy, dx) inside
            yt, xt = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)  # p + (dy, dx)
            d = b[:, yt, xt] - a[:, ys, xs]
            sq = np.einsum("...c,...c->...", d, d)
            np.minimum(ab[:, ys, xs], sq, out=ab[:, ys, xs])
            np.minimum(ba[:, yt, xt], sq, out=ba[:, yt, xt])
    return np.sqrt(ab), np.sqrt(ba)


@dataclass(frozen=True)
class ColourDiff:
    """How two thumbnails differ in colour: ``mean`` ΔE over all pixels, and ``tail``, the 95th percentile
    (what the most changed 5% of the picture changed by: a small recoloured shape)."""

    mean: float
    tail: float


def colour_diff(thumb_a: bytes, thumb_b: bytes) -> ColourDiff:
    """:func:`colour_diffs` of one pair."""
    return colour_diffs([thumb_a], [thumb_b])[0]


def colour_diffs(thumbs_a: Sequence[bytes], thumbs_b: Sequence[bytes]) -> list[ColourDiff]:
    """Shift-tolerant CIELAB ΔE between pairs of :func:`thumbnail` s (0: the same picture; module docstring).

    In each pair ``a`` is first scaled by the one gain (on its sRGB values, least squares) that best matches
    ``b``, so a uniform brightness change costs little while a change of hue does not go away. Symmetric: the
    two are taken in byte order, and each pixel's ΔE is the larger of the two directions. Vectorised over the
    pairs (``PAIR_BATCH`` at a time): one pair alone costs numpy's call overhead ~40 times."""
    out: list[ColourDiff] = []
    for start in range(0, len(thumbs_a), PAIR_BATCH):
        firsts, seconds = [], []
        for x, y in zip(thumbs_a[start : start + PAIR_BATCH], thumbs_b[start : start + PAIR_BATCH], strict=True):
            firsts.append(min(x, y))
            seconds.append(max(x, y))
        a = np.frombuffer(b"".join(firsts), dtype=np.uint8).reshape(len(firsts), -1, 3).astype(np.float64)
        b = np.frombuffer(b"".join(seconds), dtype=np.uint8).reshape(len(firsts), -1, 3)
        gain = (a * b).sum(axis=(1, 2)) / np.maximum((a * a).sum(axis=(1, 2)), 1e-9)
        a = np.minimum(a * gain[:, None, None], 255.0) / 255.0
        a = np.where(a > 0.04045, ((a + 0.055) / 1.055) ** 2.4, a / 12.92)
        side = (len(firsts), THUMB_SIDE, THUMB_SIDE, 3)
        la, lb = _lab(a).reshape(side), _lab(_LINEAR[b]).reshape(side)
        ab, ba = _nearest_deltas(la, lb)
        means = np.maximum(ab.mean(axis=(1, 2)), ba.mean(axis=(1, 2)))
        tails = np.percentile(np.maximum(ab, ba).reshape(len(firsts), -1), 95, axis=1)
        out += [ColourDiff(float(m), float(t)) for m, t in zip(means, tails, strict=True)]
    return out


@dataclass(frozen=True)
class ColourLimits:
    """Largest :class:`ColourDiff` of near duplicates (``DedupConfig.colour_max_mean`` / ``colour_max_tail``)."""

    mean: float = DEFAULT_MAX_MEAN
    tail: float = DEFAULT_MAX_TAIL

    def allows(self, diff: ColourDiff) -> bool:
        return diff.mean <= self.mean and diff.tail <= self.tail


@dataclass(frozen=True)
class Removal:
    """A removed near duplicate and the kept sample it duplicates."""

    key: str
    duplicate_of: str
    phash_distance: int
    colour: ColourDiff | None  # None when the colour check is off


def choose_representatives(edges: Iterable[tuple[str, str, int, ColourDiff | None]]) -> list[Removal]:
    """Greedy, chain-free removals from verified near-duplicate pairs ``(key_a, key_b, bits, colour)``.

    Keys are visited in sorted order; a key not removed yet is kept and removes every not-yet-removed neighbour
    with a larger key. So each removal names a kept neighbour, and the result does not depend on input order.
    Returned sorted by key."""
    unique = {(min(a, b), max(a, b)): (bits, delta) for a, b, bits, delta in edges if a != b}
    adjacent: dict[str, list[tuple[str, int, ColourDiff | None]]] = {}
    for (a, b), (bits, delta) in sorted(unique.items()):
        adjacent.setdefault(a, []).append((b, bits, delta))
        adjacent.setdefault(b, []).append((a, bits, delta))
    removed: dict[str, Removal] = {}
    for key in sorted(adjacent):
        if key in removed:
            continue
        for other, bits, delta in sorted(adjacent[key], key=lambda e: e[0]):
            if other > key and other not in removed:
                removed[other] = Removal(other, key, bits, delta)
    return [removed[k] for k in sorted(removed)]


def occurrence_pairs(hashes: Any, threshold: int, bands: int | None = None) -> np.ndarray:
    """``(m, 2)`` pairs ``(i, j)``, i < j, of items within ``threshold`` bits, between every occurrence.

    :func:`~witbuild.dedup.phash.near_duplicate_pairs` pairs only the first occurrences of two hash values (and
    each repeat with its first): enough for groups, not for a second check, which may reject the first pair and
    accept another. Values repeated more than ``MAX_REPEATS`` times are expanded through their first
    ``MAX_REPEATS`` items only (the rest keep the star to the first): blank images must not cost k² checks.
    Items are taken in the order given: callers sort them by key, so the capped set does not depend on tasks."""
    h = as_uint64(hashes).ravel()
    if h.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    values, inv = np.unique(h, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[order], np.arange(values.size))
    ends = np.append(starts[1:], h.size)
    members = [order[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    capped = [m[:MAX_REPEATS] for m in members]
    out = [np.column_stack((m[0].repeat(m.size - MAX_REPEATS), m[MAX_REPEATS:])) for m in members
           if m.size > MAX_REPEATS]
    out += [np.array(list(itertools.combinations(m.tolist(), 2)), dtype=np.int64).reshape(-1, 2) for m in capped
            if m.size > 1]
    for p, q in near_duplicate_pairs(values, threshold, bands).tolist():
        a, b = capped[p], capped[q]
        out.append(np.column_stack((a.repeat(b.size), np.tile(b, a.size))))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(out).astype(np.int64), axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def find_removals(keys: Sequence[str], hashes: Any, thumbs: Sequence[bytes], threshold: int, bands: int | None = None,
                  limits: ColourLimits | None = ColourLimits()) -> list[Removal]:
    """:func:`near_duplicate_removals` in one process, for tests and benchmarks: the same verdicts on a list.

    ``hashes``: pHashes (either sign convention); ``thumbs``: :func:`thumbnail` s; keys must be distinct."""
    if not len(keys) == len(thumbs) == np.asarray(hashes).size:
        raise ValueError(f"{len(keys)} keys, {np.asarray(hashes).size} hashes, {len(thumbs)} thumbnails")
    order = sorted(range(len(keys)), key=keys.__getitem__)  # as the Spark path: repeats capped by key order
    keys, thumbs = [keys[i] for i in order], [thumbs[i] for i in order]
    h = as_uint64(hashes).ravel()[order]
    pairs = occurrence_pairs(h, threshold, bands)
    bits = hamming_array(h[pairs[:, 0]], h[pairs[:, 1]]).tolist()
    if limits is None:
        diffs: list[ColourDiff | None] = [None] * len(pairs)
    else:
        diffs = list(colour_diffs([thumbs[i] for i in pairs[:, 0]], [thumbs[j] for j in pairs[:, 1]]))
    edges = [(keys[i], keys[j], d, diff) for (i, j), d, diff in zip(pairs.tolist(), bits, diffs, strict=True)
             if limits is None or limits.allows(diff)]  # type: ignore[arg-type]
    return choose_representatives(edges)


def near_duplicate_removals(df: Any, threshold: int, bands: int, limits: ColourLimits | None) -> list[Removal]:
    """Removals among the rows of Spark DataFrame ``df`` (``key``, ``_phash`` signed, ``_thumb``).

    Banded LSH in Spark: one row per (band, band value), buckets verified by Hamming distance. The verified
    pairs stay in Spark (cached; collecting them and sending them back cost more than finding them) and are
    colour-checked there, with both thumbnails joined to each of a few pairs, or many pairs in tasks that get
    each thumbnail they need once (:func:`_checked_in_groups`); only the pairs that pass reach the driver, which
    chooses representatives. ``limits`` None: pHash alone decides (no colour check)."""
    return duplicate_verdicts(df, threshold, bands, limits, exact=False)[1]


def duplicate_verdicts(df: Any, threshold: int, bands: int, limits: ColourLimits | None,
                       exact: bool) -> tuple[list[str], list[Removal]]:
    """The exact duplicates (``exact``: the keys whose image bytes a smaller key has) and the near-duplicate
    removals among the other rows (:func:`near_duplicate_removals`), from one LSH pass; ``df`` also has
    ``sha256`` when ``exact``.

    Equal bytes have one pHash, so a sample and all its twins meet in every bucket that holds one of them: each
    bucket leaves out the twins of a smaller key, which gives exactly the pairs of removing exact duplicates
    first, and band 0's one bucket of their pHash names them (:func:`_bucket_pairs`). A job of its own (a
    shuffle of every row by sha256, and removing its keys before the LSH) cost ~2 s at 100,000 images."""
    from pyspark.sql import functions as F

    verified = _verified_pairs(df, threshold, bands, exact)
    if not exact and limits is None:
        return [], choose_representatives((r["a"], r["b"], int(r["bits"]), None) for r in verified.collect())
    pairs_df = verified.cache()
    try:
        is_twin = F.col("bits") == F.lit(TWIN_BITS)
        found = pairs_df.agg(F.collect_list(F.when(is_twin, F.col("b"))).alias("twins"),
                             F.count(F.when(~is_twin, F.lit(1))).alias("pairs")).collect()[0]
        near_pairs = pairs_df.filter(~is_twin)
        if limits is None:
            edges = ((r["a"], r["b"], int(r["bits"]), None) for r in near_pairs.collect())
            return sorted(found["twins"]), choose_representatives(edges)
        return sorted(found["twins"]), _colour_checked(df, near_pairs, int(found["pairs"]), limits)
    finally:
        pairs_df.unpersist()


def _colour_checked(df: Any, pairs_df: Any, n_pairs: int, limits: ColourLimits) -> list[Removal]:
    """Removals among the verified pairs (``a, b, bits, ha``) whose thumbnails also pass the colour check."""
    from pyspark.sql import functions as F

    if not n_pairs:
        return []
    tasks = max(2 * df.sparkSession.sparkContext.defaultParallelism, -(-n_pairs // CHECK_PAIRS_PER_TASK))
    thumbs = df.select("key", "_thumb")
    if n_pairs <= BROADCAST_ROWS:  # the samples are not shuffled; the joined rows keep their partitioning
        pairs_df = pairs_df.select("a", "b", "bits")
        thumbs_a = thumbs.withColumnRenamed("key", "a").withColumnRenamed("_thumb", "ta")
        thumbs_b = thumbs.withColumnRenamed("key", "b").withColumnRenamed("_thumb", "tb")
        with_a = thumbs_a.join(F.broadcast(pairs_df), "a")
        joined = thumbs_b.join(F.broadcast(with_a), "b")
        # as few Python tasks as the pairs need: the samples often have hundreds of partitions, and a Python
        # task per near-empty partition cost 12 s on 1,500 images with 2 pairs
        joined = joined.coalesce(tasks).select("a", "b", "bits", "ta", "tb")
        checked = joined.mapInArrow(_colour_check(limits), CHECKED_SCHEMA)
    else:
        checked = _checked_in_groups(thumbs, pairs_df, tasks, limits)
    passed = checked.filter((F.col("mean") <= F.lit(limits.mean)) & (F.col("tail") <= F.lit(limits.tail))).collect()
    return choose_representatives((r["a"], r["b"], int(r["bits"]), ColourDiff(r["mean"], r["tail"])) for r in passed)


def _checked_in_groups(thumbs: Any, pairs_df: Any, tasks: int, limits: ColourLimits) -> Any:
    """The colour check of many pairs, each task sent its pairs and every thumbnail they name once.

    Joined to each pair, both thumbnails travelled once per pair: 391,000 pairs made ~600 MB, where the groups
    of equal hashes behind most pairs (up to ``MAX_REPEATS`` items, every pair among them) name each thumbnail
    many times. Pairs go to tasks by the pHash of ``a``, so a group's pairs and thumbnails meet in one task."""
    from pyspark.sql import functions as F

    pairs = pairs_df.select("ha", "a", "b", "bits")
    wanted = pairs.select("ha", F.col("a").alias("key")).union(pairs.select("ha", F.col("b").alias("key")))
    sent = wanted.distinct().join(thumbs, "key").select("ha", F.lit(None).cast("string").alias("a"),
                                                         F.lit(None).cast("string").alias("b"),
                                                         F.lit(None).cast("int").alias("bits"), "key", "_thumb")
    rows = pairs.select("ha", "a", "b", "bits", F.lit(None).cast("string").alias("key"),
                        F.lit(None).cast("binary").alias("_thumb")).unionByName(sent)
    return rows.repartition(tasks, "ha").mapInArrow(_grouped_colour_check(limits), CHECKED_SCHEMA)


def _grouped_colour_check(limits: ColourLimits) -> Any:
    """The Spark task of :func:`_checked_in_groups`: its rows are its pairs (``key`` null) and the thumbnails
    they name (``a`` null), in any order, so it holds them all, each thumbnail once (a row of one array, in
    bytes order: ``colour_diffs`` gives the gain to the smaller one), and the pairs as row numbers. A key
    without a thumbnail counts as infinitely different (the pair stays)."""
    import pyarrow.compute as pc

    from witbuild.dedup.colour_bound import certainly_apart_rows  # it reads this module's colour constants

    size = THUMB_SIDE * THUMB_SIDE * 3

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches))
        if not table.num_rows:
            return
        is_thumb = pc.is_valid(table.column("key"))
        thumbs = table.filter(is_thumb)
        pairs = {c: table.column(c).filter(pc.invert(is_thumb)).combine_chunks() for c in ("a", "b", "bits")}
        keys, data = thumbs.column("key").to_pylist(), thumbs.column("_thumb").to_pylist()
        ranked = sorted((i for i in range(len(keys)) if data[i] is not None and len(data[i]) == size),
                        key=data.__getitem__)
        row = {keys[i]: r for r, i in enumerate(ranked)}
        images = np.frombuffer(b"".join(data[i] for i in ranked), np.uint8).reshape(len(ranked), size)
        ia, ib = (np.fromiter((row.get(k, -1) for k in pairs[c].to_pylist()), np.int64, len(pairs[c]))
                  for c in ("a", "b"))
        both = np.flatnonzero((ia >= 0) & (ib >= 0))
        firsts, seconds = np.minimum(ia[both], ib[both]), np.maximum(ia[both], ib[both])
        apart = certainly_apart_rows(images, firsts, seconds, THUMB_SIDE, limits.mean, limits.tail)
        near = np.flatnonzero(~apart)
        diffs = colour_diffs([images[firsts[i]].tobytes() for i in near], [images[seconds[i]].tobytes() for i in near])
        rows = pa.array(both[near], pa.int64())
        yield pa.RecordBatch.from_pydict({"a": pairs["a"].take(rows), "b": pairs["b"].take(rows),
                                          "bits": pairs["bits"].take(rows),
                                          "mean": pa.array([d.mean for d in diffs], pa.float64()),
                                          "tail": pa.array([d.tail for d in diffs], pa.float64())})

    return run


def _hint(rows: int) -> Any:
    """``F.broadcast`` for a side of at most ``BROADCAST_ROWS`` rows (the big side is then not shuffled, which
    on a small build is most of the cost), else no hint."""
    from pyspark.sql import functions as F

    return F.broadcast if rows <= BROADCAST_ROWS else (lambda frame: frame)


def _verified_pairs(df: Any, threshold: int, bands: int, exact: bool = False) -> Any:
    """DataFrame ``a, b, ha, bits`` (a < b) of the pairs within ``threshold`` bits: banded LSH buckets in Spark,
    each verified by :func:`_bucket_pairs`; a pair found in several bands once. ``exact``: twins (same sha256)
    of a smaller key are in no pair, and come out as rows of ``bits`` ``TWIN_BITS`` (b a twin of a)."""
    from pyspark.sql import functions as F

    columns = ["key", "_phash", *(["sha256"] if exact else [])]
    # at most 2 map tasks a core (after a window a frame has 200 partitions: tasks of ~10 ms overhead each); one
    # scan of the rows, each exploded into its bands (a union of one select per band read them once per band)
    keyed = df.select(*columns).coalesce(2 * df.sparkSession.sparkContext.defaultParallelism)
    shift = [64 * i // bands for i in range(bands + 1)]
    values = [F.struct(F.lit(i).alias("band"),
                       F.shiftrightunsigned("_phash", 64 - shift[i + 1])
                       .bitwiseAND(F.lit((1 << (shift[i + 1] - shift[i])) - 1)).alias("value"))
              for i in range(bands)]
    banded = keyed.select(*columns, F.explode(F.array(*values)).alias("b")).select(*columns, "b.band", "b.value")
    buckets = (banded.groupBy("band", "value").agg(F.collect_list(F.struct(*columns)).alias("members"))
               .filter(F.size("members") > 1).select("band", "members"))
    # each pair once (from the first band its hashes share); ha: a's pHash
    return buckets.mapInArrow(_bucket_pairs(threshold, bands, exact), "a string, b string, bits int, ha long")


def _bucket_pairs(threshold: int, bands: int, exact: bool = False) -> Any:
    """The Spark task verifying one LSH bucket per input row (``band``, ``members``): its pairs within
    ``threshold`` bits, a < b, and the pHash of a.

    Every bucket holding two items pairs them alike (:func:`bucket_pairs`: the repeats of one value are capped in
    key order, whatever else the bucket holds), so each pair comes out of the first band its hashes share only
    (:mod:`witbuild.dedup.bucket_verify`, which verifies a batch of buckets at once): once, and equal hashes from
    band 0.

    ``exact``: members also carry ``sha256``; a member whose bytes a smaller key of the bucket has is left out
    (its twins are in every bucket it is in), and band 0 gives it as a row (smaller key, it, ``TWIN_BITS``)."""

    from witbuild.dedup.bucket_verify import verify_buckets  # it reads this module's constants

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield verify_buckets(batch, threshold, bands, exact)

    return run


def bucket_pairs(keys: Sequence[str], hashes: Sequence[int], threshold: int,
                 bands: int | None = None) -> list[tuple[str, str, int]]:
    """``(a, b, bits)``, a < b, for the items of one bucket (``keys`` sorted, pHashes of either sign) within
    ``threshold`` bits: :func:`occurrence_pairs` (the repeats of a value capped in key order). One bucket at a
    time: the reference :mod:`witbuild.dedup.bucket_verify` gives the pairs of, and its way for crowded buckets."""
    h = np.array([v & 0xFFFF_FFFF_FFFF_FFFF for v in hashes], dtype=np.uint64)
    pairs = occurrence_pairs(h, threshold, bands)
    bits = hamming_array(h[pairs[:, 0]], h[pairs[:, 1]]).tolist()
    return [(*sorted((keys[i], keys[j])), int(d)) for (i, j), d in zip(pairs.tolist(), bits, strict=True)]


def _colour_check(limits: ColourLimits) -> Any:
    """The Spark task adding :func:`colour_diffs` to the verified pairs (``a, b, bits, ta, tb``) that might pass
    ``limits``; the pairs that certainly fail (:func:`~witbuild.dedup.colour_bound.certainly_apart`, most of them)
    are left out. A missing thumbnail counts as infinitely different (the pair stays)."""

    from witbuild.dedup.colour_bound import certainly_apart  # it reads this module's colour constants

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ta, tb = batch.column("ta").to_pylist(), batch.column("tb").to_pylist()
            both = [i for i, (x, y) in enumerate(zip(ta, tb, strict=True)) if x and y]
            apart = certainly_apart([ta[i] for i in both], [tb[i] for i in both], THUMB_SIDE, limits.mean,
                                    limits.tail)
            close = [i for i, far in zip(both, apart.tolist(), strict=True) if not far]
            diffs = colour_diffs([ta[i] for i in close], [tb[i] for i in close])
            rows = pa.array(close, pa.int64())
            yield pa.RecordBatch.from_pydict({"a": batch.column("a").take(rows), "b": batch.column("b").take(rows),
                                              "bits": batch.column("bits").take(rows),
                                              "mean": pa.array([d.mean for d in diffs], pa.float64()),
                                              "tail": pa.array([d.tail for d in diffs], pa.float64())})

    return run


def write_removal_record(spark: Any, removals: list[Removal], samples: Any, path: str, final_keys: Any) -> None:
    """Write the ``near_duplicates`` table (schemas/near_duplicates.json) to folder ``path``: one row per
    removal, the removed sample, the kept one it duplicates, the two distances and whether that kept sample is in
    the final dataset (``final_keys``, a DataFrame of its ``key`` s: a step after dedup, the CLIP-score filter,
    may drop it), sorted by key, one file.

    ``samples`` (Spark) holds both sides' url, text, shard. No removal: the empty table is written from the
    driver, without a Spark job (most small builds)."""
    from pyspark.sql import functions as F

    from witbuild import schemas
    from witbuild.layout import SUCCESS_FILE
    from witbuild.spark import fs_and_path

    table = schemas.load("near_duplicates")
    if not removals:
        fs, folder = fs_and_path(path)
        fs.makedirs(folder, exist_ok=True)
        with fs.open(f"{folder}/part-00000.parquet", "wb") as fh:
            pq.write_table(table.empty_table(), fh)
        fs.touch(f"{folder}/{SUCCESS_FILE}")
        return
    # an Arrow table goes to the JVM as it is; a list of tuples would be a Python RDD, a Python task to read it
    pairs = spark.createDataFrame(pa.table({
        "key": pa.array([r.key for r in removals], pa.string()),
        "duplicate_of": pa.array([r.duplicate_of for r in removals], pa.string()),
        "phash_distance": pa.array([r.phash_distance for r in removals], pa.int32()),
        "colour_mean": pa.array([r.colour.mean if r.colour else None for r in removals], pa.float64()),
        "colour_tail": pa.array([r.colour.tail if r.colour else None for r in removals], pa.float64())}))
    small = _hint(len(removals))
    info = samples.select("key", "shard", "url", "text", "phash").join(small(pairs), "key")
    kept = samples.select(F.col("key").alias("duplicate_of"), F.col("shard").alias("duplicate_of_shard"),
                          F.col("url").alias("duplicate_of_url"))
    counterparts = kept.join(small(info), "duplicate_of")
    in_dataset = final_keys.select(F.col("key").alias("duplicate_of"), F.lit(True).alias("_in")).distinct()
    record = (counterparts.join(in_dataset, "duplicate_of", "left")
              .withColumn("duplicate_of_in_dataset", F.coalesce(F.col("_in"), F.lit(False))).select(*table.names))
    # one shuffled partition: coalesce(1) would run the joins above it in a single task too
    record.repartition(1).sortWithinPartitions("key").write.mode("overwrite").parquet(path)
