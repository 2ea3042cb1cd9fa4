"""The experiment's report: per-variant means with t-intervals over seeds, and each variant's paired difference
from the baseline, as a terminal table, a self-contained HTML page and a JSON file.

The paired differences are the report's point: with a few seeds the variants' own intervals overlap, while the
seed-paired difference tells whether curation moved the metric more than the seed does. A difference is paired over
the seeds both variants trained, so one failed run costs that seed, not the variant. Retrieval is scored on each
variant's own held-out pairs (other pairs, another gallery size, another chance level): it is shown per variant and
never differenced. The input is the plain dict the experiment runner saves, so a report can be rebuilt from
``experiment.json`` without rerunning anything.
"""

from __future__ import annotations

import html
import json
import logging
import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from witbuild.experiment.intervals import LEVEL, mean_ci, paired_difference
from witbuild.provenance import describe

log = logging.getLogger(__name__)

METRICS = ("zeroshot", "head", "tail", "linear_probe", "retrieval_R@1")
LABELS = {"zeroshot": "zero-shot top-1", "head": "zero-shot head third", "tail": "zero-shot tail third",
          "linear_probe": "linear probe top-1", "retrieval_R@1": "retrieval R@1, own pairs"}
BAR_METRICS = ("zeroshot", "head", "tail", "linear_probe")
UNPAIRED = {"retrieval_R@1": "the mean of image→text and text→image R@1, each variant scored on its own held-out "
                             "pairs: not comparable across variants, so no difference is given"}
NO_SPREAD_NOTE = "no spread: every seed gave the same value, so no t-interval can be estimated"
MARK = "*"


def label(metric: str) -> str:
    """The metric's name for people; unknown metrics keep their key."""
    return LABELS.get(metric, metric)


# ------------------------------------------------------------------------------------------------ summary


def _value(v: Any) -> float | None:
    """A usable metric value: runs record None (or nothing) where a metric could not be measured."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _per_seed(runs: Mapping[Any, Mapping[str, Any]], metric: str) -> dict[int, float]:
    """Seed -> value of one metric; seeds are ints whether the runs came from Python or from JSON (str keys)."""
    out = {}
    for seed, run in runs.items():
        v = _value((run or {}).get(metric))
        if v is not None:
            out[int(seed)] = v
    return out


def _metric_names(variants: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The metrics the runs hold: the canonical ones in display order, then any others in first-seen order."""
    seen: dict[str, None] = {}
    for v in variants.values():
        for run in (v.get("runs") or {}).values():
            seen.update(dict.fromkeys(run or {}))
    return [m for m in METRICS if m in seen] + [m for m in seen if m not in METRICS]


def _variant_summary(v: Mapping[str, Any], metrics: list[str], level: float) -> dict:
    """One variant's settings, dataset counts, error, trained seeds and per-metric intervals."""
    runs = v.get("runs") or {}
    return {"sets": list(v.get("sets") or []), "dataset": dict(v.get("dataset") or {}), "error": v.get("error"),
            "seeds": sorted(int(s) for s in runs),
            "metrics": {m: mean_ci(list(_per_seed(runs, m).values()), level) for m in metrics}}


def _differences(results: Mapping[str, Any], metrics: list[str], level: float) -> tuple[dict, str | None]:
    """Each trained variant's paired difference from the baseline over the seeds both trained (a failed run costs
    its seed, not the variant), or none and the reason why. Metrics of ``UNPAIRED`` get none."""
    variants = results.get("variants") or {}
    baseline = results.get("baseline")
    if baseline not in variants:
        return {}, f"no paired differences: the baseline {baseline!r} is not among the variants"
    base_runs = variants[baseline].get("runs") or {}
    if not base_runs:
        return {}, f"no paired differences: the baseline {baseline!r} failed before any run finished"
    paired = [m for m in metrics if m not in UNPAIRED]
    if not paired:
        return {}, None
    out = {}
    for name, v in variants.items():
        runs = v.get("runs") or {}
        if name == baseline or not runs:
            continue
        out[name] = {m: paired_difference(_per_seed(runs, m), _per_seed(base_runs, m), level) for m in paired}
    return out, None


