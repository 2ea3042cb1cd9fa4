"""Sample thumbnails with their captions for the HTML report: what people look at before they read a table.

Groups, each chosen without reading more than the index and the tars that hold the chosen samples:

- a random sample (the keys with the smallest SHA-1: the same samples on every run, spread over the shards);
- the highest and the lowest CLIP scores (a build scored with ``clip_score``): what the filter keeps and drops;
- the most frequent query entry of the final dataset and the rarest ones (head and tail of the balanced list).

The thumbnails are JPEG data URIs (``near_dups``' helper), so the page stays one self-contained file.
"""

from __future__ import annotations

import hashlib
import html
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from witbuild.layout import IMAGE_EXTS, INDEX_DIR, QUERYLIST_DIR, QUERYLIST_ENTRIES
from witbuild.stats.near_dups import _thumbnail_tag

log = logging.getLogger(__name__)

RANDOM = 12  # samples in the random group
EXTREMES = 8  # samples with the highest and with the lowest scores
HEAD_SAMPLES, TAIL_ENTRIES, TAIL_SAMPLES = 6, 3, 2
CAPTION_CHARS = 90
GRID_CSS = ("div.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 0.6em; } "
            "div.grid figure { margin: 0; font-size: 0.8em; } div.grid img { display: block; margin-bottom: 0.2em; }")


def _index(dataset: Path) -> list[dict[str, Any]] | None:
    path = dataset / INDEX_DIR
    if not path.exists():
        return None
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        return None
    names = pq.read_schema(files[0]).names
    columns = [c for c in ("key", "shard", "text", "clip_score", "matched") if c in names]
    if not {"key", "shard"} <= set(columns):
        return None
    return pq.read_table(path, columns=columns).to_pylist()


def _entries(root: Path) -> list[str]:
    path = root / QUERYLIST_DIR / QUERYLIST_ENTRIES
    return path.read_text(encoding="utf-8").split("\n") if path.is_file() else []


def choose(rows: list[dict[str, Any]], entries: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, samples) of each group; pure, so the choice is tested without images."""
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    by_hash = sorted(rows, key=lambda r: hashlib.sha1(r["key"].encode()).hexdigest())
    groups.append(("A random sample", by_hash[:RANDOM]))
    scored = sorted((r for r in rows if r.get("clip_score") is not None), key=lambda r: (-r["clip_score"], r["key"]))
    if scored:
        groups.append(("Highest CLIP scores", scored[:EXTREMES]))
        groups.append(("Lowest CLIP scores", scored[::-1][:EXTREMES]))
    counts = Counter(e for r in rows for e in (r.get("matched") or []))
    if counts:
        def name(e: int) -> str:
            return repr(entries[e]) if 0 <= e < len(entries) else f"entry {e}"

        head, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        groups.append((f"Head query entry {name(head)} ({n:,} samples)",
                       [r for r in rows if head in (r.get("matched") or [])][:HEAD_SAMPLES]))
        tail = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:TAIL_ENTRIES]
        picks = [r for e, _ in tail for r in [r for r in rows if e in (r.get("matched") or [])][:TAIL_SAMPLES]]
        groups.append((f"Tail query entries {', '.join(f'{name(e)} ({c})' for e, c in tail)}", picks))
    return [(title, samples) for title, samples in groups if samples]


def _images(dataset: Path, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """The image bytes of the (shard, key) pairs, each tar read once as a stream."""
    out: dict[tuple[str, str], bytes] = {}
    for shard in sorted({s for s, _ in wanted}):
        keys = {k for s, k in wanted if s == shard}
        try:
            with tarfile.open(dataset / shard, mode="r|*") as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    if key in keys and ext in IMAGE_EXTS and member.isfile():
                        data = tar.extractfile(member)
                        if data is not None:
                            out[(shard, key)] = data.read()
        except (OSError, tarfile.TarError) as exc:
            log.warning("%s: cannot read it (%s)", dataset / shard, exc)
    return out


def html_section(report: dict[str, Any]) -> str:
    """The gallery as HTML ('' for a dataset without an index)."""
    root = Path(report["path"])
    dataset = root / report["dataset"]["dataset_dir"]
    rows = _index(dataset)
    if not rows:
        return ""
    groups = choose(rows, _entries(root))
    images = _images(dataset, {(r["shard"], r["key"]) for _, samples in groups for r in samples})
    e = html.escape
    out = [f"<style>{GRID_CSS}</style><h2>Samples</h2>"]
    for title, samples in groups:
        figures = []
        for r in samples:
            text = (r.get("text") or "")[:CAPTION_CHARS]
            score = f" <b>{r['clip_score']:.3f}</b>" if r.get("clip_score") is not None else ""
            figures.append(f"<figure>{_thumbnail_tag(images.get((r['shard'], r['key'])), r['key'])}"
                           f"<figcaption>{e(text)}{score}</figcaption></figure>")
        out.append(f"<h3>{e(title)}</h3><div class=grid>{''.join(figures)}</div>")
    return "\n".join(out)
