"""``witbuild stats``: numbers against hand-computed values, the JSON schema, the HTML page, bad input.

Why a hand-made build: every number of a small build folder written here with pyarrow can be worked out by hand
(the comments show how), which a Spark build cannot offer; one test then runs on a real img2dataset output
(img2dataset's downloader against the demo image server) so the reader also meets the files img2dataset writes.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from witbuild import schemas
from witbuild.stats import StatsError, TarCheck, collect_stats
from witbuild.stats.cli import stats_command
from witbuild.stats.dists import IntDist, RatioDist, concentration, rank_frequency
from witbuild.stats.textlen import char_counts, word_counts

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "stats_report.schema.json"

# ------------------------------------------------------------------------------------------------ the hand-made build

ENTRIES = ["cat", "dog", "red", "zebra", "sky", "tree"]
C_E = [50, 10, 5, 0, 3, 1]  # matches per entry before balancing
KEPT = [8, 8, 5, 0, 3, 1]  # after balancing with t = 8: head entries (c_e > 8) capped near 8, the tail kept whole
T = 8.0

# (key, url, caption, status, error_message, width, height, original_width, original_height, lang, matched)
SHARD0 = [
    ("00000000", "http://img.test/a.jpg", "a red cat", "success", None, 256, 192, 640, 480, "en", [0, 2]),
    ("00000001", "http://img.test/b.PNG?w=1", "dog", "success", None, 100, 100, 100, 100, "de", [1]),
    ("00000002", "http://img.test/c", "the  red car on a road", "success", None, 256, 128, 300, 150, "en", [0, 2, 4]),
    ("00000003", "http://img.test/d.jpg", "lost", "failed_to_download", "HTTP Error 404: Not Found",
     None, None, None, None, "en", [0]),
]
SHARD1 = [
    ("00010000", "http://img.test/e.webp", "café\u00a0☕ sky", "success", None, 200, 100, 200, 100, None, [4]),
    ("00010001", "http://img.test/f.jpeg", "tree tree", "success", None, 150, 300, 150, 300, "en", [0, 5]),
    ("00010002", "http://img.test/g.jpg", "slow", "failed_to_download", "timed out", None, None, None, None, "en", [0]),
    ("00010003", "http://img.test/h.jpg", "broken", "failed_to_resize", "Image decoding error",
     None, None, None, None, "en", [1]),
]
FINAL = {"00000.tar": SHARD0[:3], "00001.tar": SHARD1[:1]}  # finalize dropped 00010001 (same sha256 as another)

STAGE_COUNTS = {
    "extract": ("images", 20, 14, {"empty_text": 4, "svg": 2}, {}),
    "filter": ("rows", 14, 11, {"too_few_words": 2, "lang_not_allowed": 1}, {}),
    "match": ("rows", 11, 10, {"no_match": 1}, {"querylist_version": "v1test", "querylist_entries": 6}),
    "balance": ("rows", 10, 9, {"balanced_out": 1}, {"t": T, "pool": 10, "expected_size": 9.2, "head_entries": 2,
                                                     "tail_entries": 3, "querylist_version": "v1test"}),
    "dedup": ("rows", 9, 8, {"duplicate_url_text": 1}, {"one_text_per_image": False}),
    "download": ("rows", 8, 5, {"http_404": 1, "timeout": 1, "undecodable": 1}, {"shards": 2}),
    "finalize": ("images", 5, 4, {"duplicate_image_sha256": 1}, {"shards": 2}),
}


def img2dataset_table(rows: list[tuple]) -> pa.Table:
    """Shard metadata in img2dataset's column order (input columns, then key, status, ... sha256)."""
    cols = {"url": pa.array([r[1] for r in rows], pa.string()),
            "caption": pa.array([r[2] for r in rows], pa.string()),
            "uid": pa.array([f"uid{r[0]}" for r in rows], pa.string()),
            "page_url": pa.array(["http://page.test/"] * len(rows), pa.string()),
            "matched": pa.array([r[10] for r in rows], pa.list_(pa.int32())),
            "lang": pa.array([r[9] for r in rows], pa.string()),
            "key": pa.array([r[0] for r in rows], pa.string()),
            "status": pa.array([r[3] for r in rows], pa.string()),
            "error_message": pa.array([r[4] for r in rows], pa.string())}
    for i, name in enumerate(("width", "height", "original_width", "original_height")):
        cols[name] = pa.array([r[5 + i] for r in rows], pa.int32())
    cols["exif"] = pa.nulls(len(rows), pa.string())
    cols["sha256"] = pa.array([f"{i:064x}" if r[3] == "success" else None for i, r in enumerate(rows)], pa.string())
    return pa.table(cols)


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_members(rows: list[tuple], ext: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for r in rows:
        if r[3] == "success":
            out[f"{r[0]}.{ext}"] = b"\xff\xd8 not decoded by stats " + r[0].encode()
            out[f"{r[0]}.txt"] = r[2].encode()
            out[f"{r[0]}.json"] = json.dumps({"key": r[0], "caption": r[2]}).encode()
    return out


def counts_dict(unit: str, rows_in: int, rows_out: int, dropped: dict, info: dict) -> dict:
    return {"unit": unit, "rows_in": rows_in, "rows_out": rows_out, "rows_dropped": sum(dropped.values()),
            "dropped": dropped, "events": {}, "info": info}


def write_stage(out: Path, name: str) -> Path:
    stage = out / "stages" / name
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "_SUCCESS").touch()
    (stage / "_counts.json").write_text(json.dumps(counts_dict(*STAGE_COUNTS[name])))
    return stage


