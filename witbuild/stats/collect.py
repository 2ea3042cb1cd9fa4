"""What ``witbuild stats`` measures, read from a build output folder or an img2dataset output folder.

Why it streams: a dataset's metadata can be tens of millions of rows. Every Parquet file is read by columns in
batches (``ParquetFile.iter_batches``), files spread over threads (Arrow and numpy release the GIL), each thread
folding its batches into its own accumulators (:mod:`witbuild.stats.dists`), merged at the end; memory stays at a
few batches per thread whatever the dataset's size. Tars are checked by their structure (quick: block size,
end-of-archive marker, first headers; full: every header), never extracted.

Bad input (a missing path, an empty dataset, a Parquet file without the expected columns, a corrupt tar) raises
:class:`StatsError` with a message naming the file; the command prints it and exits non-zero.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import statistics
import tarfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from witbuild import __version__
from witbuild import layout as build_layout
from witbuild.config import STAGES
from witbuild.download import error_class
from witbuild.stats import near_dups
from witbuild.stats.dists import IntDist, RatioDist, ScoreDist, concentration, rank_frequency
from witbuild.stats.options import TarCheck
from witbuild.stats.textlen import char_counts, word_counts

log = logging.getLogger(__name__)

REPORT_VERSION = 1
BATCH_ROWS = 65_536
# Arrow's pre-buffering coalesces the many small reads of img2dataset's 100-row row groups (twice as fast) but keeps
# every buffer until the file is closed: only for files this small, so a big Spark part file still streams
PRE_BUFFER_MAX_BYTES = 64 << 20
MAX_WORKERS = 8
IMAGE_EXTS = frozenset(build_layout.IMAGE_EXTS)
URL_EXT = r"\.(?P<ext>[A-Za-z0-9]{1,5})(?:$|[?#])"  # extension of the URL's path: the source format
DEDUP_LAYER = re.compile(r"dup|contamination")
FINALIZE_DIR, INDEX_DIR, SIZES_FILE = build_layout.FINALIZE_STAGE, build_layout.INDEX_DIR, build_layout.SIZES_FILE
ENTRY_COUNTS_FILE = build_layout.ENTRY_COUNTS_FILE
STAGES_DIR, REPORT_FILE, CONFIG_FILE = build_layout.STAGES_DIR, build_layout.REPORT_FILE, build_layout.CONFIG_FILE
QUERYLIST_DIR = build_layout.QUERYLIST_DIR
PRE_DOWNLOAD_WHY = {
    build_layout.BLOCKED_ADDRESS: "refused before any request (network policy)",
    build_layout.ROBOTS_DISALLOWED: "disallowed by the image host's robots.txt",
    build_layout.ROBOTS_UNREACHABLE: "the image host's robots.txt answered 5xx/429 or not at all: all disallowed",
    build_layout.NOT_WRITTEN: "in a finished shard, but img2dataset wrote no metadata row for it",
}
EXAMPLES_PER_CLASS = 3
MAX_LISTED = 5  # file names listed in one warning
MAX_ENTRY_ID = 100_000_000  # query lists hold ~500k entries; a larger id is damage, not an entry

STRING_COLUMNS = frozenset({"status", "error_message", "url", "caption", "text", "lang", "shard", "key"})

IMG2DATASET_REQUIRED = ("status", "error_message", "url", "width", "height", "original_width", "original_height")
INDEX_REQUIRED = ("key", "shard", "text", "width", "height", "original_width", "original_height")
IMAGE_COLUMNS = ("width", "height", "original_width", "original_height")


class StatsError(Exception):
    """Bad input: the message names the file; the command prints it and exits non-zero, without a traceback."""


# ------------------------------------------------------------------------------------------------ accumulators


@dataclass
class SampleStats:
    """Captions and images of the dataset's samples, folded batch by batch."""

    samples: int = 0
    caption_rows: int = 0
    null_captions: int = 0
    words: IntDist = field(default_factory=IntDist)
    chars: IntDist = field(default_factory=IntDist)
    langs: Counter = field(default_factory=Counter)
    image_rows: int = 0
    dims: dict[str, IntDist] = field(default_factory=lambda: {c: IntDist() for c in IMAGE_COLUMNS})
    aspect: RatioDist = field(default_factory=RatioDist)
    source_formats: Counter = field(default_factory=Counter)
    per_shard: Counter = field(default_factory=Counter)
    entry_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    clip_scores: ScoreDist = field(default_factory=ScoreDist)

    def merge(self, o: SampleStats) -> None:
        self.samples += o.samples
        self.caption_rows += o.caption_rows
        self.null_captions += o.null_captions
        self.words.merge(o.words)
        self.chars.merge(o.chars)
        self.langs.update(o.langs)
        self.image_rows += o.image_rows
        for c in IMAGE_COLUMNS:
            self.dims[c].merge(o.dims[c])
        self.aspect.merge(o.aspect)
        self.source_formats.update(o.source_formats)
        self.per_shard.update(o.per_shard)
        self.entry_counts = _add_counts(self.entry_counts, o.entry_counts)
        self.clip_scores.merge(o.clip_scores)


@dataclass
class DownloadStats:
    """img2dataset's verdict per row: statuses, failure messages, successes per shard."""

    rows: int = 0
    status: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)  # error_message of failed rows (None: no message)
    success_per_shard: Counter = field(default_factory=Counter)

    def merge(self, o: DownloadStats) -> None:
        self.rows += o.rows
        self.status.update(o.status)
        self.messages.update(o.messages)
        self.success_per_shard.update(o.success_per_shard)


