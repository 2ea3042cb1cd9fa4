"""Which candidate pairs certainly fail the colour check, found cheaply, so that the exact check
(:func:`witbuild.dedup.near.colour_diffs`, numpy) runs only on the others.

Most pHash-near pairs of simple graphics are recoloured copies, far from passing (on the 100k benchmark web,
94% of 391,000 candidate pairs fail, half of them with a mean ΔE above 59 against a limit of 5). This module
computes the same per-pixel ΔE as ``colour_diffs`` (the same gain, the same CIELAB, the same 3×3 neighbourhoods,
in float64) and stops as soon as the pixels seen so far prove that the pair fails:

- the mean of a direction exceeds its limit once the sum of the pixels seen, divided by all pixels, does (every
  pixel's ΔE is ≥ 0, so the pixels not seen can only add);
- the 95th percentile (linear interpolation) exceeds its limit once more pixels than the top 5% exceed it.

It goes one direction first: the pixels of the thumbnail that gets the gain, in a spread order, each against
the other's 3×3 neighbourhood. The exact check takes the larger of the two directions (for the mean, and per
pixel for the percentile), so one direction bounds it, and each pixel costs one CIELAB conversion: the other
thumbnail's CIELAB does not depend on the pair and is computed once per distinct image. A pair this does not
stop has all its CIELAB by then; the other direction and the per-pixel maximum then cost only distances, so
the verdicts are those of checking both directions pixel by pixel (at 100k, 17 µs a pair against 31 for the
two directions at once; the same rejections on 200,000 real pairs).

Most of the cost is the six powers and roots of a pixel's CIELAB under the pair's gain. A drawing repeats a few
colours, so a pair remembers the CIELAB of the colours it has met; the gain's numerator is an integer dot
product, its denominator computed once per image; and the bounds are tested at every pixel. On the 770,000
candidate pairs of the 100k benchmark web (one process): 7.9 → 3.7 µs a pair, the same verdicts; the 4.5% of
pairs it cannot reject (nearly all of which pass) cost ~43 µs each, most of the rest.

A pair is rejected only when a bound exceeds the limit by ``MARGIN``, far more than the rounding that separates
this loop from numpy's vectorised arithmetic, so every pair the exact check would pass reaches it, and the
verdicts and recorded values are those of ``colour_diffs`` alone (tested on random and real pairs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from witbuild.dedup.near import _LINEAR, _XYZ_OVER_WHITE

_M = np.ascontiguousarray(_XYZ_OVER_WHITE)  # linear RGB row @ _M = XYZ / white (a transposed view there)

MARGIN = 1e-6  # ΔE; the loop and numpy differ by ~1e-12 on values of at most a few hundred
MEMO_SLOTS = 64  # colours of one pair whose CIELAB is remembered (a power of two)

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency of the download extra
    numba = None


def certainly_apart(thumbs_a: Sequence[bytes], thumbs_b: Sequence[bytes], side: int, max_mean: float,
                    max_tail: float, tail_q: float = 95.0) -> np.ndarray:
    """Per pair, True when its colour difference certainly exceeds ``max_mean`` or ``max_tail``.

    Thumbnails are ``side``×``side`` RGB bytes; each pair is ordered as ``colour_diffs`` orders it (the smaller
    bytes get the gain). All False when numba is missing (the exact check then sees every pair)."""
    n = len(thumbs_a)
    if numba is None or n == 0:
        return np.zeros(n, dtype=bool)
    distinct: dict[bytes, int] = {}
    firsts = np.fromiter((distinct.setdefault(min(x, y), len(distinct)) for x, y in zip(thumbs_a, thumbs_b,
                                                                                       strict=True)), np.int64, n)
    seconds = np.fromiter((distinct.setdefault(max(x, y), len(distinct)) for x, y in zip(thumbs_a, thumbs_b,
                                                                                        strict=True)), np.int64, n)
    thumbs = np.frombuffer(b"".join(distinct), dtype=np.uint8).reshape(len(distinct), side * side * 3)
    return certainly_apart_rows(thumbs, firsts, seconds, side, max_mean, max_tail, tail_q)


def certainly_apart_rows(thumbs: np.ndarray, firsts: np.ndarray, seconds: np.ndarray, side: int, max_mean: float,
                         max_tail: float, tail_q: float = 95.0) -> np.ndarray:
    """:func:`certainly_apart` of the pairs ``(thumbs[firsts[i]], thumbs[seconds[i]])``, each already ordered
    (``firsts[i]``'s bytes ≤ ``seconds[i]``'s). ``thumbs``: one row of RGB bytes per distinct image, so a task
    holds each thumbnail once however many pairs name it."""
    n = len(firsts)
    if numba is None or n == 0:
        return np.zeros(n, dtype=bool)
    # one type for every caller: numba compiles (and caches) per argument type, a read-only array being one of its
    # own, so what warm_up compiled ahead is what the tasks load
    images, firsts, seconds = (_read_only(a, t) for a, t in ((thumbs, np.uint8), (firsts, np.int64),
                                                              (seconds, np.int64)))
    images = images.reshape(len(thumbs), side, side, 3)
    # the second thumbnail of a pair has no gain: its CIELAB is the image's own, computed once per distinct image
    labs = _labs(images.reshape(len(thumbs), side * side, 3))
    pixels = side * side
    above = pixels - math.floor(tail_q / 100.0 * (pixels - 1))  # this many values above x: the percentile is too
    out = np.zeros(n, dtype=bool)
    _apart(images, firsts, seconds, labs, _spread_order(side),
           max_mean + MARGIN, max_tail + MARGIN, above, out)
    return out


def _read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    """A C-contiguous, read-only view (a copy only where the type or layout differ)."""
    out = np.ascontiguousarray(array, dtype=dtype).view()
    out.flags.writeable = False
    return out


def warm_up() -> None:
    """Compile the loops (or load them from numba's cache): run ahead in the build's driver, so that the colour
    check's tasks load the cached machine code (~0.2 s) instead of each compiling it at once (~3 s of a core
    each, and ~1 GB of LLVM's memory, the first time a checkout runs them)."""
    thumbs = np.zeros((2, 4 * 4 * 3), np.uint8)
    certainly_apart_rows(thumbs, np.array([0]), np.array([1]), 4, 5.0, 20.0)


def _spread_order(side: int) -> np.ndarray:
    """Pixel indices in an order that samples the whole thumbnail early (bit-reversed rows and columns)."""
    bits = max(1, (side - 1).bit_length())
    rev = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(1 << bits)]
    rows = [r for r in rev if r < side]
    return np.array([y * side + x for y in rows for x in rows], dtype=np.int64)


