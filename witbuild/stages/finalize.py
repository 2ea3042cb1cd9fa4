"""Stage finalize: image-level dedup and the dataset in the format training reads.

1. Spark tasks of ``SHARDS_PER_TASK`` downloaded shards each read their metadata and the signatures the
   download saved (or decode their tars): a row per sample with the sha256 of the downloaded bytes and the
   pHash and thumbnail of the stored image. Shards are listed from their metadata, not their tars, so every
   image the download wrote is counted in: a shard whose tar is missing or unreadable has its rows dropped as
   ``missing_shard`` / ``unreadable_shard``, and finalize's rows in are the download's rows out.
2. Optional decontamination against a folder of evaluation images (:mod:`witbuild.dedup.eval_set`), by the
   near-duplicate rule of step 4 (pHash within the threshold and the colour check), the evaluation images hashed
   as the download stores images. First: dedup then never keeps a representative that decontamination removes.
3. Exact duplicates (same sha256) across shards: the smallest key stays. Found in the LSH pass of step 4
   (equal bytes have one pHash, so twins meet in every bucket; :func:`~witbuild.dedup.near.duplicate_verdicts`),
   with the same result as removing them first; a job of their own when near duplicates are off.
4. Near duplicates (:mod:`witbuild.dedup.near`): banded LSH on the 64-bit pHash, a colour check of
   16×16 thumbnails on the verified pairs, representatives chosen greedily in key order (no chained
   removals); each removal is recorded with its kept counterpart in ``near_duplicates.parquet``, once the
   dataset is written, with whether that counterpart is in it (the CLIP-score filter may drop it).
5. Optional CLIP score of every kept sample, and the filters on it (:mod:`witbuild.stages.finalize_score`).
6. Shards are rewritten so each final tar holds exactly the kept samples (a filtered manifest
   would leave dropped images inside the tars that every loader reads and skips: wasted I/O on
   every epoch and a dataset that still ships what it claims to have removed);
   ``sizes.json`` (samples per tar, as open_clip reads it) and ``index.parquet`` (one row per
   sample) describe them. A tar is written by a task, outside Spark's output committer, so a task attempt writes
   it under a name of its own and renames it into place whole (:func:`rewrite_shard`): a retried task, or an
   attempt killed mid-write after another finished, never leaves a truncated tar. The driver then removes what
   killed attempts left and holds each tar to its writer's record and the index (:func:`check_final_tars`)
   before the stage is published.

The same downloads give the same bytes: img2dataset writes a shard's samples in the order their
downloads finish and stamps each member with the time of writing, so the final tars are written in
key order with a fixed member time (``MEMBER_MTIME``), and ``index.parquet`` is partitioned by shard
and sorted, so each of its files holds the same rows in the same order on every run. A trainer
reading the shards in order (or with a seeded shuffle buffer) then sees the same stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from witbuild import layout, schemas
from witbuild.counters import StageCounts
from witbuild.dedup.eval_set import EvalSet, contaminated, read_eval_set, stored_as_downloaded
from witbuild.dedup.near import ColourLimits, duplicate_verdicts, image_signatures, write_removal_record
from witbuild.dedup.phash import resolve_bands, to_signed64
from witbuild.dedup.shard_signatures import read_members, read_signatures
from witbuild.layout import NEAR_DUPLICATES_DIR
from witbuild.spark import counted, fs_and_path, read_task_counts
from witbuild.stages.finalize_score import SCORE_COLUMNS, score_and_filter, with_empty_scores
from witbuild.tar_io import TarEntry, entries_match, iter_files, read_entry, tar_entries, write_tar

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext

log = logging.getLogger(__name__)

IMAGE_EXTS, SIZES_FILE, INDEX_DIR = layout.IMAGE_EXTS, layout.SIZES_FILE, layout.INDEX_DIR
MEMBER_MTIME = 0  # modification time of every member of a final tar (the download's clock is not data)
BROADCAST_KEYS = 1_000_000  # dropped keys sent to every task (a set) up to this many, else joined away
UNCOMPRESSED_CACHE = ("spark.sql.inMemoryColumnarStorage.compressed", "false")
# shards read, and rewritten, by one Spark task: a Python task costs ~0.1-0.2 s of start-up and transfer here
# (104 tasks: 22 s to read 100,000 images' rows whose Python work is ~3 CPU s); a fixed number, so which shards
# share an index.parquet file does not depend on the cores
SHARDS_PER_TASK = 8
READ_BUFFER = 1 << 20  # tars are read member by member: small reads through fsspec's file cost ~1/3 more
# in the name a task attempt writes a final tar under before renaming it into place: .{shard}.attempt-{id}
ATTEMPT_MARK = ".attempt-"


def samples_schema() -> pa.Schema:
    """Rows read from the downloaded shards: index.parquet's columns but the scores, and the dedup signature."""
    index = schemas.load("index").arrow()
    return (pa.schema([f for f in index if f.name not in SCORE_COLUMNS], metadata=index.metadata)
            .append(pa.field("_phash", pa.int64(), nullable=False))
            .append(pa.field("_thumb", pa.binary(), nullable=False)))


