"""Precision and recall of the near-duplicate step on generated labelled pairs, and its per-image cost.

Used by ``bench_dedup.py``. "Before" is pHash alone (within the threshold, groups by transitive closure, the
smallest key kept); "after" is pHash plus the colour check with chain-free representatives
(:mod:`witbuild.dedup.near`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np

from witbuild.dedup import near, phash
from witbuild.demo.dup_pairs import COPY_KINDS, LabelledPair, labelled_pairs


def pair_verdicts(pairs: list[LabelledPair], threshold: int, limits: near.ColourLimits) -> list[dict[str, Any]]:
    """Per pair, on its own: pHash distance, colour difference, and whether each method removes one image."""
    out = []
    for p in pairs:
        (ha, ta), (hb, tb) = near.image_signature(p.a), near.image_signature(p.b)  # type: ignore[misc]
        bits = phash.hamming(ha, hb)
        diff = near.colour_diff(ta, tb)
        out.append({"kind": p.kind, "duplicate": p.duplicate, "bits": bits, "mean": diff.mean, "tail": diff.tail,
                    "before": bits <= threshold, "after": bits <= threshold and limits.allows(diff)})
    return out


def precision_recall(rows: list[dict[str, Any]], method: str) -> tuple[float, float, int, int, int]:
    """(precision, recall, true positives, false positives, false negatives) of one method's verdicts."""
    tp = sum(r[method] and r["duplicate"] for r in rows)
    fp = sum(r[method] and not r["duplicate"] for r in rows)
    fn = sum(not r[method] and r["duplicate"] for r in rows)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), tp, fp, fn


def set_level(pairs: list[LabelledPair], threshold: int, limits: near.ColourLimits) -> dict[str, Any]:
    """All images of all pairs in one set, deduplicated by each method: how many removals leave no image of the
    same original in the dataset (colour variants, distinct drawings, chains: the images a caption is lost with).
    """
    keys, origin, data = [], [], []
    for i, p in enumerate(pairs):
        for side, blob in (("a", p.a), ("b", p.b)):
            keys.append(f"{i:05d}{side}")
            origin.append(p.name if p.duplicate else f"{p.name}/{side}")
            data.append(blob)
    sigs = [near.image_signature(d) for d in data]
    hashes = np.array([s[0] for s in sigs], dtype=np.uint64)  # type: ignore[index]
    thumbs = [s[1] for s in sigs]  # type: ignore[index]
    labels = phash.near_duplicate_groups(hashes, threshold)
    keep_before = phash.keep_smallest_key(keys, labels)
    removals = near.find_removals(keys, hashes, thumbs, threshold, limits=limits)
    removed_after = {r.key for r in removals}
    keep_after = np.array([k not in removed_after for k in keys])
    index = {k: i for i, k in enumerate(keys)}

    def lost(keep: np.ndarray) -> int:  # removed images no image of whose original is kept
        kept_origins = {o for o, k in zip(origin, keep.tolist(), strict=True) if k}
        return sum(not k and o not in kept_origins for o, k in zip(origin, keep.tolist(), strict=True))

    return {"images": len(keys), "removed_before": int((~keep_before).sum()), "lost_before": lost(keep_before),
            "removed_after": len(removals), "lost_after": lost(keep_after),
            "other_picture_after": sum(origin[index[r.key]] != origin[index[r.duplicate_of]] for r in removals)}


def web_like(n: int, seed: int) -> list[bytes]:
    """``n`` images as finalize stores them: the demo's random pictures at 256×192 (JPEG 90), 5% of them
    re-encoded copies of another (JPEG 75): few pHash-near pairs, as on most of the web."""
    from witbuild.demo.images import draw_image, encode

    n_copies = n // 20
    data = [encode(draw_image(seed * 1_000_000 + i, (256, 192)), "jpg", 90) for i in range(n - n_copies)]
    data += [encode(draw_image(seed * 1_000_000 + i, (256, 192)), "jpg", 75) for i in range(n_copies)]
    return data


