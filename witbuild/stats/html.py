"""The report as one self-contained HTML page: tables plus matplotlib plots embedded as base64 PNG.

Why self-contained: the page is mailed, attached to tickets and opened offline; it must not depend on files next
to it or on the network. Plots use matplotlib's object API (``Figure`` + Agg canvas), not pyplot, so writing a
report never changes the process's global backend or leaks figures.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import logging
from pathlib import Path
from typing import Any

from witbuild.stats import near_dups
from witbuild.stats.render import DIST_COLUMNS, count_name, fmt, human_bytes, pct

log = logging.getLogger(__name__)

TOP_BARS = 15
COLOURS = {"before": "#1f77b4", "after": "#d62728", "final": "#2ca02c", "kept": "#4c9a2a", "dropped": "#d9534f"}
CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #1f77b4; padding-bottom: 0.2em;
margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef3f8; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; } .warn { color: #8a5300; background: #fff4e0; padding: 0.3em 0.6em; }
img.plot { display: block; max-width: 100%; margin: 0.8em 0; border: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; }
"""


def _figure(width: float = 8.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _png(fig: Any, alt: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def _histogram_axes(ax: Any, h: dict[str, Any], colour: str, label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    edges, counts = h["edges"], h["counts"]
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(_thousands())
    if all(isinstance(x, int) for x in edges):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colour, edgecolor="white", linewidth=0.5)
    ax.set_xlabel(label)
    ax.set_ylabel("samples")
    extra = []
    if h.get("underflow"):
        extra.append(f"{h['underflow']:,} below")
    if h.get("overflow"):
        extra.append(f"{h['overflow']:,} above")
    if extra:
        ax.set_title(f"({', '.join(extra)} the range shown)", fontsize=9, loc="right", color="#666")


def plot_funnel(stages: list[dict[str, Any]]) -> str:
    fig = _figure(8, 0.5 + 0.45 * len(stages))
    ax = fig.add_subplot()
    names = [f"{s['stage']} ({s['unit']})" for s in stages][::-1]
    kept = [s["rows_out"] for s in stages][::-1]
    dropped = [max(0, s["rows_in"] - s["rows_out"]) for s in stages][::-1]
    ax.barh(names, kept, color=COLOURS["kept"], label="out")
    ax.barh(names, dropped, left=kept, color=COLOURS["dropped"], label="dropped")
    for y, (k, d) in enumerate(zip(kept, dropped, strict=True)):
        ax.text(k + d, y, f" {k:,} of {k + d:,}", va="center", fontsize=8)
    ax.set_xlabel("rows")
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlim(0, max((k + d for k, d in zip(kept, dropped, strict=True)), default=1) * 1.25)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Funnel: rows in and out of each stage")
    return _png(fig, "funnel")


def plot_bars(rows: list[dict[str, Any]], key: str, title: str, colour: str) -> str:
    from matplotlib.ticker import MaxNLocator

    rows = rows[:TOP_BARS]
    fig = _figure(8, 0.6 + 0.32 * len(rows))
    ax = fig.add_subplot()
    labels = [str(r[key]) for r in rows][::-1]
    ax.barh(labels, [r["count"] for r in rows][::-1], color=colour)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.xaxis.set_major_formatter(_thousands())
    ax.set_xlabel("count")
    ax.set_title(title)
    return _png(fig, title)


def plot_histograms(title: str, panels: list[tuple[str, dict[str, Any] | None]], log_x: bool = False) -> str | None:
    panels = [(label, d) for label, d in panels if d]
    if not panels:
        return None
    fig = _figure(8 if len(panels) > 1 else 6, 3.2)
    fig.suptitle(title)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for i, (label, d) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _histogram_axes(ax, d["histogram"], colours[i % len(colours)], label)
        if log_x:
            edges = d["histogram"]["edges"]
            ax.set_xscale("log", base=2)
            ticks = edges[:: max(1, len(edges) // 8)]
            ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
            ax.minorticks_off()
    return _png(fig, title)


def plot_rank_frequency(rf: dict[str, Any], t: float | None = None, before: str = "c_e") -> str | None:
    series = [(name, rf.get(name)) for name in ("before", "after", "final")]
    series = [(n, s) for n, s in series if s and s["ranks"]]
    if not series:
        return None
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    labels = {"before": f"before balancing ({before})",
              "after": "after balancing (kept)", "final": "final dataset"}
    for name, s in series:
        ax.plot(s["ranks"], s["counts"], marker=".", markersize=3, linewidth=1.2, color=COLOURS[name],
                label=labels[name])
    if t is not None:
        ax.axhline(float(t), linestyle="--", linewidth=1, color="#555", label=f"t = {fmt(t)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entry rank")
    ax.set_ylabel("matches per entry")
    ax.set_title("Query entries: rank–frequency (log–log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, "query rank-frequency before and after balancing")


# ------------------------------------------------------------------------------------------------ tables


def _td(v: Any, numeric: bool = False) -> str:
    return f'<td class="n">{html.escape(v)}</td>' if numeric else f"<td>{html.escape(v)}</td>"


def _table(header: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(v, n) for v, n in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _dist_rows(rows: list[tuple[str, dict[str, Any] | None]]) -> str:
    out = []
    for name, d in rows:
        if not d:
            continue
        p = d["percentiles"]
        values = {"min": d["min"], "max": d["max"], "mean": d["mean"], **p}
        out.append([(name, False), (fmt(d["count"]), True), *((fmt(values.get(c)), True) for c in DIST_COLUMNS)])
    return _table(["", "count", *DIST_COLUMNS], out) if out else ""


def _shares(rows: list[dict[str, Any]], key: str, limit: int = TOP_BARS) -> str:
    return _table([key, "count", "share"], [[(str(r[key]), False), (fmt(r["count"]), True), (pct(r["share"]), True)]
                                           for r in rows[:limit]])


def _totals_html(r: dict[str, Any]) -> list[str]:
    """The totals table."""
    ds = r["dataset"]
    parts: list[str] = []
    tot = r["totals"]
    sps = tot["samples_per_shard"]
    rows = [["samples", fmt(tot["samples"])], ["shards (tars)", fmt(tot["shards"])],
            ["Parquet files read for samples", fmt(tot["parquet_files"])],
            [f"bytes on disk ({ds['dataset_dir']})", human_bytes(tot["dataset_bytes"])],
            ["bytes on disk (whole folder)", human_bytes(tot["total_bytes"])]]
    if sps:
        rows.append(["samples per shard (min / median / max)",
                     f"{fmt(sps['min'])} / {fmt(sps['median'])} / {fmt(sps['max'])}"])
    parts.append("<h2>Totals</h2>" + _table(["", ""], [[(a, False), (b, True)] for a, b in rows]))
    return parts


def _funnel_html(r: dict[str, Any]) -> list[str]:
    """The funnel plot and table."""
    e = html.escape
    parts: list[str] = []
    if r["funnel"]:
        f = r["funnel"]
        parts.append(f"<h2>Funnel</h2><p class=meta>from {e(f['source'])}</p>" + plot_funnel(f["stages"]))
        parts.append(_table(["stage", "unit", "in", "out", "kept", "dropped", "drops by reason"], [
            [(s["stage"], False), (s["unit"], False), (fmt(s["rows_in"]), True), (fmt(s["rows_out"]), True),
             (pct(s["kept_share"]), True), (fmt(s["rows_dropped"]), True),
             (", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()) or "-", False)] for s in f["stages"]]))
    return parts


def _downloads_html(r: dict[str, Any]) -> list[str]:
    """Download successes and failures by class."""
    e = html.escape
    parts: list[str] = []
    d = r["downloads"]
    if d:
        parts.append(f"<h2>Downloads</h2><p>{d['success']:,} of {d['rows']:,} succeeded "
                     f"(<b>{pct(d['success_rate'])}</b>); "
                     + e(", ".join(f"{k} {v:,}" for k, v in d["status"].items())) + "</p>")
        if d["failures_by_class"]:
            parts.append(plot_bars(d["failures_by_class"], "class", "Download failures by class", "#d9534f"))
            parts.append(_table(["class", "count", "share of failures", "most frequent messages"], [
                [(c["class"], False), (fmt(c["count"]), True), (pct(c["share"]), True),
                 ("; ".join(f"{x['message']} ({x['count']:,})" for x in c["examples"]), False)]
                for c in d["failures_by_class"]]))
    return parts


def _captions_html(r: dict[str, Any]) -> list[str]:
    """Caption lengths and languages."""
    parts: list[str] = []
    cap = r["captions"]
    if cap:
        parts.append(f"<h2>Captions</h2><p>{cap['count']:,} captions, {cap['missing']:,} missing</p>")
        parts.append(plot_histograms("Caption length", [("words", cap["words"]), ("characters", cap["chars"])])
                     or "")
        parts.append(_dist_rows([("words", cap["words"]), ("characters", cap["chars"])]))
        if cap["languages"]:
            parts.append("<h3>Languages</h3>" + plot_bars(cap["languages"], "lang", "Languages", "#1f77b4")
                         + _shares(cap["languages"], "lang"))
    return parts


def _images_html(r: dict[str, Any]) -> list[str]:
    """Image sizes, aspect ratios and formats."""
    e = html.escape
    parts: list[str] = []
    img = r["images"]
    if img:
        parts.append(f"<h2>Images</h2><p>{img['count']:,} images</p>")
        parts.append(plot_histograms("Original size", [("original width (px)", img["original_width"]),
                                                       ("original height (px)", img["original_height"])]) or "")
        parts.append(plot_histograms("Stored size", [("width (px)", img["width"]), ("height (px)", img["height"])])
                     or "")
        parts.append(plot_histograms("Aspect ratio (original width / height)",
                                     [("aspect ratio (log scale)", img["aspect_ratio"])], log_x=True) or "")
        parts.append(_dist_rows([("width", img["width"]), ("height", img["height"]),
                                 ("original width", img["original_width"]),
                                 ("original height", img["original_height"]),
                                 ("aspect ratio", img["aspect_ratio"])]))
        fm = img["formats"]
        if fm["stored"]:
            parts.append(f"<h3>Stored formats</h3><p class=meta>{e(fm['stored_method'])}</p>"
                         + _shares(fm["stored"], "format"))
        if fm["source"]:
            parts.append("<h3>Source formats (URL extension)</h3>" + _shares(fm["source"], "format"))
    return parts


def _scores_html(r: dict[str, Any]) -> list[str]:
    """The CLIP score distribution (a build with clip_score on)."""
    sc = r.get("clip_scores")
    if not sc:
        return []
    return [f"<h2>CLIP scores</h2><p>{sc['count']:,} samples scored (image–caption cosine similarity)</p>",
            plot_histograms("CLIP score", [("cosine similarity", sc)]) or "", _dist_rows([("score", sc)])]


def _gallery_html(r: dict[str, Any]) -> list[str]:
    """Sample thumbnails with captions (witbuild/stats/gallery.py)."""
    from witbuild.stats import gallery

    return [gallery.html_section(r)]


def _queries_html(r: dict[str, Any]) -> list[str]:
    """The query list before and after balancing."""
    e = html.escape
    parts: list[str] = []
    q = r["queries"]
    if q:
        parts.append(f"<h2>Queries</h2><p>query list {e(str(q.get('querylist_version') or '?'))}: "
                     f"{q['entries']:,} entries, {q['matched_entries']:,} matched; t = {e(fmt(q.get('t')))}</p>"
                     f"<p class=meta>from {e(q['source'])}</p>")
        parts.append(plot_rank_frequency(q["rank_frequency"], q.get("t"), count_name(q)) or "")
        if q.get("head"):
            parts.append(_table(["split at t", "entries", "matches before", "matches after"], [
                [(name, False), (fmt(q[name]["entries"]), True), (fmt(q[name]["matches_before"]), True),
                 (fmt(q[name]["matches_after"]), True)] for name in ("head", "tail")]))
        measures = (("total", "matches"), ("max", "largest entry"), ("entropy_bits", "entropy (bits)"),
                    ("normalized_entropy", "entropy / log2(entries)"), ("effective_entries", "effective entries"),
                    ("gini", "Gini"))
        parts.append(_table(["per-entry counts", "before balancing", "after balancing", "final dataset"], [
            [(label, False), *((fmt((q.get(w) or {}).get(k)), True) for w in ("before", "after", "final"))]
            for k, label in measures]))
        before, after = q["top_before"], q.get("top_after") or []
        rows = []
        for i in range(max(len(before), len(after))):
            b = before[i] if i < len(before) else None
            a = after[i] if i < len(after) else None
            rows.append([(str(i + 1), True), (b["entry"] if b else "", False), (fmt(b["count"]) if b else "", True),
                         (a["entry"] if a else "", False), (fmt(a["kept"]) if a else "", True)])
        header = ["#", "before balancing", count_name(q), "after balancing", "kept"]
        parts.append("<h3>Top entries</h3>" + _table(header, rows))
    return parts


def render_html(r: dict[str, Any]) -> str:
    """The page as a string."""
    e = html.escape
    ds = r["dataset"]
    parts = [f"<h1>witbuild stats</h1><p class=meta><b>{e(r['path'])}</b> — {e(ds['kind'])}; samples from "
             f"<code>{e(ds['samples_from'])}</code>; witbuild {e(r['witbuild_version'])}</p>"]
    parts += [f"<p class=note>note: {e(n)}</p>" for n in r["notes"]]
    parts += [f"<p class=warn>warning: {e(w)}</p>" for w in r["warnings"]]

    for section in (_totals_html, _funnel_html, _gallery_html, _downloads_html, _captions_html, _images_html,
                    _scores_html, _queries_html):
        parts += section(r)

    if r["duplicates"]:
        parts.append("<h2>Duplicates removed, by layer</h2>" + _table(
            ["stage", "layer", "on", "removed", "of stage input"],
            [[(x["stage"], False), (x["layer"], False), (fmt(x["enabled"]), False), (fmt(x["removed"]), True),
              (pct(x["share"]), True)] for x in r["duplicates"]]))
    parts.append(near_dups.html_section(r))
    parts.append(f"<p class=meta>tars checked: {r['tars']['checked']:,} ({e(r['tars']['mode'])})</p>")
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>witbuild stats — {e(r['path'])}"
            f"</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_html(report: dict[str, Any], path: Path) -> None:
    """Write the page (through a temporary file: a reader never sees half a page)."""
    page = render_html(report)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    log.debug("wrote %s (%d kB)", path, len(page) // 1024)