def read_tar_members(path: str) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of a WebDataset tar."""
    fs, p = fs_and_path(path)
    out: dict[str, dict[str, bytes]] = {}
    with fs.open(p, "rb") as raw, io.BufferedReader(raw, READ_BUFFER) as fh:
        for entry, data in iter_files(fh):
            key, _, ext = entry.name.rpartition("/")[2].partition(".")
            out.setdefault(key, {})[ext] = data
    return out


_FROM_METADATA = {"caption": "text"}  # img2dataset's column -> ours, where the names differ
_EMPTY_IF_NULL = ("text", "uid", "sha256")  # non-null columns a row of img2dataset's metadata may lack
META_SUFFIX, TAR_SUFFIX, STATS_SUFFIX = layout.SHARD_META_SUFFIX, layout.SHARD_TAR_SUFFIX, layout.SHARD_STATS_SUFFIX
MISSING_SHARD, UNREADABLE_SHARD = "missing_shard", "unreadable_shard"  # drop reasons of a shard lost whole


def list_shards(folder: str) -> list[str]:
    """The tar path of every shard in the download's ``folder`` that has a metadata, stats or tar file.

    Listed from the metadata, not from the tars: a shard whose tar is gone must still be read, so that its rows
    are counted (as ``missing_shard``) instead of vanishing between the download's count and finalize's."""
    fs, src = fs_and_path(folder)
    prefix = (fs.unstrip_protocol(src) if "://" in folder else src).rstrip("/")
    names = set()
    for path in fs.ls(src, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(("_", ".")):  # the stage's own files (_counts.json, _robots/, ...)
            continue
        for suffix in (META_SUFFIX, STATS_SUFFIX, TAR_SUFFIX):
            if name.endswith(suffix):
                names.add(name[: -len(suffix)])
    return [f"{prefix}/{name}{TAR_SUFFIX}" for name in sorted(names)]


def shard_samples(shard_tar: str, counts: StageCounts, out_schema: pa.Schema) -> pa.RecordBatch:
    """Rows (``samples_schema``) of one downloaded shard. Every success row of its metadata is counted in
    ``rows_in`` and is either returned or dropped by reason; a shard that is missing or cannot be read is lost
    alone, its rows dropped as ``missing_shard`` / ``unreadable_shard`` (the rest of the work goes on)."""
    empty = pa.RecordBatch.from_pylist([], schema=out_schema)
    base = shard_tar[: -len(TAR_SUFFIX)]
    try:
        meta = _success_rows(base + META_SUFFIX)
    except Exception as exc:  # counted from the stats file, which img2dataset writes beside it
        reason = MISSING_SHARD if isinstance(exc, FileNotFoundError) else UNREADABLE_SHARD
        _lose_shard(counts, reason, _stats_successes(base + STATS_SUFFIX), f"{base}{META_SUFFIX}: {exc}")
        return empty
    fs, tar = fs_and_path(shard_tar)
    if not fs.exists(tar):
        _lose_shard(counts, MISSING_SHARD, meta.num_rows, f"{shard_tar}: no such file")
        return empty
    read = StageCounts()  # the shard's drops count only if the whole shard could be read
    try:
        signatures = _shard_signatures(shard_tar, meta["key"].to_pylist(), read)
    except Exception as exc:  # a corrupt tar loses this shard only
        _lose_shard(counts, UNREADABLE_SHARD, meta.num_rows, f"{shard_tar}: {exc}")
        return empty
    counts.merge(read)
    counts.rows_in += meta.num_rows
    return _sample_batch(shard_tar.rsplit("/", 1)[-1], meta, signatures, out_schema)


def _success_rows(meta_path: str) -> pa.Table:
    """The rows of a shard's metadata that img2dataset wrote into its tar (status ``success``)."""
    import pyarrow.compute as pc

    fs, p = fs_and_path(meta_path)
    with fs.open(p, "rb") as fh:
        meta = pq.read_table(fh)
    return meta.filter(pc.equal(meta["status"], "success"))


