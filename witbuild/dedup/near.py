"""Near-duplicate verdicts: a colour check on pHash candidate pairs, and representatives without chains.

pHash sees grey levels only and its 4-bit neighbourhood is wide for simple graphics: a red and a blue star of
one outline hash alike, and so do many distinct icons on plain backgrounds. Two rules make a removal safe:

1. **A second, independent check** on every pair the LSH verified (never on all pairs): the mean CIELAB colour
   difference (ΔE) of the two images' 16×16 thumbnails, each pixel compared with the closest of the 3×3
   neighbouring pixels of the other thumbnail (a 1-5% crop moves content by under one thumbnail pixel) after one
   brightness gain (a brighter copy is still a copy). Copies (resized, re-encoded, PNG↔JPEG, cropped,
   brightened) measure ≤ 3.2, colour variants of one outline ≥ 7 (``benchmarks/bench_dedup.py``).
2. **No chained removals**: in a stable order (smallest key first) each sample not yet removed is kept and
   removes its near duplicates that are not yet decided. Every removed sample is thus within the thresholds of
   the kept sample it is recorded against; in a chain A~B~C with C far from A, A and C stay.

The thumbnail is computed when finalize decodes an image for its pHash (one decode, ~0.15 ms more per image);
the comparison runs only on verified candidate pairs.
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

from witbuild.dedup.phash import as_uint64, hamming_array, hashable_image, near_duplicate_pairs, phash64

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

THUMB_SIDE = 16  # thumbnail side in pixels: 768 bytes of RGB per image
THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
MAX_REPEATS = 64  # items of one hash value checked pairwise (see occurrence_pairs)
DEFAULT_MAX_COLOUR_DELTA = 4.0  # mean ΔE; see DedupConfig.colour_max_delta for the measured spread

_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def thumbnail(image: Image.Image) -> bytes:
    """16×16 RGB thumbnail (area average) of the image as :func:`~witbuild.dedup.phash.phash64` sees it."""
    from PIL import Image

    small = hashable_image(image).convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return small.tobytes()


def image_signature(data: bytes) -> tuple[int, bytes] | None:
    """(pHash, thumbnail) of encoded image bytes from one decode; None when Pillow cannot decode them.

    Never raises: one bad download must not fail a Spark task."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            seen = hashable_image(im)  # converted once: both functions take L/RGB as they are
            return phash64(seen), thumbnail(seen)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        log.debug("image_signature: undecodable image: %s: %s", type(exc).__name__, exc)
        return None


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, float) to CIELAB (D65): distances there follow perceived colour differences."""
    c = np.clip(rgb / 255.0, 0.0, 1.0)
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ _SRGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack((116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])), -1)


def _nearest_neighbour_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel of ``a``: the smallest ΔE to the 3×3 neighbourhood of the same pixel in ``b``."""
    s = a.shape[0]
    padded = np.pad(b, ((1, 1), (1, 1), (0, 0)), mode="edge")
    best = np.full(a.shape[:2], np.inf)
    for dy in range(3):
        for dx in range(3):
            best = np.minimum(best, np.linalg.norm(a - padded[dy : dy + s, dx : dx + s], axis=-1))
    return best


def colour_delta(thumb_a: bytes, thumb_b: bytes) -> float:
    """Mean shift-tolerant CIELAB ΔE between two :func:`thumbnail` s (0: same picture; see the module docstring).

    ``a`` is first scaled by the one gain that best matches ``b`` (least squares), so a uniform brightness
    change costs nothing while a change of hue does. Symmetric: the two are taken in byte order, and the
    result is the larger of the two directions."""
    if thumb_a > thumb_b:
        thumb_a, thumb_b = thumb_b, thumb_a
    a = np.frombuffer(thumb_a, dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE, 3).astype(np.float64)
    b = np.frombuffer(thumb_b, dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE, 3).astype(np.float64)
    gain = float((a * b).sum() / max(float((a * a).sum()), 1e-9))
    la, lb = _lab(a * gain), _lab(b)
    return float(max(_nearest_neighbour_delta(la, lb).mean(), _nearest_neighbour_delta(lb, la).mean()))


