"""The report as rich tables in the terminal (the default output of ``witbuild stats``).

Why render from the JSON dict: the terminal, the HTML page and scripts then show the same numbers, computed once.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from witbuild.stats import near_dups

SPARK = "▁▂▃▄▅▆▇█"
DIST_COLUMNS = ("min", "p5", "p25", "p50", "p75", "p95", "max", "mean")
TOP_LANGUAGES = 15


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{n} B"


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1 else f"{v:,.2f}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def sparkline(counts: list[int]) -> str:
    """A histogram in one line of block characters (relative heights)."""
    top = max(counts, default=0)
    if top <= 0:
        return ""
    return "".join(SPARK[min(len(SPARK) - 1, round(c / top * (len(SPARK) - 1)))] if c else " " for c in counts)


def bar(share: float, width: int = 20) -> str:
    filled = share * width
    return "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")


def _table(title: str, *columns: str, right: tuple[str, ...] = (), header: bool = True) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", header_style="bold cyan", show_edge=False,
              pad_edge=False, show_header=header)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    return t


def dist_table(title: str, rows: list[tuple[str, dict[str, Any] | None]]) -> Table | None:
    rows = [(name, d) for name, d in rows if d]
    if not rows:
        return None
    t = _table(title, "", "count", *DIST_COLUMNS, "histogram", right=("count", *DIST_COLUMNS))
    for name, d in rows:
        p = d["percentiles"]
        values = {"min": d["min"], "max": d["max"], "mean": d["mean"], **{k: p.get(k) for k in ("p5", "p25", "p50",
                                                                                              "p75", "p95")}}
        h = d["histogram"]
        t.add_row(name, fmt(d["count"]), *(fmt(values[c]) for c in DIST_COLUMNS),
                  f"{h['edges'][0]:g} {sparkline(h['counts'])} {h['edges'][-1]:g}"
                  + (f" +{h['overflow']:,}" if h["overflow"] else ""))
    return t


def totals_table(r: dict[str, Any]) -> Table:
    t = _table("Totals", "what", "value", right=("value",), header=False)
    tot = r["totals"]
    t.add_row("samples", fmt(tot["samples"]))
    t.add_row("shards (tars)", fmt(tot["shards"]))
    t.add_row("Parquet files read for samples", fmt(tot["parquet_files"]))
    t.add_row(f"bytes on disk ({r['dataset']['dataset_dir']})", human_bytes(tot["dataset_bytes"]))
    t.add_row("bytes on disk (whole folder)", human_bytes(tot["total_bytes"]))
    sps = tot["samples_per_shard"]
    if sps:
        t.add_row("samples per shard (min / median / max)", f"{fmt(sps['min'])} / {fmt(sps['median'])} / "
                  f"{fmt(sps['max'])}")
    return t


def funnel_table(f: dict[str, Any]) -> Table:
    t = _table(f"Funnel (from {f['source']})", "stage", "unit", "in", "out", "kept", "dropped", "drops by reason",
               right=("in", "out", "kept", "dropped"))
    for st in f["stages"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in st["dropped"].items()) or "-"
        t.add_row(st["stage"], st["unit"], fmt(st["rows_in"]), fmt(st["rows_out"]), pct(st["kept_share"]),
                  fmt(st["rows_dropped"]), reasons)
    return t


def downloads_table(d: dict[str, Any]) -> Group:
    head = Text.assemble(("Downloads", "bold"), f": {d['success']:,} of {d['rows']:,} succeeded "
                         f"({pct(d['success_rate'])}); "
                         + ", ".join(f"{k} {v:,}" for k, v in d["status"].items()))
    t = _table("", "failure class", "count", "share", "most frequent message", right=("count", "share"))
    for f in d["failures_by_class"]:
        example = f["examples"][0]["message"] if f["examples"] else ""
        t.add_row(f["class"], fmt(f["count"]), pct(f["share"]), example[:80])
    return Group(head, t) if d["failures_by_class"] else Group(head)


def shares_table(title: str, key: str, rows: list[dict[str, Any]], limit: int) -> Table:
    t = _table(title, key, "count", "share", "", right=("count", "share"))
    for row in rows[:limit]:
        t.add_row(str(row[key]), fmt(row["count"]), pct(row["share"]), bar(row["share"]))
    if len(rows) > limit:
        rest = rows[limit:]
        t.add_row(f"({len(rest)} more)", fmt(sum(x["count"] for x in rest)), pct(sum(x["share"] for x in rest)), "")
    return t


def count_name(q: dict[str, Any]) -> str:
    """What the counts before balancing are called: c_e, or rows where a match stage's rows were counted (a caption
    on k pages k times), which are not balancing's distinct pairs."""
    return "rows" if q.get("counted") == "rows" else "c_e"