def _stats_successes(stats_path: str) -> int:
    """Successes in a shard's stats file: its row count when the metadata cannot be read (0 if neither can;
    the download's recorded total still catches those rows, :func:`_reconcile_with_download`)."""
    try:
        fs, p = fs_and_path(stats_path)
        with fs.open(p, "r") as fh:
            return int(json.load(fh)["successes"])
    except Exception as exc:
        log.error("finalize: cannot read %s either (%s): this shard's rows are not known here", stats_path, exc)
        return 0


def _lose_shard(counts: StageCounts, reason: str, rows: int, detail: str) -> None:
    """Count a shard lost whole: its rows in and dropped under ``reason``, and one ``{reason}s`` event."""
    log.error("finalize: shard lost, %d rows dropped as %s: %s", rows, reason, detail)
    counts.rows_in += rows
    counts.drop(reason, rows)
    counts.event(f"{reason}s")


def _sample_batch(name: str, meta: pa.Table, signatures: list[tuple[int, bytes] | None],
                  out_schema: pa.Schema) -> pa.RecordBatch:
    """The rows of ``meta`` whose image has a signature, in ``out_schema``."""
    import pyarrow.compute as pc

    meta = meta.filter(pa.array([sig is not None for sig in signatures], pa.bool_()))
    kept = [sig for sig in signatures if sig is not None]
    columns = {_FROM_METADATA.get(c, c): meta[c] for c in meta.column_names}
    columns.update({"shard": pa.array([name] * len(kept), pa.string()),
                    "phash": pa.array([f"{h:016x}" for h, _ in kept], pa.string()),
                    "_phash": pa.array([to_signed64(h) for h, _ in kept], pa.int64()),
                    "_thumb": pa.array([thumb for _, thumb in kept], pa.binary())})
    arrays = []
    for field in out_schema:
        column = columns.get(field.name)
        if column is None:  # an extra column this download did not carry
            column = pa.nulls(len(kept), field.type)
        if field.name in _EMPTY_IF_NULL:
            column = pc.fill_null(column.cast(field.type), "")
        arrays.append(column.cast(field.type))
    table = pa.Table.from_arrays(arrays, schema=out_schema)
    if not table.num_rows:  # an empty table has no batch to return
        return pa.RecordBatch.from_pylist([], schema=out_schema)
    return table.combine_chunks().to_batches()[0]


def _shard_signatures(shard_tar: str, keys: list[str], counts: StageCounts) -> list[tuple[int, bytes] | None]:
    """(pHash, thumbnail) of each key's image, None where it is missing from the tar or undecodable (counted):
    from the signatures the download saved when they cover every key, else by decoding the tar."""
    saved = read_signatures(shard_tar)
    if saved is not None and all(k in saved for k in keys):
        signatures = [saved[k] for k in keys]
        counts.drop("undecodable_image", sum(sig is None for sig in signatures))
        counts.event("shards_signed_at_download")
        return signatures
    members = read_tar_members(shard_tar)
    images = [next((files[e] for e in IMAGE_EXTS if e in files), None) if files else None
              for files in (members.get(k) for k in keys)]
    missing = sum(image is None for image in images)
    if missing:  # a tar cut short, or rewritten since the download
        log.warning("finalize: %s lacks %d of the %d images its metadata lists (missing_in_tar)", shard_tar,
                    missing, len(keys))
    counts.drop("missing_in_tar", missing)
    found = iter(image_signatures([image for image in images if image is not None]))
    signatures = [next(found) if image is not None else None for image in images]
    counts.drop("undecodable_image", sum(sig is None for sig, image in zip(signatures, images, strict=True)
                                         if image is not None))
    return signatures


class ShardRecord(NamedTuple):
    """What the task attempt that wrote a final tar knows of it: its images, its size in bytes and the digest of its
    keys (:func:`keys_digest`), checked on the driver against the folder and the index before the stage is
    published (:func:`check_final_tars`)."""

    images: int
    size: int
    digest: str


