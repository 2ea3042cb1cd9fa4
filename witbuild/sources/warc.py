"""A WARC reader that survives bad input: FastWARC for speed, resynchronisation on damage.

FastWARC stops at the first corrupt gzip member or record and silently returns a truncated
last record. Web archives in the wild have both, and losing the rest of a 1 GB file to one bad
record is not acceptable, so this reader catches the failure, counts it, seeks to the next
record boundary (the next gzip member that inflates to a WARC header, or the next ``WARC/``
version line in an uncompressed file) and carries on.

Common Crawl compresses each record as its own gzip member; some tools gzip a whole WARC as one
stream, where no member boundary follows a damaged header. Such files are inflated to a
temporary file first and read as an uncompressed WARC, so a damaged record loses only itself;
their ``offset`` is then the record's offset in the inflated stream (a compressed offset would not
address a record inside a shared member anyway).
"""

from __future__ import annotations

import logging
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator, WarcRecordType

from witbuild.counters import StageCounts
from witbuild.sources.urls import target_uri

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b\x08"
_SCAN_CHUNK = 1 << 20
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
_NEXT_RECORD = re.compile(rb"\r?\n\r?\nWARC/[01]\.\d+\r?\n")
_FIRST_RECORD_PROBE_BYTES = 64 << 20  # inflate at most this much to tell a single-stream file


@dataclass
class WarcRecord:
    record_type: str
    target_uri: str | None
    date: datetime | None
    offset: int
    http_status: int | None
    content_type: str | None
    charset: str | None
    content_language: str | None
    transfer_encoding: str | None  # as the crawler received it: see witbuild.sources.http_body
    content_encoding: str | None
    body: bytes