def summarize(results: Mapping[str, Any], level: float = LEVEL) -> dict:
    """Means with t-intervals per variant and metric, and paired differences from the baseline (JSON-ready)."""
    variants = results.get("variants") or {}
    metrics = _metric_names(variants)
    differences, note = _differences(results, metrics, level)
    return {"level": level, "baseline": results.get("baseline"), "seeds": list(results.get("seeds") or []),
            "metrics": metrics, "unpaired": {m: UNPAIRED[m] for m in metrics if m in UNPAIRED},
            "variants": {name: _variant_summary(v, metrics, level) for name, v in variants.items()},
            "differences": differences, "note": note, "code": results.get("code")}


# ------------------------------------------------------------------------------------------------ cells


def _no_interval(ci: Mapping[str, Any]) -> str:
    """Why a value has no interval: one run, or runs that all agree (a t-interval then has nothing to scale)."""
    return f"(no spread, n={ci['n']})" if ci.get("no_spread") else f"(n={ci['n']})"


def mean_cell(ci: Mapping[str, Any]) -> str:
    """``41.3 ± 4.2`` (percent, half-width of the interval); ``41.3 (n=1)`` or ``41.3 (no spread, n=3)`` where
    there is no interval."""
    if ci.get("mean") is None:
        return "-"
    if ci.get("low") is None:
        return f"{100 * ci['mean']:.1f} {_no_interval(ci)}"
    return f"{100 * ci['mean']:.1f} ± {100 * (ci['high'] - ci['low']) / 2:.1f}"


def difference_cell(d: Mapping[str, Any], row_n: int | None = None) -> str:
    """``+3.1 [+1.2, +5.0] *`` in percentage points; the mark says the interval excludes 0. A difference without
    an interval is never marked; one over fewer seeds than its row's says how many (``(n=2)``)."""
    if d.get("mean") is None:
        return "-"
    if d.get("low") is None:
        return f"{100 * d['mean']:+.1f} {_no_interval(d)}"
    mark = f" {MARK}" if d.get("excludes_zero") else ""
    fewer = f" (n={d['n']})" if row_n is not None and d["n"] < row_n else ""
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]{fewer}{mark}"