def _lab_of(r: float, g: float, b: float, out: np.ndarray, i: int) -> None:
    """CIELAB (D65) of linear RGB into ``out[i]``: ``near._lab``'s arithmetic, one pixel."""
    r, g, b = min(r, 1.0), min(g, 1.0), min(b, 1.0)
    fx = fy = fz = 0.0
    for k in range(3):
        t = r * _M[0, k] + g * _M[1, k] + b * _M[2, k]
        f = np.cbrt(t) if t > 0.008856 else 7.787 * t + 16.0 / 116.0
        if k == 0:
            fx = f
        elif k == 1:
            fy = f
        else:
            fz = f
    out[i, 0] = 116.0 * fy - 16.0
    out[i, 1] = 500.0 * fx - 500.0 * fy
    out[i, 2] = 200.0 * fy - 200.0 * fz


def _labs(images: np.ndarray) -> np.ndarray:
    """CIELAB of every pixel of ``(m, pixels, 3)`` sRGB bytes, as ``_lab_of`` computes it (the loop's numbers)."""
    out = np.empty(images.shape)
    for i in range(images.shape[0]):
        for p in range(images.shape[1]):
            r, g, b = images[i, p, 0], images[i, p, 1], images[i, p, 2]
            if p and r == images[i, p - 1, 0] and g == images[i, p - 1, 1] and b == images[i, p - 1, 2]:
                out[i, p] = out[i, p - 1]  # a run of one colour (a drawing's background): the same numbers
            else:
                _lab_of(_LINEAR[r], _LINEAR[g], _LINEAR[b], out[i], p)
    return out


def _gained_linear(v: float, gain: float) -> float:
    x = min(v * gain, 255.0) / 255.0
    return ((x + 0.055) / 1.055) ** 2.4 if x > 0.04045 else x / 12.92


def _dot(pa_: np.ndarray, pb_: np.ndarray) -> int:
    """Σ a·b over the bytes of two thumbnails, in integers: exactly the float64 sum ``colour_diffs`` forms (every
    partial sum is an integer below 2**53), at a fraction of its cost (the loop vectorises)."""
    total = 0
    for i in range(pa_.shape[0]):
        total += np.int64(pa_[i]) * np.int64(pb_[i])
    return total


def _gain(dot_ab: int, dot_aa: int) -> float:
    """``colour_diffs``' least-squares gain of ``a`` towards ``b``; ``dot_aa`` is per image, ``dot_ab`` per pair."""
    return float(dot_ab) / max(float(dot_aa), 1e-9)