def parse_warc_date(value: str | None) -> datetime | None:
    """WARC-Date (ISO 8601, usually ``Z``) as an aware UTC datetime; None when unparseable."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _is_gzip(f: BinaryIO) -> bool:
    f.seek(0)
    head = f.read(3)
    f.seek(0)
    return head == GZIP_MAGIC


def _looks_like_member(f: BinaryIO, pos: int) -> bool:
    f.seek(pos)
    chunk = f.read(1 << 16)
    try:
        out = zlib.decompressobj(31).decompress(chunk, 16)
    except zlib.error:
        return False
    return out.startswith(b"WARC/")


def _next_boundary(f: BinaryIO, start: int, gz: bool) -> int | None:
    """Offset of the next plausible record start at or after ``start``, or None at EOF."""
    needle = GZIP_MAGIC if gz else b"WARC/"
    pos = start
    while True:
        f.seek(pos)
        chunk = f.read(_SCAN_CHUNK + 8)
        if not chunk:
            return None
        i = chunk.find(needle)
        while i >= 0:
            cand = pos + i
            if gz:
                if _looks_like_member(f, cand):
                    return cand
            else:
                at_line_start = chunk[i - 1 : i] == b"\n" if i > 0 else (cand == 0 or _preceded_by_newline(f, cand))
                if at_line_start and chunk[i + 5 : i + 6] in (b"0", b"1"):
                    return cand
            i = chunk.find(needle, i + 1)
        if len(chunk) <= _SCAN_CHUNK:
            return None
        pos += _SCAN_CHUNK


def _preceded_by_newline(f: BinaryIO, pos: int) -> bool:
    f.seek(pos - 1)
    return f.read(1) == b"\n"


def _first_member_holds_several_records(f: BinaryIO) -> bool:
    """Whether the first gzip member goes on past the first record (a single-stream ``.warc.gz``).

    The first record's own Content-Length says where it ends; Common Crawl's first member (the
    warcinfo record) ends there, a whole-file gzip stream does not.
    """
    f.seek(0)
    d = zlib.decompressobj(31)
    head, end, produced = b"", None, 0
    try:
        while produced <= _FIRST_RECORD_PROBE_BYTES:
            chunk = f.read(1 << 16)
            if not chunk:
                return False
            out = d.decompress(chunk)
            produced += len(out)
            if end is None:
                head += out
                sep = head.find(b"\r\n\r\n")
                if sep < 0:
                    if len(head) > 1 << 16:
                        return False
                    continue
                m = _CONTENT_LENGTH.search(head, 0, sep + 2)
                if m is None:
                    return False
                end = sep + 4 + int(m.group(1)) + 4  # header, block, the two CRLFs after it
                head = b""
            if produced > end + 16:
                return True
            if d.eof:
                return False
    except zlib.error:
        return False
    finally:
        f.seek(0)
    return False


def _inflate_members(f: BinaryIO, out: BinaryIO, counts: StageCounts) -> None:
    """Every gzip member of ``f``, inflated one after another into ``out``.

    A member that fails to inflate keeps what it gave; reading goes on at the next member that
    inflates to a WARC header. Trailing bytes that start no member end the file quietly when
    they are padding, with a count otherwise.
    """
    pos = 0
    while True:
        f.seek(pos)
        magic = f.read(3)
        if not magic:
            return
        if magic != GZIP_MAGIC:
            nxt = _next_boundary(f, pos, True)
            f.seek(pos)
            if nxt is None and not f.read(1 << 16).strip(b"\x00\r\n\t "):
                return
            counts.event("corrupt_gzip_member")
            log.warning("bytes that are no gzip member at offset %d; resuming at %s", pos, nxt)
            if nxt is None:
                return
            pos = nxt
            continue
        f.seek(pos)
        d = zlib.decompressobj(31)
        try:
            while not d.eof:
                chunk = f.read(_SCAN_CHUNK)
                if not chunk:
                    return  # a cut stream: the reader counts the record it cuts as truncated
                out.write(d.decompress(chunk))
            pos = f.tell() - len(d.unused_data)
        except zlib.error as exc:
            nxt = _next_boundary(f, pos + 1, True)
            counts.event("corrupt_gzip_member")
            log.warning("corrupt gzip member at offset %d (%s); resuming at %s", pos, exc, nxt)
            if nxt is None:
                return
            pos = nxt


def _error_kind(exc: BaseException) -> str:
    msg = str(exc).lower()
    if "gzip" in msg or "decompress" in msg or isinstance(exc, zlib.error | EOFError):
        return "corrupt_gzip_member"
    return "corrupt_record"


def iter_records(
    opener: Callable[[], BinaryIO],
    counts: StageCounts,
    *,
    record_types: tuple[str, ...] = ("response",),
    max_body_bytes: int = 5_000_000,
    parse_http: bool = True,
    body_must_contain: bytes | None = None,
    skipped_event: str = "records_skipped",
) -> Iterator[WarcRecord]:
    """Records of the wanted types from one (possibly compressed, possibly damaged) WARC file.

    Counts ``records_read``, each kind of damage, truncated and oversized bodies in ``counts``.
    ``body_must_contain`` skips records cheaply (counted as ``skipped_event``) before any header
    is decoded: a WAT's records without image links, for instance.
    """
    wanted = tuple(getattr(WarcRecordType, t) for t in record_types)
    seen = [0]  # records read, counted once at the end (a per-record counter update is measurable)
    try:
        with opener() as f:
            yield from _records(f, counts, wanted, max_body_bytes, parse_http, seen, body_must_contain,
                                skipped_event)
    finally:
        counts.event("records_read", seen[0])


def _records(f: BinaryIO, counts: StageCounts, wanted: tuple, max_body_bytes: int, parse_http: bool,
             seen: list[int], must_contain: bytes | None, skipped_event: str) -> Iterator[WarcRecord]:
    gz = _is_gzip(f)
    args = (counts, wanted, max_body_bytes, parse_http, seen, must_contain, skipped_event)
    if gz and _first_member_holds_several_records(f):
        counts.event("single_stream_gzip_files")
        with tempfile.TemporaryFile() as plain:
            _inflate_members(f, plain, counts)
            yield from _records_of(plain, False, *args)
        return
    yield from _records_of(f, gz, *args)


def _records_of(f: BinaryIO, gz: bool, counts: StageCounts, wanted: tuple, max_body_bytes: int,
                parse_http: bool, seen: list[int], must_contain: bytes | None,
                skipped_event: str) -> Iterator[WarcRecord]:
    start = 0
    # After a failure past record L, the damaged record is the next boundary after L, which
    # is where reading resumes; failing there again at once is the same damage, counted once.
    already_counted: int | None = None
    # Each record is held back until the next header parses: a failure there may mean this
    # record's Content-Length was too long and its body ran into the next record.
    pending: WarcRecord | None = None
    while True:
        f.seek(start)
        last_pos: int | None = None
        try:
            for rec in ArchiveIterator(f, parse_http=parse_http, strict_mode=False):
                last_pos = rec.stream_pos
                seen[0] += 1
                if rec.record_type not in wanted:
                    _count_skipped_type(rec.record_type, counts)
                    continue
                record = _read_record(rec, counts, max_body_bytes, parse_http, must_contain, skipped_event)
                if record is not None:
                    if pending is not None:
                        yield pending
                    pending = record
            if pending is not None:
                yield pending
            return
        except (OSError, ValueError, zlib.error, EOFError) as exc:
            if pending is not None:
                yield _cut_at_next_record(pending, counts)
                pending = None
            kind = _error_kind(exc)
            resume = (last_pos if last_pos is not None else start) + 1
            nxt = _next_boundary(f, resume, gz)
            if seen[0] == 0 and nxt is None:
                counts.event("not_a_warc_file")
                log.warning("not a WARC file (or no readable record): %s", exc)
                return
            if not (last_pos is None and start == already_counted):
                counts.event(kind)
                log.warning("%s after offset %s (%s); resuming at %s", kind, last_pos, exc, nxt)
            already_counted = nxt if last_pos is not None else None
            if nxt is None:
                return
            start = nxt


def _count_skipped_type(record_type: WarcRecordType, counts: StageCounts) -> None:
    if record_type == WarcRecordType.revisit:
        counts.event("revisit_records")  # a pointer to an earlier capture, not a page
    elif record_type in (WarcRecordType.unknown, WarcRecordType.no_type):
        counts.event("unknown_record_type")  # a damaged or non-standard WARC-Type


def _cut_at_next_record(record: WarcRecord, counts: StageCounts) -> WarcRecord:
    """A record whose body holds the start of the next record had a Content-Length too long:
    its body ends where the next record begins (the reader resumes there)."""
    cut = _NEXT_RECORD.search(record.body)
    if cut is None:
        return record
    counts.event("record_length_mismatch")
    log.warning("record at offset %d runs into the next one; its body is cut there", record.offset)
    record.body = record.body[:cut.start()]
    return record


def _read_record(rec, counts: StageCounts, max_body_bytes: int, parse_http: bool,
                 must_contain: bytes | None, skipped_event: str) -> WarcRecord | None:
    """One FastWARC record of a wanted type as a :class:`WarcRecord`; None when it is skipped (counted)."""
    expected = rec.content_length
    body = rec.reader.read(max_body_bytes + 1)
    if len(body) < min(expected, max_body_bytes + 1):
        counts.event("truncated_record")
        log.warning("truncated record at offset %d", rec.stream_pos)
        return None
    if len(body) > max_body_bytes:
        counts.event("body_cut_at_max_bytes")
        body = body[:max_body_bytes]
    if must_contain is not None and must_contain not in body:
        counts.event(skipped_event)
        return None
    headers = rec.headers
    status = ctype = charset = clang = te = ce = None
    if parse_http and rec.is_http:
        http = rec.http_headers
        status = http.status_code
        ctype = http.get("Content-Type")
        charset = rec.http_charset
        clang = http.get("Content-Language")
        te = http.get("Transfer-Encoding")
        ce = http.get("Content-Encoding")
    return WarcRecord(
        record_type=str(rec.record_type),
        target_uri=target_uri(headers.get("WARC-Target-URI")),
        date=parse_warc_date(headers.get("WARC-Date")),
        offset=rec.stream_pos,
        http_status=status,
        content_type=ctype,
        charset=charset,
        content_language=clang,
        transfer_encoding=te,
        content_encoding=ce,
        body=body,
    )