@dataclass
class Part:
    """One thread's accumulators."""

    samples: SampleStats = field(default_factory=SampleStats)
    downloads: DownloadStats = field(default_factory=DownloadStats)
    matched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # c_e of a match stage

    def merge(self, o: Part) -> None:
        self.samples.merge(o.samples)
        self.downloads.merge(o.downloads)
        self.matched = _add_counts(self.matched, o.matched)


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b for count vectors of different lengths (in place in ``a`` when it is the longer)."""
    if len(b) > len(a):
        out = b.copy()
        out[: len(a)] += a
        return out
    a[: len(b)] += b
    return a


def _bincount_into(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add per-entry counts of ``values`` (entry ids; ids outside 0..MAX_ENTRY_ID are not entries)."""
    values = values[(values >= 0) & (values < MAX_ENTRY_ID)]
    if len(values) == 0:
        return acc
    return _add_counts(acc, np.bincount(values))


# ------------------------------------------------------------------------------------------------ reading Parquet


@dataclass(frozen=True)
class FileTask:
    """One Parquet file and what to take from it."""

    path: Path
    role: str  # a key of _ROLE_COLUMNS: what to fold (img2dataset: the downloads, and the successes as samples)
    shard: str | None = None  # the tar this metadata file describes (img2dataset shards)


def _value_counts(arr: pa.Array | pa.ChunkedArray) -> Iterator[tuple[Any, int]]:
    vc = pc.value_counts(arr)
    return zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)


def _ints(col: pa.Array) -> np.ndarray:
    return col.drop_null().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _fold_samples(s: SampleStats, batch: pa.RecordBatch, caption: str | None, images: bool, final_matched: bool,
                  shard: str | None) -> None:
    n = batch.num_rows
    names = batch.schema.names
    s.samples += n
    if caption is not None:
        col = batch.column(caption)
        s.caption_rows += n
        s.null_captions += col.null_count
        texts = col.drop_null() if col.null_count else col
        s.words.add(word_counts(texts))
        s.chars.add(char_counts(texts))
        if "lang" in names:
            for lang, c in _value_counts(batch.column("lang")):
                s.langs[lang] += c
        else:
            s.langs[None] += n
    if images:
        s.image_rows += n
        for c in IMAGE_COLUMNS:
            s.dims[c].add(_ints(batch.column(c)))
        w = batch.column("original_width").to_numpy(zero_copy_only=False)
        h = batch.column("original_height").to_numpy(zero_copy_only=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            s.aspect.add(np.asarray(w, dtype=np.float64) / np.asarray(h, dtype=np.float64))
        if "url" in names:
            ext = pc.struct_field(pc.extract_regex(batch.column("url"), URL_EXT), [0])
            for e, c in _value_counts(pc.utf8_lower(ext)):
                s.source_formats[e] += c
    if final_matched and "matched" in names:
        flat = pc.list_flatten(batch.column("matched")).drop_null()
        s.entry_counts = _bincount_into(s.entry_counts, flat.to_numpy(zero_copy_only=False).astype(np.int64))
    if "clip_score" in names:
        s.clip_scores.add(batch.column("clip_score").drop_null().to_numpy(zero_copy_only=False))
    if shard is not None:
        s.per_shard[shard] += n
    elif "shard" in names:
        for name, c in _value_counts(batch.column("shard")):
            s.per_shard[name] += c


def _fold_downloads(d: DownloadStats, batch: pa.RecordBatch, shard: str | None) -> pa.Array:
    """Statuses and failure messages of one batch; returns the success mask."""
    status = batch.column("status")
    d.rows += batch.num_rows
    for st, c in _value_counts(status):
        d.status[st] += c
    ok = pc.fill_null(pc.equal(status, "success"), False)
    failed = pc.invert(ok)
    for msg, c in _value_counts(batch.column("error_message").filter(failed)):
        d.messages[msg] += c
    if shard is not None:
        d.success_per_shard[shard] += int(pc.sum(ok).as_py() or 0)
    return ok


_ROLE_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # role: (required columns, optional columns, what the file should be)
    "img2dataset": (IMG2DATASET_REQUIRED, ("caption", "lang", "matched"), "img2dataset shard metadata"),
    "downloads": (("status", "error_message"), (), "img2dataset shard metadata"),
    "index": (INDEX_REQUIRED, ("lang", "matched", "url", "clip_score"), "a witbuild index (schemas/index.json)"),
    "stage": (("text",), ("lang",), "a witbuild stage output"),
    "matched": (("matched",), (), "a witbuild match stage output"),
    "match_stage": (("text", "matched"), ("lang",), "a witbuild match stage output"),
}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _column_casts(task: FileTask, schema: pa.Schema, columns: list[str], what: str) -> dict[str, pa.DataType]:
    """Check the columns' types; returns the casts that make them what the folding expects (null-typed columns
    that pandas writes when every value is missing, dictionary-encoded strings)."""
    casts: dict[str, pa.DataType] = {}
    for name in columns:
        t = schema.field(name).type
        if name in STRING_COLUMNS:
            ok, expected = _is_text(t) or pa.types.is_null(t) or (
                pa.types.is_dictionary(t) and _is_text(t.value_type)), "string"
            if ok and not _is_text(t):
                casts[name] = pa.string()
        elif name in IMAGE_COLUMNS:
            ok, expected = pa.types.is_integer(t) or pa.types.is_null(t), "integer"
            if pa.types.is_null(t):
                casts[name] = pa.int64()
        elif name == "clip_score":
            ok, expected = pa.types.is_floating(t) or pa.types.is_null(t), "float"
            if pa.types.is_null(t):
                casts[name] = pa.float32()
        else:  # matched
            ok, expected = pa.types.is_null(t) or ((pa.types.is_list(t) or pa.types.is_large_list(t))
                                                   and pa.types.is_integer(t.value_type)), "list<int32>"
            if pa.types.is_null(t):
                casts[name] = pa.list_(pa.int32())
        if not ok:
            raise StatsError(f"{task.path}: not {what}: column {name} is {t}, expected {expected}")
    return casts


