"""Near-duplicate verdicts on real images: copies removed, colour variants and distinct drawings kept, no chains."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from witbuild.dedup.near import (
    DEFAULT_MAX_COLOUR_DELTA,
    MAX_REPEATS,
    choose_representatives,
    colour_delta,
    find_removals,
    image_signature,
    occurrence_pairs,
    thumbnail,
)
from witbuild.dedup.phash import phash64
from witbuild.dedup.urls import DedupConfig
from witbuild.demo.dup_pairs import COPY_KINDS, labelled_pairs
from witbuild.demo.images import draw_shapes, encode

THRESHOLD = DedupConfig().phash_threshold


@pytest.fixture(scope="module")
def pairs():
    """30 pairs per kind; the drawn negatives mined within the pHash threshold (the ones pHash alone removes)."""
    return labelled_pairs(30, seed=3, photos=False, hard_within=THRESHOLD, max_tries=100)


def _signatures(data: list[bytes]) -> tuple[list[int], list[bytes]]:
    sigs = [image_signature(d) for d in data]
    assert all(s is not None for s in sigs)
    return [s[0] for s in sigs], [s[1] for s in sigs]  # type: ignore[index]


def test_config_defaults() -> None:
    cfg = DedupConfig()
    assert cfg.colour_check and cfg.colour_max_delta == DEFAULT_MAX_COLOUR_DELTA
    with pytest.raises(ValueError):
        DedupConfig(colour_max_delta=0)


def test_signature_is_one_decode_of_phash_and_thumbnail() -> None:
    img = draw_shapes("star", "red", 1)
    h, thumb = image_signature(encode(img, "png"))  # type: ignore[misc]
    assert h == phash64(img) and thumb == thumbnail(img) and len(thumb) == 16 * 16 * 3
    assert image_signature(b"not an image") is None
    assert colour_delta(thumb, thumb) == 0.0


def _verdicts(pairs, max_colour_delta: float | None = DEFAULT_MAX_COLOUR_DELTA) -> list[bool]:
    """Per pair, on its own: does the step remove b as a near duplicate of a?"""
    out = []
    for p in pairs:
        hashes, thumbs = _signatures([p.a, p.b])
        removed = find_removals(["a", "b"], hashes, thumbs, THRESHOLD, max_colour_delta=max_colour_delta)
        assert [(r.key, r.duplicate_of) for r in removed] in ([], [("b", "a")])
        out.append(bool(removed))
    return out


def test_every_kind_of_copy_is_removed(pairs) -> None:
    """Each copy that pHash finds is removed: the check rejects none (pHash's own misses, mostly 3-5% crops, are
    not the check's to recover); and some copies of every kind are found."""
    copies = [p for p in pairs if p.duplicate]
    assert {p.kind for p in copies} == set(COPY_KINDS)
    by_phash, checked = _verdicts(copies, None), _verdicts(copies)
    assert checked == by_phash
    assert {p.kind for p, removed in zip(copies, checked, strict=True) if removed} == set(COPY_KINDS)


def test_colour_variants_and_distinct_drawings_kept(pairs) -> None:
    """Measured on these 30 + 30 mined pairs (all within 4 pHash bits, so pHash alone removes every one):
    colour variants' delta 8.8..102, every one kept; distinct single-shape drawings 0.97..30.3, 17 of 30 above
    the default 4.0 (the copies pHash finds here: ≤ 3.47). The bound leaves room for a few pairs to cross the
    threshold with another Pillow or libjpeg."""
    kept = {}
    for kind in ("colour_variant", "distinct_drawing"):
        negatives = [p for p in pairs if p.kind == kind]
        assert len(negatives) == 30, kind
        assert all(_verdicts(negatives, None))
        kept[kind] = sum(not removed for removed in _verdicts(negatives))
    assert kept["colour_variant"] == 30
    assert kept["distinct_drawing"] >= 13, kept


def test_chain_keeps_the_far_end() -> None:
    """A~B and B~C within the threshold, A and C 8 bits apart: B goes (as a duplicate of A), A and C stay."""
    thumb = thumbnail(draw_shapes("heart", "green", 1))
    a = 0x0F0F_3C3C_5A5A_9999
    b, c = a ^ 0xF, a ^ 0xFF  # 4 and 8 bits from a, 4 from each other
    removed = find_removals(["A", "B", "C"], [a, b, c], [thumb] * 3, THRESHOLD)
    assert [(r.key, r.duplicate_of, r.phash_distance) for r in removed] == [("B", "A", 4)]
    edges = [("A", "B", 4, 1.0), ("B", "C", 4, 1.0), ("C", "D", 2, 1.0), ("D", "E", 1, 1.0)]
    got = [(r.key, r.duplicate_of) for r in choose_representatives(edges)]
    assert got == [("B", "A"), ("D", "C")]  # E's only neighbour D was removed: E stays


def test_colour_check_applies_to_identical_hashes() -> None:
    """Identical pHashes, other colours: the red one is no duplicate of the blue one; the second red one is."""
    red = draw_shapes("circle", "red", 1, "white", 7)
    arr = np.array(red)
    arr[(arr == (220, 30, 30)).all(-1)] = (30, 70, 220)
    blue = Image.fromarray(arr)
    h = phash64(red)
    assert phash64(blue) == h
    removed = find_removals(["0", "1", "2"], [h, h, h], [thumbnail(blue), thumbnail(red), thumbnail(red)], THRESHOLD)
    assert [(r.key, r.duplicate_of) for r in removed] == [("2", "1")]


def test_repeated_hashes_are_capped() -> None:
    n = MAX_REPEATS + 10
    pairs = occurrence_pairs(np.zeros(n, dtype=np.uint64), THRESHOLD)
    assert len(pairs) == MAX_REPEATS * (MAX_REPEATS - 1) // 2 + 10


def test_same_input_same_output(pairs) -> None:
    data = [d for p in pairs for d in (p.a, p.b)]
    keys = [f"k{i:05d}" for i in range(len(data))]
    hashes, thumbs = _signatures(data)
    first = find_removals(keys, hashes, thumbs, THRESHOLD)
    order = list(range(len(keys)))
    random.Random(1).shuffle(order)
    again = find_removals([keys[i] for i in order], [hashes[i] for i in order], [thumbs[i] for i in order], THRESHOLD)
    assert again == first and first
    kept = set(keys) - {r.key for r in first}
    assert all(r.duplicate_of in kept for r in first)  # every removal names a kept sample


def test_signature_survives_odd_modes() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buf, "PNG")  # fully transparent: white on a page
    _, thumb = image_signature(buf.getvalue())  # type: ignore[misc]
    assert set(thumb) == {255}