def make_build(out: Path, until: str = "finalize") -> Path:
    """A build output folder as witbuild writes it, with the data above."""
    names = list(STAGE_COUNTS)[: list(STAGE_COUNTS).index(until) + 1]
    out.mkdir(parents=True)
    (out / "build_config.yaml").write_text("dedup:\n  one_text_per_image: false\n  exact_image: true\n"
                                           "  near_dup: true\n  decontaminate: null\n")
    ql = out / "querylist"
    ql.mkdir()
    (ql / "entries.txt").write_text("".join(e + "\n" for e in ENTRIES))
    (ql / "manifest.json").write_text(json.dumps({"version": "v1test", "entries": len(ENTRIES)}))
    for name in names:
        write_stage(out, name)
    if "match" in names:
        matched = [r for r in SHARD0 + SHARD1]
        pq.write_table(pa.table({"text": [r[2] for r in matched], "lang": [r[9] for r in matched],
                                 "matched": pa.array([r[10] for r in matched], pa.list_(pa.int32()))}),
                       out / "stages" / "match" / "part-00000-x.parquet")
    if "balance" in names:
        table = schemas.load("entry_counts").table({
            "entry_id": list(range(len(ENTRIES))), "entry": ENTRIES, "count": C_E,
            "probability": [min(1.0, T / c) if c else 1.0 for c in C_E], "kept": KEPT})
        pq.write_table(table, out / "stages" / "balance" / "_entry_counts.parquet")
    if "download" in names:
        dl = out / "stages" / "download"
        for shard, rows in (("00000", SHARD0), ("00001", SHARD1)):
            pq.write_table(img2dataset_table(rows), dl / f"{shard}.parquet", row_group_size=2)
            write_tar(dl / f"{shard}.tar", sample_members(rows, "jpg"))
            ok = sum(r[3] == "success" for r in rows)
            (dl / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows), "successes": ok}))
    if "finalize" in names:
        fin = out / "stages" / "finalize"
        index = fin / "index.parquet"
        index.mkdir()
        for i, (shard, rows) in enumerate(FINAL.items()):
            write_tar(fin / shard, sample_members(rows, "jpg" if i == 0 else "webp"))
            pq.write_table(schemas.load("index").table({
                "key": [r[0] for r in rows], "shard": [shard] * len(rows), "url": [r[1] for r in rows],
                "text": [r[2] for r in rows], "uid": [f"uid{r[0]}" for r in rows],
                "page_url": ["http://page.test/"] * len(rows), "matched": [r[10] for r in rows],
                "lang": [r[9] for r in rows], "width": [r[5] for r in rows], "height": [r[6] for r in rows],
                "original_width": [r[7] for r in rows], "original_height": [r[8] for r in rows],
                "sha256": [f"{j:064x}" for j in range(len(rows))], "phash": ["0" * 16] * len(rows),
                "clip_score": [0.25 + 0.125 * i + 0.0625 * j for j in range(len(rows))],
                "clip_embedding": [None] * len(rows)}),
                index / f"part-{i:05d}-x.zstd.parquet")
        (fin / "sizes.json").write_text(json.dumps({s: len(r) for s, r in FINAL.items()}))
    report = {"witbuild_version": "0.1.0", "spark_version": "4.3.0", "output": str(out),
              "stages": {n: {**counts_dict(*STAGE_COUNTS[n]), "seconds": 1.0, "skipped": False} for n in names}}
    (out / "build_report.json").write_text(json.dumps(report, indent=1))
    return out


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    return make_build(tmp_path / "build")