def _size(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _dataset_keys(summary: Mapping[str, Any]) -> list[str]:
    keys: dict[str, None] = {}
    for v in summary["variants"].values():
        keys.update(dict.fromkeys(v["dataset"]))
    return list(keys)


def _mean_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-variant table, shared by the terminal and the page."""
    metrics, keys = summary["metrics"], _dataset_keys(summary)
    header = ["variant", *(label(m) for m in metrics), *keys]
    rows = []
    for name, v in summary["variants"].items():
        tags = [t for t, on in (("baseline", name == summary["baseline"]), ("failed", bool(v["error"]))) if on]
        tag = f" ({', '.join(tags)})" if tags else ""
        rows.append([name + tag, *(mean_cell(v["metrics"][m]) for m in metrics),
                     *(_size(v["dataset"][k]) if k in v["dataset"] else "-" for k in keys)])
    return header, rows


def _paired_metrics(summary: Mapping[str, Any]) -> list[str]:
    """The metrics that get a paired difference, in display order."""
    return [m for m in summary["metrics"] if m not in summary.get("unpaired", UNPAIRED)]


def _difference_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the differences table; the last column names the seeds paired (both variants trained)."""
    metrics = _paired_metrics(summary)
    header = ["variant − baseline", *(label(m) for m in metrics), "seeds paired"]
    rows = []
    for name, diffs in summary["differences"].items():
        seeds = sorted({s for d in diffs.values() for s in d["seeds"]})
        rows.append([f"{name} − {summary['baseline']}", *(difference_cell(diffs[m], len(seeds)) for m in metrics),
                     f"n={len(seeds)}" + (": " + ", ".join(map(str, seeds)) if seeds else "")])
    return header, rows


def _legend(summary: Mapping[str, Any]) -> tuple[str, str]:
    """The two tables' legends: what a cell holds."""
    pct = f"{100 * summary['level']:g}%"
    return (f"mean ± half-width of the {pct} t-interval over seeds, in %",
            f"paired by seed over the seeds both variants trained, in percentage points, [{pct} t-interval]; "
            f"{MARK} = the interval excludes 0")


def _notes(summary: Mapping[str, Any], cis: list[Mapping[str, Any]], unpaired: bool) -> list[str]:
    """The footnotes a table needs: what a metric without differences is, and what "no spread" means."""
    notes = [f"{label(m)}: {text}" for m, text in summary.get("unpaired", {}).items()] if unpaired else []
    no_spread = NO_SPREAD_NOTE if unpaired else f"{NO_SPREAD_NOTE}, nor {MARK} given"
    return notes + ([no_spread] if any(ci.get("no_spread") for ci in cis) else [])


def _mean_notes(summary: Mapping[str, Any]) -> list[str]:
    """Footnotes of the per-variant table."""
    return _notes(summary, [ci for v in summary["variants"].values() for ci in v["metrics"].values()], True)


def _difference_notes(summary: Mapping[str, Any]) -> list[str]:
    """Footnotes of the differences table."""
    return _notes(summary, [d for diffs in summary["differences"].values() for d in diffs.values()], False)


# ------------------------------------------------------------------------------------------------ terminal


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell: names left, numbers right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_table(summary: Mapping[str, Any]) -> str:
    """The report for the terminal (deterministic: the same summary always prints the same text)."""
    means_legend, diff_legend = _legend(summary)
    lines = [f"variants ({means_legend}):", *_text_table(*_mean_rows(summary)),
             *(f"  {note}" for note in _mean_notes(summary))]
    if summary["differences"]:
        lines += ["", f"differences from {summary['baseline']} ({diff_legend}):",
                  *_text_table(*_difference_rows(summary)), *(f"  {note}" for note in _difference_notes(summary))]
    if summary.get("note"):
        lines += ["", f"note: {summary['note']}"]
    sets = [(name, v["sets"]) for name, v in summary["variants"].items() if v["sets"]]
    if sets:
        lines += ["", "settings:", *(f"  {name}: {' '.join(s)}" for name, s in sets)]
    failed = [(name, v["error"]) for name, v in summary["variants"].items() if v["error"]]
    if failed:
        lines += ["", "failed:"]
        lines += [f"  {name}: " + str(err).strip().replace("\n", "\n    ") for name, err in failed]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ page


def _plain(text: str) -> str:
    """Text matplotlib shows as typed: a ``$`` in a variant name would otherwise start mathtext."""
    return text.replace("$", r"\$")


def _ticks(ax: Any, metrics: list[str]) -> None:
    """Metric names under their group, wrapped so that six of them fit side by side."""
    ax.set_xticks(range(len(metrics)), ["\n".join(textwrap.wrap(label(m), 14)) for m in metrics])
    ax.set_xlim(-0.6, len(metrics) - 0.4)


def _errorbar(ci: Mapping[str, Any]) -> tuple[float, float, float]:
    """Mean and the distances to the interval's ends, in percent (no bar where there is no interval)."""
    mean = 100 * ci["mean"]
    if ci.get("low") is None:
        return mean, 0.0, 0.0
    return mean, mean - 100 * ci["low"], 100 * ci["high"] - mean


def plot_means(summary: Mapping[str, Any]) -> str | None:
    """Grouped bars: for each metric, one bar per variant with its interval."""
    from witbuild.stats.html import _figure, _png

    metrics = [m for m in BAR_METRICS if m in summary["metrics"]]
    variants = [(i, name, v) for i, (name, v) in enumerate(summary["variants"].items())
                if any(v["metrics"][m]["mean"] is not None for m in metrics)]
    if not metrics or not variants:
        return None
    fig = _figure(8, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(variants)
    for j, (i, name, v) in enumerate(variants):
        cis = v["metrics"]
        points = [(k, *_errorbar(cis[m])) for k, m in enumerate(metrics) if cis[m]["mean"] is not None]
        xs = [k + (j - (len(variants) - 1) / 2) * width for k, *_ in points]
        ax.bar(xs, [p[1] for p in points], width, yerr=[[p[2] for p in points], [p[3] for p in points]],
               capsize=3, color=f"C{i % 10}", label=_plain(name))
    _ticks(ax, metrics)
    ax.set_ylabel("%")
    ax.set_title(f"Means over seeds, {100 * summary['level']:g}% t-intervals")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, "metric means per variant")


def plot_differences(summary: Mapping[str, Any]) -> str | None:
    """Paired differences from the baseline with their intervals, around a zero line."""
    from witbuild.stats.html import _figure, _png

    diffs = summary["differences"]
    metrics = [m for m in _paired_metrics(summary) if any(d[m]["mean"] is not None for d in diffs.values())]
    if not metrics:
        return None
    colour = {name: f"C{i % 10}" for i, name in enumerate(summary["variants"])}
    fig = _figure(8, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(diffs)
    for j, (name, d) in enumerate(diffs.items()):
        points = [(k, *_errorbar(d[m])) for k, m in enumerate(metrics) if d[m]["mean"] is not None]
        xs = [k + (j - (len(diffs) - 1) / 2) * width for k, *_ in points]
        ax.errorbar(xs, [p[1] for p in points], yerr=[[p[2] for p in points], [p[3] for p in points]], fmt="o",
                    capsize=4, color=colour[name], label=_plain(f"{name} − {summary['baseline']}"))
    ax.axhline(0, color="#555", linewidth=1)
    _ticks(ax, metrics)
    ax.set_ylabel("percentage points")
    ax.set_title(f"Paired differences from {_plain(str(summary['baseline']))}, "
                 f"{100 * summary['level']:g}% t-intervals")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, "paired differences from the baseline")


def _cells(rows: list[list[str]]) -> list[list[tuple[str, bool]]]:
    return [[(c, i > 0) for i, c in enumerate(row)] for row in rows]


def _html_notes(notes: list[str]) -> str:
    """A table's footnotes as escaped paragraphs."""
    return "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)


def render_html(summary: Mapping[str, Any]) -> str:
    """The page as a string; every name, setting and error is escaped."""
    from witbuild.stats.html import CSS, _table

    e = html.escape
    means_legend, diff_legend = _legend(summary)
    seeds = ", ".join(map(str, summary["seeds"]))
    header, rows = _mean_rows(summary)
    code = f"; code {e(describe(summary['code']))}" if summary.get("code") else ""
    parts = [f"<h1>witbuild experiment</h1><p class=meta>baseline <b>{e(str(summary['baseline']))}</b>; "
             f"seeds {e(seeds)}{code}</p>",
             f"<h2>Variants</h2><p class=note>{e(means_legend)}</p>" + _table(header, _cells(rows))
             + _html_notes(_mean_notes(summary)), plot_means(summary) or ""]
    if summary["differences"]:
        header, rows = _difference_rows(summary)
        parts += [f"<h2>Paired differences from {e(str(summary['baseline']))}</h2><p class=note>{e(diff_legend)}"
                  "</p>" + _table(header, _cells(rows)) + _html_notes(_difference_notes(summary)),
                  plot_differences(summary) or ""]
    if summary.get("note"):
        parts.append(f"<p class=warn>note: {e(summary['note'])}</p>")
    parts.append("<h2>Settings</h2>" + _table(["variant", "sets"], [
        [(name, False), (" ".join(v["sets"]) or "-", False)] for name, v in summary["variants"].items()]))
    failed = [(name, v["error"]) for name, v in summary["variants"].items() if v["error"]]
    if failed:
        parts.append("<h2>Failed variants</h2>" + "".join(
            f"<h3>{e(name)}</h3><pre>{e(str(err))}</pre>" for name, err in failed))
    title = e(", ".join(summary["variants"]))
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>witbuild experiment — {title}"
            f"</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _write(path: Path, text: str) -> None:
    """Through a temporary file: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_html(summary: Mapping[str, Any], path: str | Path) -> None:
    """Write the page for :func:`summarize`'s output."""
    _write(Path(path), render_html(summary))


def write_report(results: Mapping[str, Any], folder: str | Path) -> dict:
    """Write ``experiment.json`` (the results and their summary) and ``report.html``; return the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    _write(folder / "experiment.json", json.dumps({"results": results, "summary": summary}, indent=2) + "\n")
    write_html(summary, folder / "report.html")
    log.info("wrote %s and %s", folder / "experiment.json", folder / "report.html")
    return summary


def failed_variants(summary: Mapping[str, Any]) -> list[str]:
    """The variants whose build or any training run failed: an experiment with one is no clean result, and its
    exit status should say so once the report is written."""
    return [name for name, v in summary["variants"].items() if v.get("error")]