def _cast(batch: pa.RecordBatch, casts: dict[str, pa.DataType]) -> pa.RecordBatch:
    cols = [pc.cast(c, casts[n]) if n in casts else c for n, c in zip(batch.schema.names, batch.columns, strict=True)]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _read_file(task: FileTask, part: Part, final_matched: bool, cancel: threading.Event) -> None:
    required, optional, what = _ROLE_COLUMNS[task.role]
    try:
        pf = pq.ParquetFile(task.path, pre_buffer=task.path.stat().st_size <= PRE_BUFFER_MAX_BYTES)
    except (pa.ArrowException, OSError) as exc:
        raise StatsError(f"{task.path}: not a readable Parquet file ({_short(exc)})") from None
    try:
        names = pf.schema_arrow.names
        missing = [c for c in required if c not in names]
        if missing:
            raise StatsError(f"{task.path}: not {what}: missing column(s) {', '.join(missing)} "
                             f"(it has: {', '.join(names[:15])}{', ...' if len(names) > 15 else ''})")
        columns = [*required, *(c for c in optional if c in names)]
        casts = _column_casts(task, pf.schema_arrow, columns, what)
        if task.role == "img2dataset" and "caption" not in names:
            log.debug("%s: no caption column", task.path)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
            if cancel.is_set():
                return
            if casts:
                batch = _cast(batch, casts)
            if task.role in ("matched", "match_stage"):  # matches per entry before balancing, per row
                flat = pc.list_flatten(batch.column("matched")).drop_null()
                part.matched = _bincount_into(part.matched, flat.to_numpy(zero_copy_only=False).astype(np.int64))
            if task.role in ("stage", "match_stage"):
                _fold_samples(part.samples, batch, "text", images=False, final_matched=False, shard=None)
            elif task.role == "index":
                _fold_samples(part.samples, batch, "text", images=True, final_matched=final_matched, shard=None)
            elif task.role == "downloads":
                _fold_downloads(part.downloads, batch, task.shard)
            elif task.role == "img2dataset":  # every row is a download; the successes are the samples
                ok = _fold_downloads(part.downloads, batch, task.shard)
                _fold_samples(part.samples, batch.filter(ok), "caption" if "caption" in names else None,
                              images=True, final_matched=final_matched, shard=task.shard)
    except (pa.ArrowException, OSError) as exc:
        raise StatsError(f"{task.path}: cannot read it as {what} ({_short(exc)})") from None
    finally:
        pf.close()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def read_parquet_files(tasks: list[FileTask], workers: int, final_matched: bool) -> Part:
    """Fold every file into per-thread parts (files dealt round-robin), merged into one."""
    workers = max(1, min(workers or min(os.cpu_count() or 1, MAX_WORKERS), len(tasks) or 1))
    cancel = threading.Event()

    def run(chunk: list[FileTask]) -> Part:
        part = Part()
        try:
            for task in chunk:
                if cancel.is_set():
                    break
                _read_file(task, part, final_matched, cancel)
        except BaseException:
            cancel.set()  # the first error stops the other threads at their next batch
            raise
        return part

    chunks = [tasks[i::workers] for i in range(workers)]
    total = Part()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stats") as pool:
        futures = [pool.submit(run, c) for c in chunks if c]
        errors = []
        for f in futures:
            try:
                total.merge(f.result())
            except StatsError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
    return total


# ------------------------------------------------------------------------------------------------ tars


@dataclass
class TarResult:
    path: Path
    images: Counter = field(default_factory=Counter)  # image members by extension (quick: the first one only)
    problem: str | None = None


def check_tar(path: Path, mode: TarCheck) -> TarResult:
    """Structure of a WebDataset tar, without extracting it.

    quick: whole 512-byte blocks, the end-of-archive marker (two zero blocks: a tar cut short lacks it), and the
    headers up to the first image member (its extension: img2dataset encodes a whole run in one format). full: also
    every header, each member's data inside the file, and the image members counted by extension.
    """
    result = TarResult(path)
    try:
        size = path.stat().st_size
        if size == 0:
            result.problem = "empty file (0 bytes), not a tar"
            return result
        if size % 512 or size < 1024:
            result.problem = f"{size:,} bytes is not a whole number of 512-byte tar blocks: truncated or not a tar"
            return result
        with path.open("rb") as fh:
            fh.seek(size - 1024)
            if fh.read(1024).strip(b"\0"):
                result.problem = "no end-of-archive marker (two zero blocks): truncated or not a tar"
                return result
            fh.seek(0)
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    if member.offset_data + member.size > size:
                        result.problem = f"member {member.name} runs past the end of the file: truncated"
                        return result
                    ext = member.name.rpartition("/")[2].rpartition(".")[2].lower()
                    if ext in IMAGE_EXTS:
                        result.images[ext] += 1
                        if mode is TarCheck.quick:
                            break
    except tarfile.TarError as exc:
        result.problem = f"not a readable tar ({_short(exc)})"
    except OSError as exc:
        result.problem = f"cannot read it ({_short(exc)})"
    return result