def run_cli(*args: str) -> tuple[int, str, str]:
    """``witbuild stats ARGS`` through typer, as the mounted command runs; (exit code, stdout, stderr)."""
    app = typer.Typer(add_completion=False)
    app.command()(stats_command)
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def validate(report: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the --json output (dev extra)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(report)


def hand_entropy(x: list[int]) -> float:
    total = sum(x)
    return -sum(c / total * math.log2(c / total) for c in x if c)


def hand_gini(x: list[int]) -> float:
    """Mean absolute difference over twice the mean: an independent formula from the implementation's."""
    n, mean = len(x), sum(x) / len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


# ------------------------------------------------------------------------------------------------ numbers


def test_build_numbers_match_hand_computed_values(build: Path) -> None:
    r = collect_stats(build, top=3)
    assert r["dataset"] == {"kind": "build", "dataset_dir": "stages/finalize", "stage": "finalize",
                            "samples_from": "stages/finalize/index.parquet", "has_images": True}
    assert r["notes"] == [] and r["warnings"] == []
    sc = r["clip_scores"]  # index scores 0.25, 0.3125, 0.375 (shard 0) and 0.375 (shard 1)
    assert (sc["count"], sc["min"], sc["max"], sc["mean"]) == (4, 0.25, 0.375, 0.3281)
    assert sc["percentiles"]["p50"] == pytest.approx(0.3125, abs=6e-4) and sum(sc["histogram"]["counts"]) == 4

    tot = r["totals"]
    assert (tot["samples"], tot["shards"], tot["parquet_files"]) == (4, 2, 2)
    assert tot["samples_per_shard"] == {"shards": 2, "min": 1, "median": 2, "max": 3, "mean": 2.0}
    fin = build / "stages" / "finalize"
    assert tot["dataset_bytes"] == sum(p.stat().st_size for p in fin.rglob("*") if p.is_file())
    assert tot["total_bytes"] == sum(p.stat().st_size for p in build.rglob("*") if p.is_file())

    stages = r["funnel"]["stages"]
    assert [s["stage"] for s in stages] == list(STAGE_COUNTS)
    assert r["funnel"]["source"] == "build_report.json"
    for s in stages:
        unit, rows_in, rows_out, dropped, _ = STAGE_COUNTS[s["stage"]]
        assert (s["unit"], s["rows_in"], s["rows_out"], s["dropped"]) == (unit, rows_in, rows_out, dropped)
    assert stages[0]["kept_share"] == pytest.approx(14 / 20)

    # downloads: 8 rows, 5 successes; one 404, one timeout, one undecodable
    d = r["downloads"]
    assert (d["rows"], d["success"], d["failed"], d["success_rate"]) == (8, 5, 3, 0.625)
    assert d["status"] == {"success": 5, "failed_to_download": 2, "failed_to_resize": 1}
    classes = {f["class"]: (f["count"], f["share"], f["examples"][0]["message"]) for f in d["failures_by_class"]}
    assert classes == {"http_404": (1, pytest.approx(1 / 3, abs=1e-6), "HTTP Error 404: Not Found"),
                       "timeout": (1, pytest.approx(1 / 3, abs=1e-6), "timed out"),
                       "undecodable": (1, pytest.approx(1 / 3, abs=1e-6), "Image decoding error")}

    # captions of the 4 final samples: words [3, 1, 6, 3] ("café\u00a0☕ sky": the no-break space splits), sorted
    # [1, 3, 3, 6]; nearest rank: p25 = 1st = 1, p50 = 2nd = 3, p75 = 3rd = 3, p95 = 4th = 6; mean 13/4
    c = r["captions"]
    assert (c["count"], c["missing"]) == (4, 0)
    w = c["words"]
    assert (w["count"], w["min"], w["max"], w["mean"]) == (4, 1, 6, 3.25)
    assert w["percentiles"] == {"p1": 1, "p5": 1, "p25": 1, "p50": 3, "p75": 3, "p95": 6, "p99": 6}
    assert w["histogram"] == {"edges": [1, 2, 3, 4, 5, 6, 7], "counts": [1, 0, 2, 0, 0, 1],
                              "underflow": 0, "overflow": 0}
    # characters [9, 3, 22, 10] -> sorted [3, 9, 10, 22]; mean 44/4
    ch = c["chars"]
    assert (ch["min"], ch["max"], ch["mean"]) == (3, 22, 11.0)
    assert ch["percentiles"] == {"p1": 3, "p5": 3, "p25": 3, "p50": 9, "p75": 10, "p95": 22, "p99": 22}
    assert sum(ch["histogram"]["counts"]) + ch["histogram"]["overflow"] == 4
    assert {x["lang"]: (x["count"], x["share"]) for x in c["languages"]} == {
        "en": (2, 0.5), "de": (1, 0.25), "unknown": (1, 0.25)}

    # images: widths [256, 100, 256, 200] -> sorted [100, 200, 256, 256]
    im = r["images"]
    assert im["count"] == 4
    assert (im["width"]["min"], im["width"]["percentiles"]["p50"], im["width"]["max"], im["width"]["mean"]) == (
        100, 200, 256, 203.0)
    assert im["original_height"]["percentiles"]["p75"] == 150  # [100, 100, 150, 480]
    # aspect 640/480, 1, 2, 2 -> sorted [1, 4/3, 2, 2]: p50 = 4/3, p25 = 1, p75 = 2; mean (4/3 + 5) / 4
    a = im["aspect_ratio"]
    assert (a["min"], a["max"]) == (1.0, 2.0)
    assert a["mean"] == pytest.approx((4 / 3 + 5) / 4, abs=1e-4)
    assert a["percentiles"]["p25"] == pytest.approx(1.0, rel=1e-3)
    assert a["percentiles"]["p50"] == pytest.approx(4 / 3, rel=1e-3)
    assert a["percentiles"]["p75"] == pytest.approx(2.0, rel=1e-3)
    assert sum(a["histogram"]["counts"]) == 4
    assert {x["format"]: x["count"] for x in im["formats"]["stored"]} == {"jpg": 3, "webp": 1}
    assert {x["format"]: x["count"] for x in im["formats"]["source"]} == {"jpg": 1, "png": 1, "none": 1, "webp": 1}

    # queries: c_e [50, 10, 5, 0, 3, 1], t = 8 -> head {cat, dog}, tail {red, sky, tree}, zebra never matched
    q = r["queries"]
    assert (q["entries"], q["matched_entries"], q["unmatched_entries"], q["t"]) == (6, 5, 1, 8.0)
    assert q["querylist_version"] == "v1test"
    assert q["head"] == {"entries": 2, "matches_before": 60, "matches_after": 16}
    assert q["tail"] == {"entries": 3, "matches_before": 9, "matches_after": 9}
    assert [(e["entry"], e["count"]) for e in q["top_before"]] == [("cat", 50), ("dog", 10), ("red", 5)]
    assert [(e["entry"], e["kept"]) for e in q["top_after"]] == [("cat", 8), ("dog", 8), ("red", 5)]
    for key, values in (("before", [50, 10, 5, 3, 1]), ("after", [8, 8, 5, 3, 1]), ("final", [2, 1, 2, 2, 0])):
        m = q[key]
        assert (m["entries"], m["total"], m["max"]) == (5, sum(values), max(values)), key
        assert m["entropy_bits"] == pytest.approx(hand_entropy(values), abs=1e-6), key
        assert m["normalized_entropy"] == pytest.approx(hand_entropy(values) / math.log2(5), abs=1e-6), key
        assert m["gini"] == pytest.approx(hand_gini(values), abs=1e-6), key
    assert q["before"]["gini"] > q["after"]["gini"]  # balancing flattens the distribution
    assert q["rank_frequency"]["before"] == {"ranks": [1, 2, 3, 4, 5], "counts": [50, 10, 5, 3, 1]}
    assert q["rank_frequency"]["after"] == {"ranks": [1, 2, 3, 4, 5], "counts": [8, 8, 5, 3, 1]}

    # duplicates removed by each layer (the build config says which layers were on)
    assert [(x["stage"], x["layer"], x["enabled"], x["removed"]) for x in r["duplicates"]] == [
        ("dedup", "duplicate_url_text", True, 1), ("dedup", "duplicate_url", False, 0),
        ("dedup", "repeated_url", None, 0),  # a build whose dedup counts do not say whether each URL was fetched once
        ("finalize", "duplicate_image_sha256", True, 1), ("finalize", "near_duplicate_phash", True, 0),
        ("finalize", "eval_contamination", False, 0)]
    assert r["tars"] == {"mode": "quick", "checked": 2}
    validate(r)


def test_full_tar_check_counts_every_image(build: Path) -> None:
    r = collect_stats(build, tar_check=TarCheck.full)
    assert {x["format"]: x["count"] for x in r["images"]["formats"]["stored"]} == {"jpg": 3, "webp": 1}
    assert r["warnings"] == []
    none = collect_stats(build, tar_check=TarCheck.none)
    assert none["images"]["formats"]["stored"] == [] and none["tars"]["checked"] == 0


def test_streaming_batches_and_threads_do_not_change_the_numbers(build: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """Batches of 1 row over 3 threads fold into the same report as whole files on one thread."""
    import witbuild.stats.collect as collect_mod

    seen: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for b in real(self, *args, **kwargs):
            seen.append(b.num_rows)
            yield b

    one = collect_stats(build, workers=1)
    monkeypatch.setattr(collect_mod, "BATCH_ROWS", 1)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    many = collect_stats(build, workers=3)
    assert seen and max(seen) == 1  # every file was read through iter_batches, in batches
    assert many == one


def test_build_stopped_after_match_reports_queries_before_balancing(tmp_path: Path) -> None:
    out = make_build(tmp_path / "b", until="match")
    r = collect_stats(out)
    assert r["dataset"]["stage"] == "match" and not r["dataset"]["has_images"]
    assert r["images"] is None and r["downloads"] is None and r["duplicates"] is None
    assert any("stopped at stage match: no downloads or images yet" in n for n in r["notes"])
    assert any("no dedup layers" in n for n in r["notes"])
    assert r["totals"]["samples"] == 8 and r["totals"]["samples_per_shard"] is None
    q = r["queries"]
    # matched column of the 8 match rows: entry 0 x5, 1 x2, 2 x2, 4 x2, 5 x1
    assert q["source"].startswith("stages/match")
    assert [(e["entry"], e["count"]) for e in q["top_before"][:2]] == [("cat", 5), ("dog", 2)]
    assert q["after"] is None and q["top_after"] is None and q["matched_entries"] == 5
    # counted per row, which is not balancing's c_e (distinct pairs): the report says which it counted
    assert q["counted"] == "rows" and "witbuild balance-plan" in q["source"]
    from rich.console import Console

    from witbuild.stats.render import print_report

    console = Console(record=True, width=200)
    print_report(r, console)
    text = console.export_text()
    assert re.search(r"top before balancing\s+┃\s+rows\s+┃", text) and "┃ c_e ┃" not in text
    validate(r)


def test_build_without_finalize_uses_the_download_successes(tmp_path: Path) -> None:
    out = make_build(tmp_path / "b", until="download")
    r = collect_stats(out)
    assert r["dataset"]["stage"] == "download" and r["totals"]["samples"] == 5
    assert r["totals"]["samples_per_shard"] == {"shards": 2, "min": 2, "median": 2.5, "max": 3, "mean": 2.5}
    assert r["captions"]["words"]["max"] == 6 and r["downloads"]["rows"] == 8
    assert [x["layer"] for x in r["duplicates"]] == ["duplicate_url_text", "duplicate_url", "repeated_url"]
    assert r["queries"]["final"]["total"] == 2 + 1 + 3 + 1 + 2  # the 5 successes' matched lists
    validate(r)


def test_plain_img2dataset_folder_and_a_finalize_folder_alone(build: Path) -> None:
    r = collect_stats(build / "stages" / "download")
    assert r["dataset"]["kind"] == "img2dataset" and r["funnel"] is None and r["queries"] is None
    assert any("plain img2dataset" in n for n in r["notes"])
    assert (r["totals"]["samples"], r["totals"]["shards"], r["downloads"]["success"]) == (5, 2, 5)
    validate(r)
    f = collect_stats(build / "stages" / "finalize")
    assert f["dataset"]["kind"] == "final" and f["totals"]["samples"] == 4 and f["downloads"] is None
    validate(f)


# ------------------------------------------------------------------------------------------------ building blocks


def test_word_and_char_counts_agree_with_python() -> None:
    rng = np.random.default_rng(0)
    alphabet = [*"ab c\t\n\r\x0b\x0c\x1c\x1f\x00\x08é日☕", "\u00a0", "\u3000", "\u2009", "\u202f", "\x85", "\u200b",
                "\u2028", "\u1680", "\u205f"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 14))) for _ in range(5000)]
    arr = pa.array(texts)
    assert word_counts(arr).tolist() == [len(t.split()) for t in texts]
    assert word_counts(arr.slice(11, 300)).tolist() == [len(t.split()) for t in texts[11:311]]
    assert word_counts(pa.array(texts, pa.large_string())).tolist() == [len(t.split()) for t in texts]
    assert char_counts(arr).tolist() == [len(t) for t in texts]
    assert word_counts(pa.array(["", "   "])).tolist() == [0, 0]