@dataclass(frozen=True)
class Removal:
    """A removed near duplicate and the kept sample it duplicates."""

    key: str
    duplicate_of: str
    phash_distance: int
    colour_delta: float | None  # None when the colour check is off


def choose_representatives(edges: Iterable[tuple[str, str, int, float | None]]) -> list[Removal]:
    """Greedy, chain-free removals from verified near-duplicate pairs ``(key_a, key_b, bits, delta)``.

    Keys are visited in sorted order; a key not removed yet is kept and removes every not-yet-removed neighbour
    with a larger key. So each removal names a kept neighbour, and the result does not depend on input order.
    Returned sorted by key."""
    unique = {(min(a, b), max(a, b)): (bits, delta) for a, b, bits, delta in edges if a != b}
    adjacent: dict[str, list[tuple[str, int, float | None]]] = {}
    for (a, b), (bits, delta) in sorted(unique.items()):
        adjacent.setdefault(a, []).append((b, bits, delta))
        adjacent.setdefault(b, []).append((a, bits, delta))
    removed: dict[str, Removal] = {}
    for key in sorted(adjacent):
        if key in removed:
            continue
        for other, bits, delta in sorted(adjacent[key]):
            if other > key and other not in removed:
                removed[other] = Removal(other, key, bits, delta)
    return [removed[k] for k in sorted(removed)]


def occurrence_pairs(hashes: Any, threshold: int, bands: int | None = None) -> np.ndarray:
    """``(m, 2)`` pairs ``(i, j)``, i < j, of items within ``threshold`` bits, between every occurrence.

    :func:`~witbuild.dedup.phash.near_duplicate_pairs` pairs only the first occurrences of two hash values (and
    each repeat with its first): enough for groups, not for a second check, which may reject the first pair and
    accept another. Values repeated more than ``MAX_REPEATS`` times are expanded through their first
    ``MAX_REPEATS`` items only (the rest keep the star to the first): blank images must not cost k² checks."""
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
                  max_colour_delta: float | None = DEFAULT_MAX_COLOUR_DELTA) -> list[Removal]:
    """:func:`near_duplicate_removals` in one process, for tests and benchmarks: the same verdicts on a list.

    ``hashes``: pHashes (either sign convention); ``thumbs``: :func:`thumbnail` s; keys must be distinct."""
    if not len(keys) == len(thumbs) == np.asarray(hashes).size:
        raise ValueError(f"{len(keys)} keys, {np.asarray(hashes).size} hashes, {len(thumbs)} thumbnails")
    h = as_uint64(hashes).ravel()
    edges = []
    for i, j in occurrence_pairs(h, threshold, bands).tolist():
        delta = None if max_colour_delta is None else colour_delta(thumbs[i], thumbs[j])
        if delta is None or delta <= max_colour_delta:
            edges.append((keys[i], keys[j], int(hamming_array(h[i], h[j])), delta))
    return choose_representatives(edges)