def check_tars(tars: list[Path], mode: TarCheck, workers: int) -> list[TarResult]:
    if mode is TarCheck.none or not tars:
        return []
    workers = max(1, min(workers or min(os.cpu_count() or 1, MAX_WORKERS), len(tars)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tars") as pool:
        return list(pool.map(lambda p: check_tar(p, mode), tars))


# ------------------------------------------------------------------------------------------------ layout


@dataclass
class Layout:
    """Where the numbers come from."""

    root: Path
    kind: str  # "build", "img2dataset" or "final" (a finalize folder on its own)
    dataset_dir: Path | None = None  # the folder of the dataset's shards (or of the last stage's Parquet)
    dataset_stage: str | None = None  # the build stage whose output the samples are
    sample_role: str = "img2dataset"
    sample_files: list[Path] = field(default_factory=list)
    download_files: list[Path] = field(default_factory=list)  # img2dataset metadata read only for downloads
    tars: list[Path] = field(default_factory=list)
    sizes: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)


def _parts(folder: Path) -> list[Path]:
    """Parquet data files of a Spark output folder (not _entry_counts.parquet, _SUCCESS, .crc, ...)."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file()
                  and not p.name.startswith(("_", ".")))


def _shard_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """img2dataset's ``*.parquet`` shard metadata and ``*.tar`` shards in a folder."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", "."))]
    return sorted(p for p in files if p.suffix == ".parquet"), sorted(p for p in files if p.suffix == ".tar")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StatsError(f"{path}: not readable JSON ({_short(exc)})") from None


def _finished(stage: Path) -> bool:
    return stage.is_dir() and (stage / "_SUCCESS").is_file()


def _final_layout(layout: Layout, folder: Path) -> None:
    index = folder / INDEX_DIR
    if not index.is_dir():
        raise StatsError(f"{index}: missing (a finalize folder holds index.parquet/ beside its tars)")
    layout.dataset_dir = folder
    layout.sample_role = "index"
    layout.sample_files = _parts(index)
    if not layout.sample_files:
        raise StatsError(f"{index}: no Parquet files")
    layout.tars = _shard_files(folder)[1]
    if (folder / SIZES_FILE).is_file():
        sizes = _load_json(folder / SIZES_FILE)
        if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
            raise StatsError(f"{folder / SIZES_FILE}: expected {{\"00000.tar\": samples, ...}}")
        layout.sizes = sizes


def detect_layout(path: Path) -> Layout:
    """Which kind of folder ``path`` is, and which files hold the samples, the downloads and the shards."""
    if not path.exists():
        raise StatsError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise StatsError(f"{path}: not a folder (give a build output folder or a folder of img2dataset shards)")
    stages = path / STAGES_DIR
    if (path / REPORT_FILE).is_file() or stages.is_dir():
        layout = Layout(path, "build")
        download = stages / "download"
        if _finished(stages / FINALIZE_DIR) or (stages / FINALIZE_DIR / INDEX_DIR).is_dir():
            _final_layout(layout, stages / FINALIZE_DIR)
            layout.dataset_stage = FINALIZE_DIR
            if download.is_dir():
                layout.download_files = _shard_files(download)[0]
        elif download.is_dir() and _shard_files(download)[0]:
            layout.dataset_dir, layout.dataset_stage = download, "download"
            layout.sample_files, layout.tars = _shard_files(download)
            layout.notes.append("finalize has not run: the samples are the download stage's successes "
                                "(before image dedup)")
        else:
            for name in reversed(STAGES[: STAGES.index("download")]):
                if _finished(stages / name) and _parts(stages / name):
                    layout.dataset_dir, layout.dataset_stage = stages / name, name
                    layout.sample_role, layout.sample_files = "stage", _parts(stages / name)
                    layout.notes.append(f"the build stopped at stage {name}: no downloads or images yet; "
                                        f"captions and languages are of its {name} rows")
                    break
            else:
                raise StatsError(f"{path}: a build output folder with no finished stage output under stages/")
        return layout
    if (path / INDEX_DIR).is_dir():
        layout = Layout(path, "final")
        _final_layout(layout, path)
        layout.notes.append("a finalize folder on its own: no funnel, queries or downloads (run stats on the "
                            "build output folder for those)")
        return layout
    parquets, tars = _shard_files(path)
    if parquets:
        layout = Layout(path, "img2dataset", dataset_dir=path, sample_files=parquets, tars=tars)
        layout.notes.append("plain img2dataset output: no build report, so no funnel, queries or dedup layers")
        return layout
    if tars:
        raise StatsError(f"{path}: {len(tars)} tar(s) but no *.parquet shard metadata beside them "
                         "(img2dataset writes {shard}.parquet next to each {shard}.tar)")
    raise StatsError(f"{path}: neither a build output folder (no build_report.json or stages/) nor img2dataset "
                     "output (no *.parquet shards)")


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


# ------------------------------------------------------------------------------------------------ build report


def read_funnel(root: Path) -> tuple[list[dict[str, Any]], str] | None:
    """Every stage's counts, in stage order: the build report, plus finished stages it does not list yet."""
    stages: dict[str, Any] = {}
    where: dict[str, Path] = {}  # the file each stage's counts come from
    source = []
    report_path = root / REPORT_FILE
    if report_path.is_file():
        report = _load_json(report_path)
        if not isinstance(report, dict) or not isinstance(report.get("stages"), dict):
            raise StatsError(f"{report_path}: not a witbuild build report (no \"stages\" object)")
        stages.update(report["stages"])
        where.update(dict.fromkeys(report["stages"], report_path))
        source.append(REPORT_FILE)
    for name in STAGES:
        counts = root / STAGES_DIR / name / build_layout.COUNTS_FILE
        if name not in stages and _finished(counts.parent) and counts.is_file():
            stages[name], where[name] = _load_json(counts), counts
            source.append(f"stages/{name}/_counts.json")
    if not stages:
        return None
    order = [s for s in STAGES if s in stages] + sorted(s for s in stages if s not in STAGES)
    out = []
    for name in order:
        entry = stages[name]
        if not isinstance(entry, dict):
            raise StatsError(f"{where[name]}: stage {name}: expected an object of counts")
        try:
            dropped = {str(k): int(v) for k, v in (entry.get("dropped") or {}).items()}
            events = {str(k): int(v) for k, v in (entry.get("events") or {}).items()}
            rows_in, rows_out = int(entry.get("rows_in", 0)), int(entry.get("rows_out", 0))
        except (TypeError, ValueError, AttributeError) as exc:
            raise StatsError(f"{where[name]}: stage {name}: counts are not integers ({_short(exc)})") from None
        out.append({"stage": name, "unit": str(entry.get("unit", "rows")), "rows_in": rows_in, "rows_out": rows_out,
                    "rows_dropped": int(entry.get("rows_dropped", sum(dropped.values()))),
                    "kept_share": round(rows_out / rows_in, 6) if rows_in else None,
                    "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "events": events, "info": entry.get("info") if isinstance(entry.get("info"), dict) else {},
                    "seconds": entry.get("seconds"), "skipped": entry.get("skipped")})
    return out, " + ".join(source)


# Layers of each dedup stage, and the build config switch that turns each on (None: always on)
DEDUP_LAYERS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "dedup": (("duplicate_url_text", None), ("duplicate_url", "one_text_per_image"),
              ("repeated_url", "fetch_url_once")),
    FINALIZE_DIR: (("duplicate_image_sha256", "exact_image"), ("near_duplicate_phash", "near_dup"),
                   ("eval_contamination", "decontaminate")),
}