def test_distributions_merge_exactly() -> None:
    values = np.array([5, 1, 9, 9, 3, 1_000_000_000, 0])
    whole, a, b = IntDist(), IntDist(), IntDist()
    whole.add(values)
    a.add(values[:3])
    b.add(values[3:])
    a.merge(b)
    assert a.summary() == whole.summary()
    s = whole.summary()
    assert (s["min"], s["max"], s["count"]) == (0, 1_000_000_000, 7)  # exact beyond the bin cap
    assert s["percentiles"]["p50"] == 5  # sorted [0, 1, 3, 5, 9, 9, 1e9]: rank ceil(3.5) = 4
    tail = IntDist()
    tail.add(np.concatenate([np.arange(200) % 10, [1_000_000_000]]))
    h = tail.summary()["histogram"]
    assert h["edges"] == list(range(11)) and h["counts"] == [20] * 10 and h["overflow"] == 1  # p99 = 9: tail apart
    ratios = RatioDist()
    ratios.add(np.array([1.0, 2.0, 0.5, np.nan, 0.0, np.inf]))
    rs = ratios.summary()
    assert rs["count"] == 3 and rs["percentiles"]["p50"] == pytest.approx(1.0)
    assert rs["histogram"]["edges"][0] == 0.5 and sum(rs["histogram"]["counts"]) == 3
    assert concentration(np.array([4, 4, 4, 4]))["gini"] == pytest.approx(0.0)
    assert concentration(np.array([4, 4, 4, 4]))["normalized_entropy"] == pytest.approx(1.0)
    assert concentration(np.array([0, 0, 0, 12]))["gini"] == pytest.approx(hand_gini([0, 0, 0, 12]))
    rf = rank_frequency(np.arange(1, 10_001))
    assert rf["ranks"][0] == 1 and rf["ranks"][-1] == 10_000 and rf["counts"][0] == 10_000 and len(rf["ranks"]) <= 200


