"""A WARC reader that survives bad input: FastWARC for speed, resynchronisation on damage.

FastWARC stops at the first corrupt gzip member or record and silently returns a truncated
last record. Web archives in the wild have both, and losing the rest of a 1 GB file to one bad
record is not acceptable, so this reader catches the failure, counts it, seeks to the next
record boundary (the next gzip member that inflates to a WARC header, or the next ``WARC/``
version line in an uncompressed file) and carries on.

Common Crawl compresses each record as its own gzip member; some tools gzip a whole WARC as one
stream, where no member boundary follows a damaged header. Such files are inflated to a
temporary file first and read as an uncompressed WARC, so a damaged record loses only itself:
the inflation keeps every byte that came out before the damage (a failed step is replayed in
small ones) and drops the record the damage cut. Their ``offset`` is then the record's offset in
the inflated stream (a compressed offset would not address a record inside a shared member anyway).

HTTP header blocks are split off here, not by FastWARC: it ends one only at a CRLF blank line,
and archives that store headers with bare LF line ends (ClueWeb09) would lose the start of every
page to the header block.
"""

from __future__ import annotations

import logging
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO, NamedTuple

from fastwarc.warc import ArchiveIterator, WarcRecordType

from witbuild.counters import StageCounts
from witbuild.sources.html import charset_encoding
from witbuild.sources.urls import target_uri

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b\x08"
_SCAN_CHUNK = 1 << 20
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
_RECORD_START = b"\r\n\r\nWARC/"  # the end of one record and the start of the next
_NEXT_RECORD = re.compile(rb"\r?\n\r?\nWARC/[01]\.\d+\r?\n")
_FIRST_RECORD_PROBE_BYTES = 64 << 20  # inflate at most this much to tell a single-stream file
_INFLATE_INPUT = 1 << 16  # compressed bytes per inflate step (a failed step is replayed finely)
_REPLAY_OUTPUT = 1 << 12  # output bytes per call when a failed step is replayed
_PADDING = b"\x00\r\n\t "  # what may follow the last record without counting as damage
_HTTP_HEAD_SCAN = 1 << 16  # where a header block's end is looked for first (the whole block after)
_HTTP_HEAD_ALLOWANCE = 1 << 16  # read this much past max_body_bytes, so headers do not shorten the page
_CHARSET = re.compile(r"(?i);\s*charset\s*=\s*([^;]*)")


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
    warcinfo record) ends there, a whole-file gzip stream does not. A stream that is damaged
    further on (a flipped CRC, a cut tail) still counts: the records before the damage are read.
    """
    f.seek(0)
    probe = _FirstRecordProbe()
    d = zlib.decompressobj(31)
    try:
        while not probe.decided() and not d.eof and probe.produced <= _FIRST_RECORD_PROBE_BYTES:
            chunk = f.read(_INFLATE_INPUT)
            if not chunk:
                break
            _feed(d, chunk, probe.write)
    except zlib.error:
        pass  # what inflated before the damage still tells
    finally:
        f.seek(0)
    return probe.runs_past_first_record()


class _FirstRecordProbe:
    """Watches the inflated start of a file for the end of its first record."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.produced = 0
        self.end: int | None = None  # where the first record (and its two CRLFs) ends
        self.unreadable = False  # no header end or no Content-Length in the first 64 KiB

    def write(self, out: bytes) -> None:
        self.produced += len(out)
        if self.end is None and not self.unreadable:
            self.head += out
            self._find_end()

    def _find_end(self) -> None:
        sep = self.head.find(b"\r\n\r\n")
        if sep < 0:
            self.unreadable = len(self.head) > 1 << 16
            return
        m = _CONTENT_LENGTH.search(self.head, 0, sep + 2)
        if m is None:
            self.unreadable = True
            return
        self.end = sep + 4 + int(m.group(1)) + 4  # header, block, the two CRLFs after it
        self.head = bytearray()

    def runs_past_first_record(self) -> bool:
        return self.end is not None and self.produced > self.end + 16

    def decided(self) -> bool:
        return self.unreadable or self.runs_past_first_record()