def read_dedup_config(root: Path) -> dict[str, Any] | None:
    """The ``dedup`` section of the build's saved config (which layers were on), or None when unreadable."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        import yaml

        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # a damaged config only loses the "enabled" column
        log.warning("%s: cannot read it (%s); dedup layers shown without their switches", path, _short(exc))
        return None
    section = cfg.get("dedup") if isinstance(cfg, dict) else None
    return section if isinstance(section, dict) else None


def duplicate_layers(funnel: list[dict[str, Any]], dedup_cfg: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows removed by each dedup layer of the stages that ran (a layer that removed nothing shows 0)."""
    layers = []
    for st in funnel:
        known = DEDUP_LAYERS.get(st["stage"], ())
        extra = [r for r in st["dropped"] if DEDUP_LAYER.search(r) and r not in dict(known)]
        for reason, switch in [*known, *((r, None) for r in extra)]:
            if switch is None:
                enabled: bool | None = True if reason in dict(known) else None
            elif switch in st["info"]:
                enabled = bool(st["info"][switch])
            else:
                enabled = bool(dedup_cfg.get(switch)) if dedup_cfg and switch in dedup_cfg else None
            n = st["dropped"].get(reason, 0)
            layers.append({"stage": st["stage"], "layer": reason, "enabled": enabled, "removed": n,
                           "rows_in": st["rows_in"], "share": round(n / st["rows_in"], 6) if st["rows_in"] else None})
    return layers


# ------------------------------------------------------------------------------------------------ queries