def keys_digest(keys: list[str]) -> str:
    """sha256 of the sorted keys joined by newlines: what Spark's ``sha2(concat_ws('\\n', sort_array(...)))`` gives
    for the same keys (UTF-8 byte order is code point order), so a shard's index rows are compared without
    bringing their keys to the driver."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()


def rewrite_shard(src_path: str, dst_path: str, wanted: set[str]) -> int:
    """Copy the samples of tar ``src_path`` whose key is in ``wanted`` to ``dst_path``; returns the images written.

    Members go in name order (key order, each sample's files together), not in the order img2dataset wrote them
    (the order its downloads finished), and with ``MEMBER_MTIME`` as their time and no PAX time record (a float
    time of writing would override it): equal inputs give equal bytes. ``dst_path`` itself is never opened for
    writing: the tar is written whole under a name private to this attempt and renamed into place
    (:func:`_write_shard`), so an attempt killed mid-write, or one that starts after another has finished, never
    leaves ``dst_path`` truncated."""
    return _write_shard(src_path, dst_path, wanted).images


def _write_shard(src_path: str, dst_path: str, wanted: set[str], index_keys: list[str] | None = None) -> ShardRecord:
    """:func:`rewrite_shard`, returning the tar's record; with ``index_keys``, refused (RuntimeError, before any
    write) unless the tar would hold exactly one image of each of them and no other sample.

    Name order is a random walk through the source, so it is read whole (:func:`_whole_tar`): through a read buffer
    every member's seek refilled it."""
    fs_out, dst = fs_and_path(dst_path)
    with _whole_tar(src_path) as fin:
        entries = _wanted_entries(fin, src_path, wanted)
        image_suffixes = tuple(f".{e}" for e in IMAGE_EXTS)
        images = [_key_of(e.name) for e in entries if e.name.endswith(image_suffixes)]
        if index_keys is not None:
            problem = key_mismatch(index_keys, images)
            if problem:
                raise RuntimeError(f"finalize: {dst_path.rsplit('/', 1)[-1]}: {problem}")
        size = _write_private_then_rename(fs_out, dst, lambda fout: write_tar(
            fout, ((e, read_entry(fin, e)) for e in entries), MEMBER_MTIME))
    return ShardRecord(len(images), size, keys_digest(images))


def _key_of(member: str) -> str:
    """The sample key of a tar member's name (``dir/0000512.jpg`` -> ``0000512``)."""
    return member.rpartition("/")[2].partition(".")[0]


def _wanted_entries(fin: IO[bytes], src_path: str, wanted: set[str]) -> list[TarEntry]:
    """The members of ``fin`` whose key is in ``wanted``, in name order: from the member list the download saved
    when it matches the tar, else from the tar's headers."""
    listed = read_members(src_path)  # where the download wrote them; else read from the headers
    if listed is not None and not entries_match(fin, listed):
        log.warning("finalize: %s: the saved member list does not match the tar; listing the tar", src_path)
        listed = None
    return sorted((e for e in (tar_entries(fin) if listed is None else listed) if _key_of(e.name) in wanted),
                  key=lambda e: e.name)


def key_mismatch(index_keys: list[str], image_keys: list[str]) -> str | None:
    """Why a tar whose image members have keys ``image_keys`` is not the tar of index rows ``index_keys``; None when
    it holds exactly one image of each row's key. A count would pass a shard holding one sample twice and another
    not at all. (Its other members' keys are among ``index_keys`` by construction: only those are copied.)"""
    problems = []
    for what, keys in (("index rows", index_keys), ("images", image_keys)):
        repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
        if repeated:
            problems.append(f"{len(repeated)} key(s) with several {what}: {_some(repeated)}")
    for what, keys in (("index rows without an image", set(index_keys) - set(image_keys)),
                       ("images without an index row", set(image_keys) - set(index_keys))):
        if keys:
            problems.append(f"{len(keys)} {what}: {_some(sorted(keys))}")
    return "; ".join(problems) or None