def _feed(d, data: bytes, write: Callable[[bytes], object]) -> None:
    """``data`` inflated by ``d`` into ``write``; on damage, what came out before it is written,
    then the ``zlib.error`` is raised.

    A zlib call that fails returns nothing, so a failed step is replayed from a copy of the state
    taken before it, a little output at a time, up to the damage: a flipped CRC at the end of a
    one-stream file would otherwise lose everything inflated by the step that reached it.
    """
    saved = d.copy()
    try:
        write(d.decompress(data))
    except zlib.error:
        _replay(saved, data, write, _REPLAY_OUTPUT)
        raise


def _replay(d, data: bytes, write: Callable[[bytes], object], step: int) -> None:
    """Inflate ``data`` ``step`` output bytes at a time until the damage; the call that meets
    it is replayed a byte at a time, so at most a byte before the damage is lost."""
    while True:
        saved = d.copy() if step > 1 else None
        try:
            out = d.decompress(data, step)
        except zlib.error:
            if saved is not None:
                _replay(saved, data, write, 1)
            return
        if not out:
            return
        write(out)
        data = d.unconsumed_tail


def _inflate_member(f: BinaryIO, d, write: Callable[[bytes], object]) -> bool:
    """The gzip member at ``f``'s position inflated into ``write``; False when the file ends
    inside it. Raises ``zlib.error`` at damage, after writing what came before it."""
    while not d.eof:
        chunk = f.read(_INFLATE_INPUT)
        if not chunk:
            return False
        _feed(d, chunk, write)
    return True