def _read_entry_counts(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """(entry ids, c_e, kept, entry strings) of ``_entry_counts.parquet``, read in batches."""
    cols = ["entry_id", "entry", "count", "kept"]
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise StatsError(f"{path}: not a readable Parquet file ({_short(exc)})") from None
    try:
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise StatsError(f"{path}: not balance entry counts (schemas/entry_counts.json): missing column(s) "
                             f"{', '.join(missing)}")
        ids, counts, kept, entries = [], [], [], []

        def ints(col: pa.Array) -> np.ndarray:
            return pc.fill_null(col, 0).cast(pa.int64()).to_numpy(zero_copy_only=False)

        for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
            ids.append(ints(b.column("entry_id")))
            counts.append(ints(b.column("count")))
            kept.append(ints(b.column("kept")))
            entries.append(b.column("entry").cast(pa.string()))
        empty = np.zeros(0, np.int64)
        return (np.concatenate(ids) if ids else empty, np.concatenate(counts) if ids else empty,
                np.concatenate(kept) if ids else empty,
                pa.concat_arrays(entries) if entries else pa.array([], pa.string()))
    except (pa.ArrowException, OSError) as exc:
        raise StatsError(f"{path}: cannot read entry counts ({_short(exc)})") from None
    finally:
        pf.close()


def _read_entries_txt(path: Path) -> pa.Array:
    if not path.is_file():
        return pa.array([], pa.string())
    try:
        with path.open(encoding="utf-8") as fh:
            return pa.array([line.rstrip("\n") for line in fh], pa.string())
    except (OSError, UnicodeDecodeError) as exc:
        raise StatsError(f"{path}: not readable ({_short(exc)})") from None


def query_stats(root: Path, funnel: list[dict[str, Any]] | None, matched_counts: np.ndarray | None,
                final_counts: np.ndarray | None, top: int) -> dict[str, Any] | None:
    """Entries matched, the head/tail split at t, top entries and concentration before and after balancing."""
    balance = root / STAGES_DIR / "balance"
    info = next((s["info"] for s in funnel or [] if s["stage"] == "balance"), {})
    path = balance / ENTRY_COUNTS_FILE
    if path.is_file():
        ids, before, after, names = _read_entry_counts(path)
        order = np.argsort(ids, kind="stable")
        ids, before, after = ids[order], before[order], after[order]
        names = names.take(pa.array(order))
        source, counted = f"stages/balance/{ENTRY_COUNTS_FILE}", "pairs"
    elif matched_counts is not None:
        names = _read_entries_txt(root / QUERYLIST_DIR / build_layout.QUERYLIST_ENTRIES)
        n = max(len(names), len(matched_counts))
        before = np.zeros(n, dtype=np.int64)
        before[: len(matched_counts)] = matched_counts
        ids, after = np.arange(n), None
        source = ("stages/match (matched column); balance has not run: matches counted per row, where c_e counts "
                  "distinct (URL, text) pairs (witbuild balance-plan)")
        counted = "rows"
    else:
        return None
    n_entries = len(before)
    matched = before > 0
    try:
        t = float(info["t"]) if info.get("t") is not None else None
    except (TypeError, ValueError):
        t = None
    out: dict[str, Any] = {"source": source, "counted": counted, "entries": n_entries,
                           "matched_entries": int(matched.sum()),
                           "unmatched_entries": int(n_entries - matched.sum()), "t": t,
                           "querylist_version": info.get("querylist_version")}
    manifest = root / QUERYLIST_DIR / build_layout.QUERYLIST_MANIFEST
    if out["querylist_version"] is None and manifest.is_file():
        loaded = _load_json(manifest)
        out["querylist_version"] = loaded.get("version") if isinstance(loaded, dict) else None
    if t is not None:
        head, tail = before > t, matched & (before <= t)
        out["head"] = {"entries": int(head.sum()), "matches_before": int(before[head].sum()),
                       "matches_after": int(after[head].sum()) if after is not None else None}
        out["tail"] = {"entries": int(tail.sum()), "matches_before": int(before[tail].sum()),
                       "matches_after": int(after[tail].sum()) if after is not None else None}
    for key in ("pool", "expected_size"):
        if key in info:
            out[key] = info[key]

    def top_list(values: np.ndarray) -> list[dict[str, Any]]:
        best = np.argsort(-values, kind="stable")[:top]
        best = best[values[best] > 0]
        return [{"entry_id": int(ids[i]), "entry": names[int(i)].as_py() if i < len(names) else None,
                 "count": int(before[i]), "kept": int(after[i]) if after is not None else None} for i in best]

    out["top_before"] = top_list(before)
    out["top_after"] = top_list(after) if after is not None else None
    population = matched  # entries matched before balancing: the same entries measured before and after
    out["before"] = concentration(before[population])
    out["after"] = concentration(after[population]) if after is not None else None
    final = None
    if final_counts is not None and n_entries:  # final_counts is by entry id; ``before`` by position
        by_id = np.zeros(max(len(final_counts), int(ids.max()) + 1), dtype=np.int64)
        by_id[: len(final_counts)] = final_counts
        final = by_id[np.clip(ids, 0, None)]
    out["final"] = concentration(final[population]) if final is not None and population.any() else None
    out["rank_frequency"] = {"before": rank_frequency(before),
                             "after": rank_frequency(after) if after is not None else None,
                             "final": rank_frequency(final) if final is not None else None}
    return out


# ------------------------------------------------------------------------------------------------ the report


def _shares(counter: Counter, key: str, rename: dict[Any, str] | None = None) -> list[dict[str, Any]]:
    total = sum(counter.values())
    rows = []
    for value, n in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        name = (rename or {}).get(value, value)
        rows.append({key: name, "count": int(n), "share": round(n / total, 6) if total else 0.0})
    return rows


def _download_section(d: DownloadStats, funnel: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if d.rows == 0:
        stage = next((s for s in funnel or [] if s["stage"] == "download"), None)
        if stage is None:
            return None
        failures = [{"class": k, "count": v, "share": round(v / max(1, stage["rows_dropped"]), 6), "examples": []}
                    for k, v in stage["dropped"].items()]
        return {"source": "build report (no shard metadata found)", "rows": stage["rows_in"],
                "success": stage["rows_out"], "failed": stage["rows_in"] - stage["rows_out"],
                "success_rate": round(stage["rows_out"] / stage["rows_in"], 6) if stage["rows_in"] else None,
                "status": {}, "failures_by_class": failures}
    success = d.status.get("success", 0)
    by_class: Counter = Counter()
    examples: dict[str, list[tuple[int, str]]] = {}
    for msg, n in d.messages.items():
        cls = error_class(msg)
        by_class[cls] += n
        examples.setdefault(cls, []).append((n, "" if msg is None else str(msg)))
    # rows dropped before img2dataset saw them (network policy, robots.txt), or that it did not write: in the
    # funnel, not in the shard metadata
    stage = next((s for s in funnel or [] if s["stage"] == "download"), None)
    room = 0 if stage is None else max(0, stage["rows_in"] - d.rows)
    early = 0
    for reason in build_layout.DROPS_OUTSIDE_SHARD_METADATA:
        n = 0 if stage is None else min(room - early, int(stage["dropped"].get(reason, 0)))
        if n > 0:
            early += n
            by_class[reason] += n
            examples.setdefault(reason, []).append((n, PRE_DOWNLOAD_WHY[reason]))
    rows = d.rows + early
    failed = rows - success
    failures = []
    for cls, n in sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0])):
        ex = sorted(examples[cls], key=lambda e: (-e[0], e[1]))[:EXAMPLES_PER_CLASS]
        failures.append({"class": cls, "count": n, "share": round(n / failed, 6) if failed else 0.0,
                         "examples": [{"message": m[:300], "count": c} for c, m in ex]})
    source = "shard metadata (status, error_message)" + (", build report (rows not in it)" if early else "")
    return {"source": source,
            "rows": rows, "success": success, "failed": failed, "success_rate": round(success / rows, 6),
            "status": {str(k): int(v) for k, v in sorted(d.status.items(), key=lambda kv: -kv[1])},
            "failures_by_class": failures}


