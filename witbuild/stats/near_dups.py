"""The near-duplicate removals of a build, each with the kept sample it duplicates, for ``witbuild stats``.

Finalize records every removal in ``stages/finalize/near_duplicates.parquet`` (schemas/near_duplicates.json).
This module summarises it for the report (counts, the distance spread, a few examples), prints it, and renders
the examples in the HTML report as thumbnail pairs read from the tars: the removed image from the download
stage's tar (the final tars no longer hold it), the kept one from the final tar.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from witbuild.layout import FINALIZE_STAGE, IMAGE_EXTS, NEAR_DUPLICATES_DIR, STAGES_DIR

log = logging.getLogger(__name__)

EXAMPLES = 8  # pairs in the report
THUMB_PX = 112  # longest side of an HTML thumbnail
COLUMNS = ("key", "shard", "url", "text", "duplicate_of", "duplicate_of_shard", "duplicate_of_url",
           "phash_distance", "colour_mean", "colour_tail")  # an example's fields
IN_DATASET = "duplicate_of_in_dataset"  # absent from records written before it existed


def record_path(root: Path) -> Path | None:
    """The near-duplicate record of a build folder or of a finalize folder given alone; None when absent (a
    build from before the record existed, or near-duplicate removal off)."""
    for path in (root / STAGES_DIR / FINALIZE_STAGE / NEAR_DUPLICATES_DIR, root / NEAR_DUPLICATES_DIR):
        if path.exists():
            return path
    return None


def collect(root: Path, examples: int = EXAMPLES) -> dict[str, Any] | None:
    """Counts and examples (schemas/stats_report.schema.json, ``near_duplicates``); None without a record.

    Examples are spread evenly over the removals in key order, so the same build always shows the same ones."""
    path = record_path(root)
    if path is None:
        return None
    try:
        table = pq.read_table(path)
        table = table.select([*COLUMNS, *([IN_DATASET] if IN_DATASET in table.column_names else [])])
    except Exception as exc:  # a damaged record must not lose the rest of the report
        log.warning("%s: cannot read it (%s): near-duplicate removals not shown", path, exc)
        return None
    rows = sorted(table.to_pylist(), key=lambda r: r["key"])
    bits = np.array([r["phash_distance"] for r in rows], dtype=np.int64)
    means = np.array([r["colour_mean"] for r in rows if r["colour_mean"] is not None], dtype=np.float64)
    picks = np.unique(np.linspace(0, len(rows) - 1, min(examples, len(rows))).round().astype(int)) if rows else []
    counterparts = {r["duplicate_of"] for r in rows}
    return {
        "removed": len(rows),
        "kept_counterparts": len(counterparts),
        "counterparts_not_in_dataset": _not_in_dataset(rows) if IN_DATASET in table.column_names else None,
        "by_phash_distance": [{"bits": int(b), "count": int(c)} for b, c in zip(*np.unique(bits, return_counts=True),
                                                                            strict=True)],
        "colour_mean": {"min": float(means.min()), "median": float(np.median(means)), "max": float(means.max())}
        if means.size else None,
        "examples": [{k: rows[i][k] for k in COLUMNS} for i in picks],
        "source": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
    }


def _not_in_dataset(rows: list[dict[str, Any]]) -> int:
    """Distinct kept counterparts that a step after dedup (the CLIP-score filter) dropped from the dataset."""
    return len({r["duplicate_of"] for r in rows if not r[IN_DATASET]})


def _counterparts(section: dict[str, Any]) -> list[str]:
    """The removals' counts, and whether the samples kept in their place are in the dataset: a step after dedup
    (the CLIP-score filter) may have dropped some, and a record written before that was recorded cannot say."""
    n, gone = section["kept_counterparts"], section.get("counterparts_not_in_dataset")
    kept = "kept " if gone == 0 else ""
    lines = [f"{section['removed']:,} removed as near duplicates of {n:,} {kept}samples (from {section['source']})"]
    if gone is None:
        lines.append("whether those samples are in the dataset: not recorded")
    elif gone:
        lines.append(f"{gone:,} of those samples dropped after dedup: not in the dataset")
    return lines


def text_lines(section: dict[str, Any]) -> list[str]:
    """The section as plain lines for the terminal report."""
    dist = ", ".join(f"{d['bits']} bits {d['count']:,}" for d in section["by_phash_distance"]) or "-"
    lines = [*_counterparts(section), f"pHash distance: {dist}"]
    if section["colour_mean"]:
        c = section["colour_mean"]
        lines.append(f"colour ΔE mean: min {c['min']:.2f}, median {c['median']:.2f}, max {c['max']:.2f}")
    for e in section["examples"]:
        lines.append(f"  {e['key']} {_short(e['text'])!r} → kept {e['duplicate_of']} "
                     f"({e['phash_distance']} bits{_delta(e)})")
    return lines


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _delta(e: dict[str, Any]) -> str:
    return "" if e.get("colour_mean") is None else f", ΔE {e['colour_mean']:.1f}/{e['colour_tail']:.1f}"


def _image_bytes(tar_path: Path, key: str) -> bytes | None:
    """The image member of sample ``key`` in a WebDataset tar; None when the tar or the member is missing."""
    if not tar_path.is_file():
        return None
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                if stem == key and ext.lower() in IMAGE_EXTS and member.isfile():
                    data = tar.extractfile(member)
                    return data.read() if data is not None else None
    except (OSError, tarfile.TarError) as exc:
        log.warning("%s: cannot read it (%s)", tar_path, exc)
    return None


def _thumbnail_tag(data: bytes | None, alt: str) -> str:
    if data is None:
        return f"<span class=meta>({html.escape(alt)}: image not found)</span>"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception as exc:  # an undecodable image is shown as missing, the page still renders
        log.debug("thumbnail of %s: %s", alt, exc)
        return f"<span class=meta>({html.escape(alt)}: not decodable)</span>"
    data64 = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<img class="thumb" style="max-width:{THUMB_PX}px" alt="{html.escape(alt)}" '
            f'src="data:image/jpeg;base64,{data64}">')


def html_section(report: dict[str, Any]) -> str:
    """The section as HTML: counts, then each example as removed | kept thumbnails with captions and distances."""
    section = report.get("near_duplicates")
    if not section:
        return ""
    e = html.escape
    root = Path(report["path"])
    stages = root / STAGES_DIR if (root / STAGES_DIR).is_dir() else root.parent
    # a final dataset holds the kept images itself, under whatever name it was copied to
    final = root if report["dataset"]["kind"] == "final" else stages / FINALIZE_STAGE
    out = ["<h2>Near duplicates removed, with their kept counterpart</h2>"]
    out += [f"<p>{e(line)}</p>" for line in text_lines({**section, "examples": []})]
    rows = []
    for x in section["examples"]:
        removed = _image_bytes(stages / "download" / x["shard"], x["key"])
        kept = (_image_bytes(final / x["duplicate_of_shard"], x["duplicate_of"])
                or _image_bytes(stages / "download" / x["duplicate_of_shard"], x["duplicate_of"]))
        rows.append(f"<tr><td>{_thumbnail_tag(removed, 'removed ' + x['key'])}<br><code>{e(x['key'])}</code> "
                    f"{e(_short(x['text']))}</td><td>{_thumbnail_tag(kept, 'kept ' + x['duplicate_of'])}<br>"
                    f"<code>{e(x['duplicate_of'])}</code></td><td class=num>{x['phash_distance']} bits"
                    f"{e(_delta(x))}</td></tr>")
    if rows:
        out.append("<table><tr><th>removed</th><th>kept</th><th>distance</th></tr>" + "".join(rows) + "</table>")
    return "\n".join(out)