def throughput(data: list[bytes], threshold: int, limits: near.ColourLimits, repeat: int = 5) -> dict[str, float]:
    """CPU µs per image of finalize's per-image work (decode + pHash, now + thumbnail) and of the near-dup
    verdicts (before: groups + smallest key; after: every occurrence pair + colour check + representatives).

    Before and after run alternately ``repeat`` times and the lowest of each is kept: on a shared machine the
    load changes within seconds, and alternating exposes both to the same."""
    keys = [f"{i:06d}" for i in range(len(data))]
    sigs = [near.image_signature(d) for d in data]
    hashes = np.array([s[0] for s in sigs], dtype=np.uint64)  # type: ignore[index]
    thumbs = [s[1] for s in sigs]  # type: ignore[index]
    runs: dict[str, Any] = {
        "decode_phash_us": lambda: [phash.phash_bytes(d) for d in data],
        "decode_phash_thumb_us": lambda: [near.image_signature(d) for d in data],
        "verdicts_before_us": lambda: phash.near_duplicate_keep_mask(keys, hashes, threshold),
        "verdicts_after_us": lambda: near.find_removals(keys, hashes, thumbs, threshold, limits=limits),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, fn in runs.items():
            t = time.process_time()
            fn()
            best[name] = min(best[name], 1e6 * (time.process_time() - t) / len(data))
    return {"images": len(data), "near_pairs": len(near.occurrence_pairs(hashes, threshold)), **best,
            "per_image_before_us": best["decode_phash_us"] + best["verdicts_before_us"],
            "per_image_after_us": best["decode_phash_thumb_us"] + best["verdicts_after_us"]}


def run(per_kind: int, seed: int, threshold: int, limits: near.ColourLimits) -> dict[str, Any]:
    """Everything above on one generated set, printed; returns the figures."""
    started = time.perf_counter()
    pairs = labelled_pairs(per_kind, seed, hard_within=threshold)
    generated = time.perf_counter() - started
    rows = pair_verdicts(pairs, threshold, limits)
    counts = Counter(r["kind"] for r in rows)
    print(f"labelled pairs: {len(rows):,} ({per_kind} per kind, seed {seed}, generated in {generated:.0f} s); "
          f"drawn negatives mined within {threshold} pHash bits; threshold {threshold} bits, colour ΔE mean "
          f"≤ {limits.mean} and 95th percentile ≤ {limits.tail}\n")
    print(f"{'kind':18} {'label':9} {'pairs':>5} {'removed before':>15} {'removed after':>14} "
          f"{'ΔE mean of pHash-near: min':>27} {'median':>7} {'max':>7} {'ΔE p95: min':>12} {'median':>7} {'max':>7}")
    for kind in (*COPY_KINDS, "colour_variant", "distinct_drawing", "same_scene"):
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        near_rows = [r for r in rs if r["before"]]
        cells = ""
        for stat in ("mean", "tail"):
            v = np.array([r[stat] for r in near_rows])
            q = np.percentile(v, [0, 50, 100]) if v.size else [np.nan] * 3
            cells += f" {q[0]:>{27 if stat == 'mean' else 12}.2f} {q[1]:>7.2f} {q[2]:>7.2f}"
        print(f"{kind:18} {'copy' if rs[0]['duplicate'] else 'distinct':9} {counts[kind]:>5} "
              f"{sum(r['before'] for r in rs):>15} {sum(r['after'] for r in rs):>14}{cells}")
    result: dict[str, Any] = {"per_kind": per_kind, "seed": seed, "threshold": threshold,
                              "colour_max_mean": limits.mean, "colour_max_tail": limits.tail, "kinds": dict(counts)}
    print()
    for method in ("before", "after"):
        p, r, tp, fp, fn = precision_recall(rows, method)
        result[method] = {"precision": p, "recall": r, "tp": tp, "fp": fp, "fn": fn}
        label = "pHash alone" if method == "before" else "pHash + colour check"
        print(f"{method:6} ({label:20}): precision {p:6.1%}  recall {r:6.1%}  (removed copies {tp}, removed "
              f"distinct {fp}, kept copies {fn})")
    s = set_level(pairs, threshold, limits)
    result["set_level"] = s
    print(f"\nall {s['images']:,} images in one set: pHash alone removes {s['removed_before']}, {s['lost_before']} of "
          f"them with no image of their picture left (colour variants, distinct drawings, chains); with the colour "
          f"check {s['removed_after']}, {s['lost_after']} with none left ({s['other_picture_after']} recorded "
          f"against another picture)")
    result["throughput"] = {}
    sets = {"labelled set": [d for p in pairs for d in (p.a, p.b)], "web-like set": web_like(1000, seed)}
    for label, data in sets.items():
        t = throughput(data, threshold, limits)
        result["throughput"][label] = t
        print(f"\nfinalize per-image work on the {label} ({t['images']:,} images, {t['near_pairs']:,} pHash-near "
              f"pairs), CPU µs/image, lowest of 5: decode + pHash {t['decode_phash_us']:.0f} → + thumbnail "
              f"{t['decode_phash_thumb_us']:.0f}; verdicts {t['verdicts_before_us']:.1f} → "
              f"{t['verdicts_after_us']:.1f}; total {t['per_image_before_us']:.0f} → {t['per_image_after_us']:.0f} "
              f"({t['per_image_after_us'] / t['per_image_before_us']:.3f}×)")
    return result