def queries_group(q: dict[str, Any]) -> Group:
    parts: list[Any] = []
    line = (f"query list {q.get('querylist_version') or '?'}: {q['entries']:,} entries, {q['matched_entries']:,} "
            f"matched ({q['unmatched_entries']:,} never)")
    if q.get("t") is not None:
        line += f"; t = {fmt(q['t'])}"
    parts.append(Text.assemble(("Queries", "bold"), f": {line}   ", (q["source"], "dim")))
    ce = count_name(q)
    if q.get("head"):
        t = _table("", "split at t", "entries", "matches before", "matches after",
                   right=("entries", "matches before", "matches after"))
        for name in ("head", "tail"):
            h = q[name]
            t.add_row(f"{name} ({ce} > t)" if name == "head" else f"{name} ({ce} <= t)", fmt(h["entries"]),
                      fmt(h["matches_before"]), fmt(h["matches_after"]))
        parts.append(t)
    c = _table("", "per-entry counts", "before balancing", "after balancing", "final dataset",
               right=("before balancing", "after balancing", "final dataset"))
    for key, label in (("total", "matches"), ("max", "largest entry"), ("entropy_bits", "entropy (bits)"),
                       ("normalized_entropy", "entropy / log2(entries)"), ("effective_entries", "effective entries"),
                       ("gini", "Gini")):
        c.add_row(label, *(fmt((q.get(w) or {}).get(key)) for w in ("before", "after", "final")))
    parts.append(c)
    top = _table("", "#", "top before balancing", ce, "top after balancing", "kept",
                 right=("#", ce, "kept"))
    before, after = q["top_before"], q.get("top_after") or []
    for i in range(max(len(before), len(after))):
        b = before[i] if i < len(before) else None
        a = after[i] if i < len(after) else None
        top.add_row(str(i + 1), repr(b["entry"]) if b else "", fmt(b["count"]) if b else "",
                    repr(a["entry"]) if a else "", fmt(a["kept"]) if a else "")
    parts.append(top)
    return Group(*parts)


def duplicates_table(rows: list[dict[str, Any]]) -> Table:
    t = _table("Duplicates removed, by layer", "stage", "layer", "on", "removed", "of stage input",
               right=("removed", "of stage input"))
    for d in rows:
        t.add_row(d["stage"], d["layer"], fmt(d["enabled"]), fmt(d["removed"]), pct(d["share"]))
    return t


def renderables(r: dict[str, Any]) -> list[Any]:
    """Everything the terminal shows, in order."""
    ds = r["dataset"]
    kind = {"build": "build output", "img2dataset": "img2dataset output", "final": "final dataset"}[ds["kind"]]
    head = f"[bold]{r['path']}[/]: {kind}; samples from {ds['samples_from']}"
    out: list[Any] = [Panel(head, title="witbuild stats", expand=False)]
    remarks = [Text(f"note: {n}", style="dim") for n in r["notes"]]
    remarks += [Text(f"warning: {w}", style="yellow") for w in r["warnings"]]
    if remarks:
        out.append(Group(*remarks))
    out.append(totals_table(r))
    if r["funnel"]:
        out.append(funnel_table(r["funnel"]))
    if r["downloads"]:
        out.append(downloads_table(r["downloads"]))
    cap = r["captions"]
    if cap:
        t = dist_table(f"Captions ({cap['count']:,}; {cap['missing']:,} missing)",
                       [("words", cap["words"]), ("characters", cap["chars"])])
        if t is not None:
            out.append(t)
        if cap["languages"]:
            out.append(shares_table("Languages", "lang", cap["languages"], TOP_LANGUAGES))
    img = r["images"]
    if img:
        t = dist_table(f"Images ({img['count']:,})", [
            ("width", img["width"]), ("height", img["height"]), ("original width", img["original_width"]),
            ("original height", img["original_height"]), ("aspect (original w/h)", img["aspect_ratio"])])
        if t is not None:
            out.append(t)
        fm = img["formats"]
        if fm["stored"]:
            out.append(shares_table(f"Stored formats ({fm['stored_method']})", "format", fm["stored"], 10))
        if fm["source"]:
            out.append(shares_table("Source formats (URL extension)", "format", fm["source"], 10))
    if r.get("clip_scores"):
        sc = r["clip_scores"]
        out.append(dist_table(f"CLIP scores ({sc['count']:,} scored; {sc['resolution']})", [("score", sc)]))
    if r["queries"]:
        out.append(queries_group(r["queries"]))
    if r["duplicates"]:
        out.append(duplicates_table(r["duplicates"]))
    if r.get("near_duplicates"):
        out.append(Group(Text("Near duplicates removed, with their kept counterpart", style="bold"),
                         *(Text(line) for line in near_dups.text_lines(r["near_duplicates"]))))
    out.append(Text(f"tars checked: {r['tars']['checked']:,} ({r['tars']['mode']})", style="dim"))
    return out


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for i, item in enumerate(renderables(report)):
        if i:
            console.print()
        console.print(item)