def _inflate_members(f: BinaryIO, out: BinaryIO, counts: StageCounts) -> None:
    """Every gzip member of ``f``, inflated one after another into ``out``.

    A member that fails to inflate keeps what it gave up to the damage; reading goes on at the
    next member that inflates to a WARC header. Trailing bytes that start no member end the file
    quietly when they are padding, with a count otherwise.
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
            if nxt is None and _only_padding(f):
                return
            counts.event("corrupt_gzip_member")
            log.warning("bytes that are no gzip member at offset %d; resuming at %s", pos, nxt)
            if nxt is None:
                return
            pos = nxt
            continue
        f.seek(pos)
        d = zlib.decompressobj(31)
        member_start = out.tell()
        try:
            if not _inflate_member(f, d, out.write):
                return  # a cut stream: the reader counts the record it cuts as truncated
            pos = f.tell() - len(d.unused_data)
        except zlib.error as exc:
            _drop_cut_record(out, member_start)
            nxt = _next_boundary(f, pos + 1, True)
            counts.event("corrupt_gzip_member")
            log.warning("corrupt gzip member at offset %d (%s); its records before the damage kept, "
                        "resuming at %s", pos, exc, nxt)
            if nxt is None:
                return
            pos = nxt


def _drop_cut_record(out: BinaryIO, member_start: int) -> None:
    """End ``out`` after the last whole record a damaged member gave.

    The record the damage cut is dropped whole: left in, its Content-Length would run into the
    next member's records and hide the first of them. A record whose block is whole is kept, its
    two closing CRLFs written anew: a gzip trailer that fails its check comes after all the data,
    but zlib returns nothing from the call that read the last bytes with it.
    """
    end = out.tell()
    start = _last_record_start(out, member_start, end)
    block_end = _whole_block_end(out, start, end)
    out.seek(start if block_end is None else block_end)
    out.truncate()
    if block_end is not None:
        out.write(b"\r\n\r\n")


def _last_record_start(out: BinaryIO, member_start: int, end: int) -> int:
    """Offset of the last record header in ``out[member_start:end]`` (a member starts with one)."""
    pos = end
    while pos > member_start:
        lo = max(member_start, pos - _SCAN_CHUNK)
        out.seek(lo)
        buf = out.read(min(end, pos + len(_RECORD_START)) - lo)  # a boundary across chunks is seen
        i = buf.rfind(_RECORD_START)
        if i >= 0:
            return lo + i + 4
        pos = lo
    return member_start


def _whole_block_end(out: BinaryIO, start: int, end: int) -> int | None:
    """Where the block of the record at ``start`` ends, when all of it is before ``end``."""
    out.seek(start)
    head = out.read(min(end - start, 1 << 16))
    sep = head.find(b"\r\n\r\n")
    m = _CONTENT_LENGTH.search(head, 0, sep + 2) if sep >= 0 else None
    if m is None:
        return None
    block_end = start + sep + 4 + int(m.group(1))
    return block_end if block_end <= end else None


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
            # HTTP headers are split off by _read_record, which accepts bare-LF header blocks
            for rec in ArchiveIterator(f, parse_http=False, strict_mode=False):
                last_pos = rec.stream_pos
                seen[0] += 1
                if rec.content_length == 0 and _header_cut(rec, counts):
                    continue
                if rec.record_type not in wanted:
                    _count_skipped_type(rec, counts)
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
            if nxt is None and gz and last_pos is not None and _padding_after_member(f, last_pos):
                return
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


def _header_cut(rec, counts: StageCounts) -> bool:
    """Whether a record lacks its Content-Length, the mark of a header the end of the file cut
    (FastWARC then returns the header lines it got as a record); counted as truncated."""
    if "Content-Length" in rec.headers:
        return False
    counts.event("truncated_record")
    log.warning("record at offset %d has no Content-Length: a cut or damaged header", rec.stream_pos)
    return True


def _padding_after_member(f: BinaryIO, pos: int) -> bool:
    """Whether only padding (NULs, blank lines) follows the gzip member at ``pos``: some writers
    pad a file to a block size, which is no damage."""
    f.seek(pos)
    d = zlib.decompressobj(31)
    try:
        while not d.eof:
            chunk = f.read(_INFLATE_INPUT)
            if not chunk:
                return False
            d.decompress(chunk)
    except zlib.error:
        return False
    f.seek(f.tell() - len(d.unused_data))
    return _only_padding(f)


def _only_padding(f: BinaryIO) -> bool:
    """Whether the rest of ``f`` is padding."""
    while chunk := f.read(_SCAN_CHUNK):
        if chunk.strip(_PADDING):
            return False
    return True


def _count_skipped_type(rec: Any, counts: StageCounts) -> None:
    record_type = rec.record_type
    if record_type == WarcRecordType.revisit:
        counts.event("revisit_records")  # a pointer to an earlier capture, not a page
        target = (rec.headers.get("WARC-Target-URI") or "").strip("<> ")
        refers = (rec.headers.get("WARC-Refers-To-Target-URI") or "").strip("<> ")
        if refers and refers != target:  # the same bytes seen at another URL (warcprox, Heritrix deduplicate so):
            counts.event("revisit_records_of_other_urls")  # this page's own pairs (its URLs resolved) are not read
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
    """One FastWARC record of a wanted type as a :class:`WarcRecord`; None when it is skipped (counted).

    The HTTP header block is split off here rather than by FastWARC, which ends it only at a CRLF
    blank line: archives that store headers with bare LF (ClueWeb09) would lose the start of
    every page to the header block.
    """
    expected = rec.content_length
    cap = max_body_bytes + (_HTTP_HEAD_ALLOWANCE if parse_http else 0)
    block = rec.reader.read(cap + 1)
    if len(block) < min(expected, cap + 1):
        counts.event("truncated_record")
        log.warning("truncated record at offset %d", rec.stream_pos)
        return None
    headers = rec.headers
    http = _HttpHead()
    body = block
    if parse_http and _holds_http(rec, headers, block):
        http, start = _http_head(block)
        body = block[start:]
    if len(body) > max_body_bytes or len(block) > cap:
        counts.event("body_cut_at_max_bytes")
        body = body[:max_body_bytes]
    if must_contain is not None and must_contain not in body:
        counts.event(skipped_event)
        return None
    return WarcRecord(
        record_type=str(rec.record_type),
        target_uri=target_uri(headers.get("WARC-Target-URI")),
        date=parse_warc_date(headers.get("WARC-Date")),
        offset=rec.stream_pos,
        http_status=http.status,
        content_type=http.content_type,
        charset=http.charset,
        content_language=http.content_language,
        transfer_encoding=http.transfer_encoding,
        content_encoding=http.content_encoding,
        body=body,
    )


class _HttpHead(NamedTuple):
    """What the reader needs of an HTTP response header block."""

    status: int | None = None
    content_type: str | None = None
    charset: str | None = None
    content_language: str | None = None
    transfer_encoding: str | None = None
    content_encoding: str | None = None


def _holds_http(rec, headers, block: bytes) -> bool:
    """Whether the record's block starts with an HTTP header block.

    FastWARC only trusts a WARC ``Content-Type`` spelled ``application/http`` in lower case; a
    writer that leaves the type out (or capitalises it) still stores the HTTP message, and
    reading it as the page would extract a redirect's or an error page's images.
    """
    if rec.is_http:
        return True
    ctype = (headers.get("Content-Type") or "").strip().lower()
    if ctype:
        return ctype.startswith("application/http")
    return block[:5].upper() == b"HTTP/"


def _http_head(block: bytes) -> tuple[_HttpHead, int]:
    """The parsed HTTP header block at the start of ``block`` and where the payload starts."""
    end, start = _first_blank_line(block, min(len(block), _HTTP_HEAD_SCAN)) \
        or _first_blank_line(block, len(block)) or (len(block), len(block))
    lines = block[:end].decode("latin-1").split("\n")
    fields = _header_fields(lines[1:])
    ctype = fields.get("content-type")
    return _HttpHead(
        status=_status_code(lines[0]),
        content_type=ctype,
        charset=_charset(ctype),
        content_language=fields.get("content-language"),
        transfer_encoding=fields.get("transfer-encoding"),
        content_encoding=fields.get("content-encoding"),
    ), start


def _first_blank_line(block: bytes, stop: int) -> tuple[int, int] | None:
    """(end of the header lines, start of the payload) at the first blank line that starts
    before ``stop``, or None.

    A blank line ends the header block whether its lines end in CRLF or bare LF (RFC 9112 §2.2
    asks recipients to accept a bare LF, as browsers and warcio do). Each later search is
    bounded to the bytes before the best match so far, so an ordinary CRLF block costs three
    short searches.
    """
    best: tuple[int, int] | None = None
    for sep in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        limit = stop if best is None else min(stop, best[0] + len(sep) - 1)
        i = block.find(sep, 0, limit)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(sep))
    return best


def _header_fields(lines: list[str]) -> dict[str, str]:
    """Header fields by lower-cased name; a repeated field keeps its last value (as FastWARC
    did), a folded continuation line is joined to the field it continues."""
    fields: dict[str, str] = {}
    name = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if name is not None:
                fields[name] = f"{fields[name]} {line.strip()}".strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            name = key.strip().lower()
            fields[name] = value.strip()
    return fields


def _status_code(line: str) -> int | None:
    """The status code of an HTTP status line (any HTTP version, with or without a reason)."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].upper().startswith("HTTP/"):
        return None
    code = parts[1]
    return int(code) if len(code) == 3 and code.isascii() and code.isdigit() else None


def _charset(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type, lower-cased; None when absent or naming no encoding
    (:func:`~witbuild.sources.html.charset_encoding`: WHATWG labels such as ``x-gbk`` included; the page's
    ``<meta>`` or detection then decide)."""
    if not content_type:
        return None
    m = _CHARSET.search(content_type)
    if m is None:
        return None
    label = m.group(1).strip().strip("\"'").lower()
    return label if charset_encoding(label) is not None else None