def _per_shard(values: Iterable[int]) -> dict[str, Any] | None:
    v = sorted(values)
    if not v:
        return None
    return {"shards": len(v), "min": v[0], "median": statistics.median(v), "max": v[-1],
            "mean": round(sum(v) / len(v), 3)}


def _plan_reads(root: Path, layout: Any) -> tuple[list[FileTask], bool, bool]:
    """The Parquet files to read, whether c_e comes from the match stage's rows, and whether the final samples'
    matched entries are counted."""
    match_dir = root / STAGES_DIR / "match"
    need_matched = (layout.kind == "build" and not (root / STAGES_DIR / "balance" / ENTRY_COUNTS_FILE).is_file()
                    and _finished(match_dir))  # c_e from the match stage's rows: balance has not run
    role = layout.sample_role
    if role == "stage" and layout.dataset_stage == "match" and need_matched:
        role = "match_stage"  # one pass for the captions and c_e
    tasks = [FileTask(p, role, shard=p.stem + ".tar" if role == "img2dataset" else None)
             for p in layout.sample_files]
    tasks += [FileTask(p, "downloads", shard=p.stem + ".tar") for p in layout.download_files]
    if need_matched and role != "match_stage":
        tasks += [FileTask(p, "matched") for p in _parts(match_dir)]
    has_query_list = layout.kind == "build" and (root / QUERYLIST_DIR).is_dir()
    final_matched = has_query_list and layout.dataset_stage in (FINALIZE_DIR, "download")
    return tasks, need_matched, final_matched


def _samples_per_shard(layout: Any, s: Any, d: Any, warnings: list[str]) -> dict[str, int]:
    """Samples per tar: from sizes.json, img2dataset's successes or the index; disagreements are warnings."""
    tar_names = {t.name for t in layout.tars}
    if layout.sizes is not None:
        per_shard: dict[str, int] = dict(layout.sizes)
        missing = sorted(set(per_shard) - tar_names)
        if missing:
            warnings.append(f"{len(missing)} tar(s) listed in {SIZES_FILE} are missing: {_listed(missing)}")
        if sum(per_shard.values()) != s.samples:
            warnings.append(f"{SIZES_FILE} counts {sum(per_shard.values()):,} samples, the index "
                            f"{s.samples:,}")
        return per_shard
    if layout.sample_role == "img2dataset":
        per_shard = {p.stem + ".tar": d.success_per_shard.get(p.stem + ".tar", 0) for p in layout.sample_files}
        missing = sorted(n for n, c in per_shard.items() if c and n not in tar_names)
        if missing:
            warnings.append(f"{len(missing)} of {len(per_shard)} shard(s) have successes in their Parquet "
                            f"metadata but no tar: {_listed(missing)}")
        unlisted = sorted(tar_names - set(per_shard))
        if unlisted:  # the samples are counted from the metadata: a tar without it would go uncounted unsaid
            warnings.append(f"{len(unlisted)} of {len(tar_names)} tar(s) have no Parquet metadata beside them, so "
                            f"their samples are not counted: {_listed(unlisted)}")
        return per_shard
    return dict(s.per_shard) if layout.sample_role == "index" else {}