# ------------------------------------------------------------------------------------------------ the command


def test_json_output_validates_and_terminal_tables_show_the_sections(build: Path) -> None:
    code, out, err = run_cli(str(build), "--json", "--top", "2")
    assert code == 0, err
    report = json.loads(out)
    validate(report)
    assert report["totals"]["samples"] == 4 and len(report["queries"]["top_before"]) == 2

    code, out, err = run_cli(str(build))
    assert code == 0, err
    for text in ("Totals", "Funnel", "extract", "Downloads", "http_404", "Captions", "Languages", "Images",
                 "Queries", "head (c_e > t)", "'cat'", "Gini", "Duplicates removed", "duplicate_image_sha256"):
        assert text in out, text


def test_html_report_embeds_its_plots(build: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    code, _, err = run_cli(str(build), "--html", str(page))
    assert code == 0, err
    text = page.read_text()
    images = re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)
    alts = [a for a, _ in images]
    for wanted in ("funnel", "Download failures by class", "Caption length", "Languages", "Original size",
                   "Aspect ratio (original width / height)", "query rank-frequency before and after balancing"):
        assert wanted in alts, (wanted, alts)
    for _, data in images:
        import io

        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.format == "PNG" and img.width > 300 and img.height > 100
    assert "src=\"http" not in text and "<script" not in text  # self-contained
    # the gallery: every group with its captions; these fixture images do not decode and say so, the page renders
    gallery = text[text.index("<h2>Samples</h2>"):]
    for title in ("A random sample", "Highest CLIP scores", "Lowest CLIP scores", "Head query entry 'cat'"):
        assert title.replace("'", "&#x27;") in gallery, title
    assert "a red cat" in gallery and "not decodable" in gallery


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow  # starts headless Chromium: 13-21 s measured
def test_html_report_renders_in_headless_chromium(build: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install -y --no-install-recommends chromium")
    from PIL import Image

    page = tmp_path / "report.html"
    code, _, err = run_cli(str(build), "--html", str(page))
    assert code == 0, err
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           page.resolve().as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium's own helper processes too
        proc.communicate()
        pytest.fail("chromium did not finish its screenshot in 90 s")
    assert shot.is_file(), stderr.decode(errors="replace")[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    px = np.asarray(img).reshape(-1, 3)
    colours = len(np.unique(px, axis=0))
    not_white = float((px < 245).any(axis=1).mean())
    keep = os.environ.get("WITBUILD_STATS_SCREENSHOT")  # e.g. to look at the page: copy the screenshot there
    if keep:
        shutil.copy(shot, keep)
    assert colours > 200, colours  # text, tables and plots, not a blank or error page
    assert not_white > 0.03, not_white


# ------------------------------------------------------------------------------------------------ bad input


def _fails(*args: str) -> str:
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: "), err
    return err


def test_missing_path_and_not_a_dataset(tmp_path: Path) -> None:
    err = _fails(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in err and "no such file" in err
    (tmp_path / "empty").mkdir()
    err = _fails(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in err and "neither a build output folder" in err
    (tmp_path / "file.txt").write_text("x")
    assert "not a folder" in _fails(str(tmp_path / "file.txt"))


def test_a_build_given_as_a_file_url_is_read_as_the_build_wrote_it(build: Path) -> None:
    """``--output file:///x`` builds in /x and prints that URL: stats reads it back; another filesystem's URL is
    one error line."""
    code, out, err = run_cli(f"file://{build}", "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(run_cli(str(build), "--json")[1])
    assert run_cli(f"file:{build}", "--json")[0] == 0
    assert "on this machine" in _fails("memory://bucket/build")
    assert "s3://bucket/build" in _fails("s3://bucket/build")  # without s3fs: said, not a traceback


def test_empty_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    failed = [r for r in SHARD0 + SHARD1 if r[3] != "success"]
    pq.write_table(img2dataset_table(failed), folder / "00000.parquet")
    write_tar(folder / "00000.tar", {})
    err = _fails(str(folder))
    assert str(folder) in err and "empty dataset" in err and "0 of 3 downloads succeeded" in err
    pq.write_table(img2dataset_table([]), folder / "00000.parquet")
    assert "empty dataset" in _fails(str(folder))


def test_parquet_without_the_expected_columns_is_named(build: Path) -> None:
    bad = build / "stages" / "finalize" / "index.parquet" / "part-00001-x.zstd.parquet"
    pq.write_table(pa.table({"key": ["k"], "caption": ["c"]}), bad)
    err = _fails(str(build), "--json")
    assert str(bad) in err and "missing column(s)" in err and "text" in err
    shard = build / "stages" / "download" / "00001.parquet"
    pq.write_table(img2dataset_table(SHARD1).drop_columns(["status"]), shard)
    err = _fails(str(build / "stages" / "download"))
    assert str(shard) in err and "status" in err
    shard.write_bytes(b"this is not parquet at all")
    err = _fails(str(build / "stages" / "download"))
    assert str(shard) in err and "not a readable Parquet file" in err


def test_column_types_are_checked_and_harmless_variants_read(build: Path) -> None:
    """A width of strings is named; an all-null lang (pandas writes type null) and dictionary strings are read."""
    shards = build / "stages" / "download"
    table = img2dataset_table(SHARD1)
    pq.write_table(table.set_column(table.schema.get_field_index("lang"), "lang", pa.nulls(len(SHARD1)))
                   .set_column(table.schema.get_field_index("status"), "status",
                               table.column("status").dictionary_encode()), shards / "00001.parquet")
    r = collect_stats(shards)
    assert r["downloads"]["status"] == {"success": 5, "failed_to_download": 2, "failed_to_resize": 1}
    assert {x["lang"]: x["count"] for x in r["captions"]["languages"]} == {"en": 2, "de": 1, "unknown": 2}
    pq.write_table(table.set_column(table.schema.get_field_index("width"), "width",
                                    pa.array([str(r[5]) for r in SHARD1])), shards / "00001.parquet")
    err = _fails(str(shards))
    assert str(shards / "00001.parquet") in err and "column width is string, expected integer" in err


def test_corrupt_tar_is_named(build: Path) -> None:
    tar = build / "stages" / "finalize" / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:1500])  # cut mid-member
    err = _fails(str(build))
    assert str(tar) in err and "corrupt tar" in err
    tar.write_bytes(data[:2048])  # cut on a block boundary: no end-of-archive marker
    assert str(tar) in _fails(str(build))
    tar.write_bytes(b"\x01" * 512 + b"\0" * 1024)  # whole blocks and an end marker, but a garbage header
    err = _fails(str(build), "--tars", "full")
    assert str(tar) in err and "not a readable tar" in err
    tar.write_bytes(data)
    assert run_cli(str(build), "--tars", "full")[0] == 0


def test_damaged_build_report_is_named(build: Path) -> None:
    (build / "build_report.json").write_text("{not json")
    err = _fails(str(build))
    assert str(build / "build_report.json") in err and "not readable JSON" in err
    (build / "build_report.json").write_text(json.dumps({"stages": {"extract": {"rows_in": "many"}}}))
    assert "counts are not integers" in _fails(str(build))


def test_stats_error_is_the_api_error(tmp_path: Path) -> None:
    with pytest.raises(StatsError, match="no such file"):
        collect_stats(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ real img2dataset


@pytest.mark.slow  # a real img2dataset run: 10-45 s measured
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_real_img2dataset_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """img2dataset's own writer against the demo image server: every number checked against its Parquet."""
    pytest.importorskip("img2dataset")
    from img2dataset import download

    from witbuild.demo.images import ImageServer

    with ImageServer() as server:
        rows = [(server.url(f"/gen/{i}.{ext}?w={w}&h={h}"), f"generated image number {i} " + "word " * (i % 4))
                for i, (ext, w, h) in enumerate([("jpg", 320, 240), ("png", 256, 256), ("jpg", 400, 200),
                                                 ("webp", 300, 300), ("gif", 240, 320), ("jpg", 500, 250)])]
        rows += [(server.url("/fault/404"), "missing image"), (server.url("/fault/corrupt.jpg"), "corrupt image"),
                 (server.url("/fault/html.jpg"), "a page, not an image")]
        url_list = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows],
                                 "lang": ["en"] * (len(rows) - 2) + ["fr", "fr"]}), url_list)
        (tmp_path / "tmp").mkdir()
        monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
        monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
        out = tmp_path / "ds"
        sigint = signal.getsignal(signal.SIGINT)
        try:
            download(url_list=str(url_list), output_folder=str(out), output_format="webdataset",
                     input_format="parquet", url_col="url", caption_col="caption", save_additional_columns=["lang"],
                     enable_wandb=False, processes_count=1, thread_count=4, timeout=5, retries=0, image_size=128,
                     number_sample_per_shard=4, distributor="multiprocessing", compute_hash="sha256")
        finally:
            signal.signal(signal.SIGINT, sigint)  # download() installs its own SIGINT handler in the caller

    meta = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))]).to_pylist()
    ok = [m for m in meta if m["status"] == "success"]
    assert len(meta) == len(rows) and len(ok) == 6, [(m["url"], m["error_message"]) for m in meta]
    r = collect_stats(out, tar_check=TarCheck.full)
    validate(r)
    assert r["dataset"]["kind"] == "img2dataset" and r["warnings"] == []
    assert r["totals"]["samples"] == 6 and r["totals"]["shards"] == len(list(out.glob("*.tar"))) == 3
    per_shard = sorted(sum(m["status"] == "success" and m["key"].startswith(t.stem) for m in meta)
                       for t in out.glob("*.tar"))
    sps = r["totals"]["samples_per_shard"]
    assert (sps["min"], sps["max"]) == (per_shard[0], per_shard[-1])
    d = r["downloads"]
    assert (d["rows"], d["success"]) == (9, 6)
    # the three failures, by hand: img2dataset 1.47 says "HTTP Error 404: Not Found" for the 404 and "Image decoding
    # error" for the corrupt JPEG and for the HTML page served as a JPEG; the report counts them by class, most first
    failed = {m["url"].rsplit("/", 1)[1]: m["error_message"] for m in meta if m["status"] != "success"}
    assert failed == {"404": "HTTP Error 404: Not Found", "corrupt.jpg": "Image decoding error",
                      "html.jpg": "Image decoding error"}
    assert [(f["class"], f["count"], [(e["message"], e["count"]) for e in f["examples"]])
            for f in d["failures_by_class"]] == [("undecodable", 2, [("Image decoding error", 2)]),
                                                 ("http_404", 1, [("HTTP Error 404: Not Found", 1)])]
    assert r["captions"]["words"]["max"] == max(len(m["caption"].split()) for m in ok)
    assert r["captions"]["chars"]["min"] == min(len(m["caption"]) for m in ok)
    assert {x["lang"]: x["count"] for x in r["captions"]["languages"]} == {"en": 6}
    assert r["images"]["original_width"]["max"] == 500 and r["images"]["width"]["max"] == 128
    assert r["images"]["aspect_ratio"]["max"] == 2.0 and r["images"]["aspect_ratio"]["min"] == 0.75
    assert {x["format"]: x["count"] for x in r["images"]["formats"]["stored"]} == {"jpg": 6}  # re-encoded
    assert {x["format"]: x["count"] for x in r["images"]["formats"]["source"]} == {
        "jpg": 3, "png": 1, "webp": 1, "gif": 1}