def _nearest_sq(colour: np.ndarray, grid: np.ndarray, py: int, px: int, side: int) -> float:
    """The smallest squared CIELAB distance from ``colour`` to the pixels of ``grid`` (``(pixels, 3)``) in the 3×3
    neighbourhood of (py, px)."""
    best = np.inf
    for qy in range(max(0, py - 1), min(side, py + 2)):
        for qx in range(max(0, px - 1), min(side, px + 2)):
            q = qy * side + qx
            d0, d1, d2 = grid[q, 0] - colour[0], grid[q, 1] - colour[1], grid[q, 2] - colour[2]
            best = min(best, d0 * d0 + d1 * d1 + d2 * d2)
    return best


def _pair_apart(a: np.ndarray, lab_b: np.ndarray, gain: float, order: np.ndarray, max_mean: float,
                max_tail: float, above: int, lab_a: np.ndarray, d_ab: np.ndarray, memo: np.ndarray,
                pair: int) -> bool:
    """One pair's proof. First one direction, pixels of ``a`` (with its gain) in ``order`` against ``b``'s 3×3
    neighbourhoods (``lab_b`` given: one CIELAB a pixel): the exact check takes the larger of the two directions
    for the mean and per pixel, so this direction alone bounds it, and stops most pairs within a few dozen
    pixels. A pair it cannot stop has all of ``a``'s CIELAB by then, so the other direction, and each pixel's
    larger ΔE, cost only distances.

    ``memo`` (``MEMO_SLOTS`` rows of pair, colour, pixel) remembers which pixel of this pair (rows of another
    pair are stale) already has a colour's CIELAB: a drawing repeats a few colours, and a pixel whose colour is
    there copies it instead of six powers and roots (the same numbers)."""
    side = a.shape[0]
    pixels = side * side
    total = 0.0
    over = 0
    for step in range(pixels):
        p = order[step]
        py, px = p // side, p % side
        colour = (int(a[py, px, 0]) << 16) | (int(a[py, px, 1]) << 8) | int(a[py, px, 2])
        slot = ((colour * 2654435761) >> 20) & (MEMO_SLOTS - 1)
        if memo[slot, 0] == pair and memo[slot, 1] == colour:
            q = memo[slot, 2]
            lab_a[p, 0], lab_a[p, 1], lab_a[p, 2] = lab_a[q, 0], lab_a[q, 1], lab_a[q, 2]
        else:
            _lab_of(_gained_linear(float(a[py, px, 0]), gain), _gained_linear(float(a[py, px, 1]), gain),
                    _gained_linear(float(a[py, px, 2]), gain), lab_a, p)
            memo[slot, 0], memo[slot, 1], memo[slot, 2] = pair, colour, p
        d_ab[p] = math.sqrt(_nearest_sq(lab_a[p], lab_b, py, px, side))
        total += d_ab[p]
        over += d_ab[p] > max_tail
        if total > max_mean * pixels or over >= above:
            return True
    total = 0.0
    over = 0
    for p in range(pixels):
        py, px = p // side, p % side
        d_ba = math.sqrt(_nearest_sq(lab_b[p], lab_a, py, px, side))
        total += d_ba
        over += max(d_ab[p], d_ba) > max_tail
    return total > max_mean * pixels or over >= above


def _apart_py(images: np.ndarray, firsts: np.ndarray, seconds: np.ndarray, labs: np.ndarray, order: np.ndarray,
              max_mean: float, max_tail: float, above: int, out: np.ndarray) -> None:
    """The loop numba compiles (plain Python: readable, and testable without numba)."""
    pixels = images.shape[1] * images.shape[2]
    lab_a = np.empty((pixels, 3))
    d_ab = np.empty(pixels)
    flat = images.reshape(images.shape[0], pixels * 3)
    memo = np.full((MEMO_SLOTS, 3), -1, np.int64)
    squares = np.empty(images.shape[0], np.int64)  # Σ a·a: the gain's denominator, once per image
    for i in range(images.shape[0]):
        squares[i] = _dot(flat[i], flat[i])
    for pair in range(firsts.shape[0]):
        first, second = firsts[pair], seconds[pair]
        gain = _gain(_dot(flat[first], flat[second]), squares[first])
        out[pair] = _pair_apart(images[first], labs[second], gain, order, max_mean, max_tail, above, lab_a, d_ab,
                                memo, pair)


if numba is not None:
    _inline = numba.njit(cache=True, nogil=True, inline="always")  # numba's calls between functions cost 2×
    _lab_of, _gained_linear, _gain, _dot = _inline(_lab_of), _inline(_gained_linear), _inline(_gain), _inline(_dot)
    _nearest_sq, _pair_apart = _inline(_nearest_sq), _inline(_pair_apart)
    _labs = numba.njit(cache=True, nogil=True)(_labs)
    _apart = numba.njit(cache=True, nogil=True)(_apart_py)
else:  # pragma: no cover
    _apart = _apart_py