def _checked_tars(layout: Any, per_shard: dict[str, int], tar_check: TarCheck, workers: int,
                  warnings: list[str]) -> tuple[list, Counter]:
    """Every tar checked (a corrupt one is a StatsError) and the stored image formats counted."""
    results = check_tars(layout.tars, tar_check, workers)
    bad = [r for r in results if r.problem]
    if bad:
        first = "; ".join(f"{r.path}: {r.problem}" for r in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise StatsError(f"corrupt tar: {first}{more}")
    stored: Counter = Counter()
    for r in results:
        if tar_check is TarCheck.full:
            stored.update(r.images)
            expected = per_shard.get(r.path.name)
            if expected is not None and sum(r.images.values()) != expected:
                warnings.append(f"{r.path}: {sum(r.images.values()):,} images in the tar, {expected:,} samples in "
                                "the metadata")
        elif r.images:
            stored[next(iter(r.images))] += per_shard.get(r.path.name, 0)
    return results, stored


def _captions_section(s: Any, notes: list[str]) -> dict | None:
    if not s.caption_rows:
        notes.append("no caption column: no caption statistics")
        return None
    captions = {"count": s.caption_rows - s.null_captions, "missing": s.null_captions,
                "words": s.words.summary(), "chars": s.chars.summary(),
                "languages": _shares(s.langs, "lang", {None: "unknown"}) if set(s.langs) != {None} else []}
    if not captions["languages"]:
        notes.append("no lang column: no languages")
    return captions


def _images_section(s: Any, stored: Counter, tar_check: TarCheck) -> dict | None:
    if not s.image_rows:
        return None
    method = ("every image member of every tar" if tar_check is TarCheck.full
              else "the first image of each tar, weighted by the tar's samples" if tar_check is TarCheck.quick
              else "tars not read (--tars none)")
    return {"count": s.image_rows,
            "width": s.dims["width"].summary(), "height": s.dims["height"].summary(),
            "original_width": s.dims["original_width"].summary(),
            "original_height": s.dims["original_height"].summary(),
            "aspect_ratio": s.aspect.summary(),
            "formats": {"stored": _shares(stored, "format"), "stored_method": method,
                        "source": _shares(s.source_formats, "format", {None: "none"})}}


def _dataset_section(layout: Any, source: Path, root: Path, has_images: bool) -> dict:
    if layout.sample_role == "index":
        samples_from = _rel(source / INDEX_DIR, root)
    elif layout.sample_role == "img2dataset":
        samples_from = str(Path(_rel(source, root)) / "*.parquet") + " (status success)"
    else:
        samples_from = _rel(source, root)
    return {"kind": layout.kind, "dataset_dir": _rel(source, root), "stage": layout.dataset_stage,
            "samples_from": samples_from, "has_images": has_images}


def collect_stats(path: Path | str, *, top: int = 20, tar_check: TarCheck = TarCheck.quick, workers: int = 0) -> dict:
    """The whole report (the JSON that ``--json`` prints; schemas/stats_report.schema.json)."""
    root = Path(path)
    layout = detect_layout(root)
    warnings: list[str] = []
    notes = list(layout.notes)
    funnel_src = read_funnel(root) if layout.kind == "build" else None
    funnel = funnel_src[0] if funnel_src else None
    if layout.kind == "build" and funnel is None:
        notes.append("no build_report.json and no stage _counts.json: no funnel")
    tasks, need_matched, final_matched = _plan_reads(root, layout)
    log.debug("stats: reading %d Parquet file(s) under %s", len(tasks), root)
    part = read_parquet_files(tasks, workers, final_matched)
    s, d = part.samples, part.downloads
    source = layout.dataset_dir or root
    if s.samples == 0:
        detail = f" ({d.status.get('success', 0):,} of {d.rows:,} downloads succeeded)" if d.rows else ""
        where = source / INDEX_DIR if layout.sample_role == "index" else source
        raise StatsError(f"{where}: empty dataset: 0 samples in {len(layout.sample_files)} Parquet file(s){detail}")
    per_shard = _samples_per_shard(layout, s, d, warnings)
    results, stored = _checked_tars(layout, per_shard, tar_check, workers, warnings)
    totals = {"samples": s.samples, "shards": len(layout.tars), "parquet_files": len(layout.sample_files),
              "dataset_bytes": _folder_bytes(source), "total_bytes": _folder_bytes(root),
              "samples_per_shard": _per_shard(per_shard.values())}
    captions = _captions_section(s, notes)
    images = _images_section(s, stored, tar_check)
    queries = None
    if layout.kind == "build":
        queries = query_stats(root, funnel, part.matched if need_matched else None,
                              s.entry_counts if final_matched else None, top)
        if queries is None:
            notes.append("no query statistics: the match stage has not run")
    duplicates = duplicate_layers(funnel, read_dedup_config(root)) if funnel else None
    if funnel and not any(st["stage"] in ("dedup", FINALIZE_DIR) for st in funnel):
        notes.append("no dedup layers: dedup and finalize have not run")
        duplicates = None
    return {
        "report_version": REPORT_VERSION,
        "witbuild_version": __version__,
        "path": str(root),
        "dataset": _dataset_section(layout, source, root, images is not None),
        "notes": notes,
        "warnings": warnings,
        "totals": totals,
        "funnel": {"source": funnel_src[1], "stages": funnel} if funnel_src else None,
        "downloads": _download_section(d, funnel),
        "captions": captions,
        "images": images,
        "queries": queries,
        "duplicates": duplicates,
        "near_duplicates": near_dups.collect(root) if layout.kind in ("build", "final") else None,
        "clip_scores": s.clip_scores.summary(),
        "tars": {"mode": tar_check.value, "checked": len(results)},
    }


def _rel(p: Path, root: Path) -> str:
    try:
        rel = p.relative_to(root)
    except ValueError:
        return str(p)
    return str(rel) if str(rel) != "." else "."


def _listed(names: list[str]) -> str:
    return ", ".join(names[:MAX_LISTED]) + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")