def test_gallery_chooses_random_extremes_head_and_tail() -> None:
    from witbuild.stats.gallery import EXTREMES, RANDOM, choose

    rows = [{"key": f"{i:08d}", "shard": "00000.tar", "text": f"t{i}", "clip_score": i / 100,
             "matched": [0] if i % 2 else [1 + i % 7]} for i in range(50)]
    groups = dict(choose(rows, ["zero", "one"]))
    assert len(groups["A random sample"]) == RANDOM
    assert choose(rows[::-1], ["zero", "one"])[0][1] == groups["A random sample"]  # not the input order
    assert [r["key"] for r in groups["Highest CLIP scores"]] == [f"{i:08d}" for i in range(49, 49 - EXTREMES, -1)]
    assert [r["key"] for r in groups["Lowest CLIP scores"]] == [f"{i:08d}" for i in range(EXTREMES)]
    head = next(t for t in groups if t.startswith("Head"))
    assert head == "Head query entry 'zero' (25 samples)" and all(r["matched"] == [0] for r in groups[head])
    tail = next(t for t in groups if t.startswith("Tail"))
    assert tail == "Tail query entries entry 2 (3), entry 4 (3), entry 6 (3)"  # the fewest samples; no name: an id
    assert len(groups[tail]) == 6 and {r["matched"][0] for r in groups[tail]} == {2, 4, 6}
    assert [t for t, _ in choose([{**r, "clip_score": None, "matched": None} for r in rows], [])] == ["A random sample"]