def _some(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` for a message, with how many more."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def attempt_path(path: str) -> str:
    """A name beside ``path`` private to this task attempt (Spark's task attempt id, unique within the application;
    outside Spark the pid): hidden (``.`` first, so no reader of the folder takes it for data) and without the
    ``.tar`` ending, with :data:`ATTEMPT_MARK` so the driver finds what a killed attempt left."""
    from pyspark import TaskContext

    task = TaskContext.get()
    attempt = str(task.taskAttemptId()) if task is not None else f"pid{os.getpid()}"
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}{ATTEMPT_MARK}{attempt}" if head else f".{name}{ATTEMPT_MARK}{attempt}"


def _write_private_then_rename(fs: Any, dst: str, write: Callable[[IO[bytes]], object]) -> int:
    """Write a file with ``write`` under :func:`attempt_path` of ``dst``, check its size on disk is what was
    written, and rename it to ``dst``; returns its size. Two attempts write the same bytes, so the later rename is
    harmless; an attempt that fails removes its file, one that is killed leaves only that (removed on the driver,
    :func:`remove_attempt_leftovers`)."""
    tmp = attempt_path(dst)
    try:
        with fs.open(tmp, "wb") as fout:
            write(fout)
            size = fout.tell()
        on_disk = fs.size(tmp)
        if on_disk != size:
            raise OSError(f"{dst}: {on_disk} bytes on disk after writing {size}")
        _rename(fs, tmp, dst)
    except BaseException:
        _discard(fs, tmp)
        raise
    return size


def _rename(fs: Any, src: str, dst: str) -> None:
    """Move ``src`` onto ``dst``, replacing it: one atomic rename on a local disk, fsspec's move elsewhere (on an
    object store a copy, which makes ``dst`` appear whole or not at all)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def _discard(fs: Any, path: str) -> None:
    """Remove ``path`` if it is there, never raising: it runs while another error is on its way."""
    try:
        if fs.exists(path):
            fs.rm(path)
    except Exception as exc:
        log.warning("finalize: could not remove %s (%s); it is removed before the stage is published", path, exc)


def remove_attempt_leftovers(folder: str) -> list[str]:
    """Remove what task attempts killed mid-write left in ``folder`` (:func:`attempt_path` names); returns their
    names. Run once the job has ended, before the stage is listed and published."""
    fs, root = fs_and_path(folder)
    if not fs.exists(root):
        return []
    left = sorted(p for p in fs.ls(root, detail=False) if _is_attempt_file(p.rstrip("/").rsplit("/", 1)[-1]))
    for path in left:
        fs.rm(path)
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in left]
    if names:
        log.warning("finalize: removed %d file(s) left by task attempts that did not finish: %s", len(names),
                    _some(names))
    return names


def _is_attempt_file(name: str) -> bool:
    return name.startswith(".") and ATTEMPT_MARK in name


def check_final_tars(folder: str, written: dict[str, ShardRecord], index: dict[str, tuple[int, str]]) -> None:
    """Refuse (RuntimeError) a dataset whose tars are not what their writers wrote or not what the index lists.

    ``written``: each shard's record from the attempt that wrote it (:class:`ShardRecord`); ``index``: each shard's
    rows in ``index.parquet`` as (count, :func:`keys_digest` of their keys). The writer already checked, before its
    rename, that the tar holds one image of each of its index rows and nothing else, and that its size on disk is
    what it wrote; so here a listing of the folder is enough, without reading the tars again: every shard in the
    index written, with the images and keys the index has for it, and on disk a ``.tar`` of each at the size
    written, and no other."""
    fs, root = fs_and_path(folder)
    on_disk = {p["name"].rstrip("/").rsplit("/", 1)[-1]: int(p.get("size") or 0)
               for p in fs.ls(root, detail=True) if p["name"].endswith(TAR_SUFFIX)}
    problems = []
    for shard in sorted(set(index) | set(written) | set(on_disk)):
        record, rows = written.get(shard), index.get(shard)
        if rows is None or record is None:
            where = [w for w, v in (("in the index", rows), ("written by a task", record)) if v is None]
            problems.append(f"{shard}: not {' nor '.join(where)}")
        elif (record.images, record.digest) != rows:
            problems.append(f"{shard}: {record.images} images written, {rows[0]} index rows (or other keys)")
        elif shard not in on_disk:
            problems.append(f"{shard}: written ({record.size} bytes) but not on disk")
        elif on_disk[shard] != record.size:
            problems.append(f"{shard}: {on_disk[shard]} bytes on disk, {record.size} written")
    if problems:
        raise RuntimeError(f"finalize: {len(problems)} final tar(s) wrong, the stage is not published: "
                           f"{_some(problems)}")


@contextmanager
def _whole_tar(path: str) -> Iterator[IO[bytes]]:
    """The tar at ``path`` as a seekable file held whole: a local file mapped (its pages are the OS's file cache,
    not the task's memory), any other read in one request."""
    from fsspec.implementations.local import LocalFileSystem

    fs, p = fs_and_path(path)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(p, "rb") as fh:
            yield io.BytesIO(fh.read())
        return
    with open(p, "rb") as fh:
        if not os.fstat(fh.fileno()).st_size:  # an empty file cannot be mapped
            yield io.BytesIO(b"")
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped  # type: ignore[misc]  # mmap reads, seeks and tells as a file does


def _write_index_and_shards(kept: Any, source_dir: str, output: str, n_shards: int,
                            in_place_drops: set[str] | None = None) -> dict[str, int]:
    """``index.parquet`` of the ``kept`` rows and each source tar copied with only them (:func:`rewrite_shard`),
    in one pass: the task writing a partition's index rows (sorted by shard and key, so which rows land in which
    file does not depend on task timing) rewrites their tars on the way. Returns the samples per written tar, once
    what task attempts left is removed and every tar is checked against its writer's record and the index
    (:func:`check_final_tars`).

    ``in_place_drops``: ``kept`` is the read's output, whole shards per partition by construction, and the task
    itself leaves these keys out: no shuffle (it cost more than the copying: ~100 shuffle blocks per task) and
    no second Python step. None: ``kept`` holds exactly the kept rows and is partitioned by shard first."""
    from pyspark.sql import functions as F

    index_cols = schemas.load("index").names
    rows = kept.select(*index_cols)
    if in_place_drops is None:
        rows = rows.repartition(max(1, n_shards), "shard")
    spark = kept.sparkSession
    dropped = spark.sparkContext.broadcast(frozenset(in_place_drops or ()))
    # the record of each tar from the attempt Spark took: a result task's updates count once, a failed one's never
    written = spark.sparkContext.accumulator({}, _ShardRecords())

    def rewrite(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        held = list(batches)
        if not held:
            return
        table = pa.Table.from_batches(held)
        keys = dropped.value
        if keys:
            table = table.filter(pa.array([k not in keys for k in table.column("key").to_pylist()], pa.bool_()))
        table = table.sort_by([("shard", "ascending"), ("key", "ascending")]).combine_chunks()
        shards = table.column("shard").to_pylist()
        start = 0
        for end in [*_run_ends(shards), len(shards)] if shards else []:
            yield from _finish_shard(table.slice(start, end - start), source_dir, output, written)
            start = end

    rows.mapInArrow(rewrite, rows.schema).write.mode("overwrite").parquet(f"{output}/{INDEX_DIR}")
    listed = (spark.read.parquet(f"{output}/{INDEX_DIR}").groupBy("shard")
              .agg(F.count("key").alias("count"),
                   F.sha2(F.concat_ws("\n", F.sort_array(F.collect_list("key"))), 256).alias("digest")).collect())
    remove_attempt_leftovers(output)
    check_final_tars(output, written.value, {r["shard"]: (int(r["count"]), r["digest"]) for r in listed})
    return {r["shard"]: int(r["count"]) for r in sorted(listed, key=lambda r: r["shard"])}


class _ShardRecords:
    """Spark accumulator parameter of ``{shard: ShardRecord}``: the records of the tars tasks wrote, merged."""

    def zero(self, value: dict[str, ShardRecord]) -> dict[str, ShardRecord]:
        return {}

    def addInPlace(self, merged: dict[str, ShardRecord], more: dict[str, ShardRecord]) -> dict[str, ShardRecord]:
        merged.update(more)
        return merged


def _run_ends(values: list[Any]) -> list[int]:
    """Positions where a run of equal consecutive ``values`` ends (the next run starts)."""
    return [i for i in range(1, len(values)) if values[i] != values[i - 1]]


def _finish_shard(rows: pa.Table, source_dir: str, output: str, written: Any = None) -> Iterator[pa.RecordBatch]:
    """Rewrite the tar of one shard's index rows and pass the rows on. The tar must hold exactly one image of each
    row's key and no other sample (else RuntimeError, before anything is written); ``written`` (an accumulator of
    :class:`_ShardRecords`) gets its record for :func:`check_final_tars`."""
    shard = rows.column("shard")[0].as_py()
    keys = rows.column("key").to_pylist()
    record = _write_shard(f"{source_dir}/{shard}", f"{output}/{shard}", set(keys), index_keys=keys)
    if written is not None:
        written.add({shard: record})
    yield from rows.to_batches()


def _exact_duplicates(samples: Any) -> list[str]:
    """Keys of the rows whose image bytes (sha256) a smaller key has (rows without a sha256 have no twin), when
    near duplicates are not looked for (else :func:`~witbuild.dedup.near.duplicate_verdicts` finds them).

    Only (sha256, key) travels through the shuffle (a window over whole rows, thumbnails included, cost more
    than the rest of the step on 10,000 images), in one job: only the keys of repeated bytes reach the driver."""
    from pyspark.sql import functions as F

    groups = (samples.filter(F.col("sha256") != "").groupBy("sha256").agg(F.collect_list("key").alias("keys"))
              .filter(F.size("keys") > 1).select("keys"))
    return sorted(k for row in groups.collect() for k in sorted(row["keys"])[1:])


def _without_keys(df: Any, keys: list[str]) -> Any:
    """``df`` without the rows whose ``key`` is in ``keys`` (a broadcast anti-join while the keys are few)."""
    from pyspark.sql import functions as F

    if not keys:
        return df
    drop_df = df.sparkSession.createDataFrame(pa.table({"key": pa.array(keys, pa.string())}))  # no Python task
    return df.join(F.broadcast(drop_df) if len(keys) < BROADCAST_KEYS else drop_df, "key", "left_anti")


def _contaminated(frame: Any, ref: EvalSet, threshold: int, bands: int, limits: ColourLimits | None) -> list[str]:
    """Keys of the rows of ``frame`` that an evaluation image of ``ref`` contaminates: within ``threshold`` bits
    and, with ``limits``, passing the colour check (:func:`~witbuild.dedup.eval_set.contaminated`)."""
    shared = frame.sparkSession.sparkContext.broadcast(ref)

    def find(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            mask = contaminated(batch.column("_phash").to_numpy(), batch.column("_thumb").to_pylist(), shared.value,
                                threshold, bands, limits)
            yield pa.RecordBatch.from_arrays([batch.column("key").filter(pa.array(mask, pa.bool_()))], names=["key"])

    return sorted(r["key"] for r in frame.select("key", "_phash", "_thumb").mapInArrow(find, "key string").collect())


def _reconcile_with_download(counts: StageCounts, download_dir: str) -> StageCounts:
    """``counts`` with the success rows the download recorded (its ``_counts.json``) but no shard here holds
    (every file of a shard removed, or both its metadata and stats unreadable) dropped as ``missing_shard``:
    finalize's rows in are then the download's rows out."""
    fs, src = fs_and_path(download_dir)
    path = f"{src.rstrip('/')}/{layout.COUNTS_FILE}"
    if not fs.exists(path):  # shards from another tool: nothing to hold them to
        return counts
    with fs.open(path, "r") as fh:
        recorded = StageCounts.from_dict(json.load(fh)).rows_out
    if recorded > counts.rows_in:
        log.error("finalize: the download wrote %d images, its shards here list %d: %d dropped as %s",
                  recorded, counts.rows_in, recorded - counts.rows_in, MISSING_SHARD)
        counts.drop(MISSING_SHARD, recorded - counts.rows_in)
        counts.rows_in = recorded
    elif recorded < counts.rows_in:
        log.warning("finalize: the download wrote %d images, its shards here list %d (shards added since?)",
                    recorded, counts.rows_in)
    return counts


def run_finalize(ctx: StageContext) -> StageCounts:

    cfg = ctx.cfg.dedup
    spark = ctx.spark
    # read before the shards: a folder that cannot serve fails the stage before any work
    evals = read_eval_set(cfg.decontaminate, stored_as_downloaded(ctx.cfg.download)) if cfg.decontaminate else None
    tars = list_shards(ctx.previous)
    schema = samples_schema()
    from pyspark.sql.pandas.types import from_arrow_schema

    paths = spark.sparkContext.broadcast(tars)

    def read_task(batches: Iterator[pa.RecordBatch], counts: StageCounts) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for i in batch.column(0).to_pylist():
                yield shard_samples(paths.value[i], counts, schema)

    # whole shards per partition (what the in-place rewrite relies on), a run of SHARDS_PER_TASK consecutive
    # ones: a range's partitions are contiguous, and its rows come from the JVM (an RDD of Python rows costs a
    # Python step more per task)
    tasks = max(1, -(-len(tars) // SHARDS_PER_TASK))
    samples = (spark.range(len(tars), numPartitions=tasks)
               .mapInArrow(counted(read_task, ctx.counts_dir), from_arrow_schema(schema))).cache()
    cached = [samples]
    # the cached rows are mostly thumbnails and hashes, which Spark's columnar compression cannot shrink: trying
    # cost ~8% of finalize's CPU at 100,000 images (benchmarks/README.md)
    compressed = spark.conf.get(UNCOMPRESSED_CACHE[0], "true")
    spark.conf.set(*UNCOMPRESSED_CACHE)
    try:
        samples.count()
        spark.conf.set(UNCOMPRESSED_CACHE[0], compressed)
        counts = _reconcile_with_download(read_task_counts(ctx.counts_dir), ctx.previous)
        drops: set[str] = set()  # every verdict of dedup and decontamination, as keys
        # dedup reads the cached rows in a few tasks: a Python or shuffle task per shard costs ~0.1 s of overhead
        # for a few ms of work, in each of the half dozen jobs below
        current = samples.coalesce(2 * spark.sparkContext.defaultParallelism)
        bands = resolve_bands(cfg.phash_threshold, cfg.phash_bands)
        limits = ColourLimits(cfg.colour_max_mean, cfg.colour_max_tail) if cfg.colour_check else None
        if evals is not None:  # first: a near duplicate's kept representative is never then removed as contaminated
            found = _contaminated(current, evals, cfg.phash_threshold, bands, limits)
            counts.drop("eval_contamination", len(found))
            drops.update(found)
            current = _without_keys(current, found)
        candidates = current  # the rows dedup chooses among: the record reads both sides of a removal here
        if cfg.near_dup:  # exact duplicates found in the same pass (duplicate_verdicts)
            exact, removals = duplicate_verdicts(current, cfg.phash_threshold, bands, limits, cfg.exact_image)
        elif cfg.exact_image:
            exact, removals = _exact_duplicates(current), []
        else:
            exact, removals = [], []
        if cfg.exact_image:
            counts.drop("duplicate_image_sha256", len(exact))
        if cfg.near_dup:
            counts.drop("near_duplicate_phash", len(removals))
        dedup_drops = set(exact) | {r.key for r in removals}
        drops.update(dedup_drops)
        current = _without_keys(current, sorted(dedup_drops))  # lazy: runs only where a step below reads it

        if ctx.cfg.clip_score.enabled:
            current, scored_frames = score_and_filter(current, ctx.cfg.clip_score, ctx.previous, len(tars), counts,
                                                     ctx.output)
            cached += scored_frames
            sizes = _write_index_and_shards(current, ctx.previous, ctx.output, len(tars))
        elif len(drops) < BROADCAST_KEYS:
            sizes = _write_index_and_shards(with_empty_scores(samples), ctx.previous, ctx.output, len(tars), drops)
        else:
            sizes = _write_index_and_shards(with_empty_scores(current), ctx.previous, ctx.output, len(tars))
        if cfg.near_dup:  # after the CLIP-score filter, which may drop a removal's kept sample: the record says so
            final_keys = spark.read.parquet(f"{ctx.output}/{INDEX_DIR}").select("key")
            write_removal_record(spark, removals, candidates, f"{ctx.output}/{NEAR_DUPLICATES_DIR}", final_keys)
    finally:
        spark.conf.set(UNCOMPRESSED_CACHE[0], compressed)
        for frame in cached:
            frame.unpersist()
    out_fs, out = fs_and_path(ctx.output)
    with out_fs.open(f"{out}/{SIZES_FILE}", "w") as fh:
        json.dump(sizes, fh, indent=1)
    counts.rows_out = sum(sizes.values())
    counts.unit = "images"
    counts.info.update({"shards": len(sizes), "phash_threshold": cfg.phash_threshold})
    if evals is not None:
        counts.info.update({"eval_images": len(evals.names), "eval_files_skipped": len(evals.skipped)})
    return counts