def near_duplicate_removals(df: Any, threshold: int, bands: int, max_colour_delta: float | None) -> list[Removal]:
    """Removals among the rows of Spark DataFrame ``df`` (``key``, ``_phash`` signed, ``_thumb``).

    Banded LSH in Spark: one row per (band, band value), buckets verified by Hamming distance
    (:func:`~witbuild.dedup.phash.near_duplicate_pairs`); the verified pairs are joined to both thumbnails and
    colour-checked in Spark; only the pairs that pass travel to the driver, which chooses representatives.
    ``max_colour_delta`` None: pHash alone decides (no colour check)."""
    from pyspark.sql import functions as F

    shift = [64 * i // bands for i in range(bands + 1)]
    parts = []
    for i in range(bands):
        width = shift[i + 1] - shift[i]
        band = F.shiftrightunsigned("_phash", 64 - shift[i + 1]).bitwiseAND(F.lit((1 << width) - 1))
        parts.append(df.select("key", "_phash", F.lit(i).alias("band"), band.alias("value")))
    banded = parts[0]
    for p in parts[1:]:
        banded = banded.unionByName(p)
    buckets = (banded.groupBy("band", "value").agg(F.collect_list(F.struct("key", "_phash")).alias("members"))
               .filter(F.size("members") > 1).select("members"))
    pairs = buckets.mapInArrow(_bucket_pairs(threshold, bands), "a string, b string, bits int")
    pairs = pairs.groupBy("a", "b").agg(F.min("bits").alias("bits"))  # a pair found in several bands
    if max_colour_delta is None:
        return choose_representatives((r["a"], r["b"], int(r["bits"]), None) for r in pairs.collect())
    thumbs = df.select("key", "_thumb")
    joined = (pairs.join(thumbs.withColumnRenamed("key", "a").withColumnRenamed("_thumb", "ta"), "a")
              .join(thumbs.withColumnRenamed("key", "b").withColumnRenamed("_thumb", "tb"), "b")
              .select("a", "b", "bits", "ta", "tb"))
    checked = joined.mapInArrow(_colour_check, "a string, b string, bits int, delta double")
    passed = checked.filter(F.col("delta") <= F.lit(float(max_colour_delta))).collect()
    return choose_representatives((r["a"], r["b"], int(r["bits"]), float(r["delta"])) for r in passed)


def _bucket_pairs(threshold: int, bands: int) -> Any:
    """The Spark task verifying one LSH bucket per input row: its pairs within ``threshold`` bits, a < b."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            a_out: list[str] = []
            b_out: list[str] = []
            d_out: list[int] = []
            for members in batch.column(0).to_pylist():
                keys = [m["key"] for m in members]
                hashes = as_uint64(np.array([m["_phash"] for m in members], dtype=np.int64))
                for i, j in occurrence_pairs(hashes, threshold, bands).tolist():
                    a, b = sorted((keys[int(i)], keys[int(j)]))
                    a_out.append(a)
                    b_out.append(b)
                    d_out.append(int(hamming_array(hashes[i], hashes[j])))
            yield pa.RecordBatch.from_pydict({"a": a_out, "b": b_out, "bits": pa.array(d_out, pa.int32())})

    return run


def _colour_check(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The Spark task adding :func:`colour_delta` to each verified pair (``a, b, bits, ta, tb``)."""
    for batch in batches:
        ta, tb = batch.column("ta").to_pylist(), batch.column("tb").to_pylist()
        deltas = [colour_delta(x, y) if x and y else float("inf") for x, y in zip(ta, tb, strict=True)]
        yield pa.RecordBatch.from_pydict({"a": batch.column("a"), "b": batch.column("b"), "bits": batch.column("bits"),
                                          "delta": pa.array(deltas, pa.float64())})


def removal_record(spark: Any, removals: list[Removal], samples: Any) -> Any:
    """The ``near_duplicates`` table (schemas/near_duplicates.json) as a Spark DataFrame, one row per removal:
    the removed sample, the kept one it duplicates and the two distances; ``samples`` holds both."""
    from pyspark.sql import functions as F

    from witbuild import schemas

    rows = [(r.key, r.duplicate_of, r.phash_distance, r.colour_delta) for r in removals]
    pairs = spark.createDataFrame(rows, "key string, duplicate_of string, phash_distance int, colour_delta double")
    info = samples.select("key", "shard", "url", "text", "phash")
    kept = samples.select(F.col("key").alias("duplicate_of"), F.col("shard").alias("duplicate_of_shard"),
                          F.col("url").alias("duplicate_of_url"))
    return pairs.join(info, "key").join(kept, "duplicate_of").select(*schemas.load("near_duplicates").names)
