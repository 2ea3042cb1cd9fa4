"""HTTP payloads as the crawler received them, decoded to the bytes the server meant.

Common Crawl stores decoded payloads (and renames the headers to ``X-Crawler-*``), but wget,
warcio, Heritrix and browsers' archivers store what came off the wire: chunked transfer coding
and gzip/deflate/br content coding. Parsing those bytes as HTML finds nothing, so the page's
images would be silently lost. A header that says a coding the body does not have (some writers
decode but keep the header) is not trusted blindly: a body that fails to decode but already
looks like markup is used as it is, and counted.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator

import brotli

from witbuild.counters import StageCounts

log = logging.getLogger(__name__)

# A chunk-size line, its extensions dropped; bare LF ends it as well as CRLF, as browsers accept
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
# the start of a page stored decoded: markup, after a UTF-8 or UTF-16 byte order mark if any
_MARKUP = re.compile(rb"^\s*(<|\xef\xbb\xbf\s*<)|^(\xff\xfe<\x00|\xfe\xff\x00<)")


class ContentDecodeError(ValueError):
    """The body is not in the coding its header names."""


def _codings(header: str | None) -> list[str]:
    """The codings of a ``Content-Encoding``/``Transfer-Encoding`` value, in the order they were applied."""
    if not header:
        return []
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked transfer coding (RFC 9112 §7.1); trailers are dropped.

    Chunk lines may end in a bare LF. A body cut short gives the chunks read up to the damage;
    one that gives nothing although its first chunk is not the last is not chunked at all.
    """
    first = _CHUNK_SIZE_LINE.match(body)
    if first is None:
        raise ContentDecodeError("no chunk-size line at the start of a chunked body")
    payload = b"".join(_chunks(body))
    if not payload and int(first.group(1), 16):
        raise ContentDecodeError("a chunked body without chunk data")
    return payload


def _chunks(body: bytes) -> Iterator[bytes]:
    """The chunks' data in order, up to the last chunk, the end of the body or the first malformed line."""
    pos = 0
    while (line := _CHUNK_SIZE_LINE.match(body, pos)) is not None:
        size = int(line.group(1), 16)
        if size == 0:
            return
        start = line.end()
        yield body[start:start + size]
        pos = start + size
        if body.startswith(b"\r\n", pos):
            pos += 2
        elif body.startswith(b"\n", pos):
            pos += 1
        else:  # cut short, or a size that does not fit the data
            return


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    return zlib.decompressobj(wbits).decompress(body, limit + 1)


def _gunzip(body: bytes, limit: int) -> bytes:
    """Every gzip member of the body, concatenated (RFC 1952 §2.2; servers that compress as they
    stream write one member per flush); bytes after the last member that are no gzip are ignored."""
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(31)
        try:
            part = inflater.decompress(body, limit + 1 - size)
        except zlib.error as exc:
            if parts:
                break
            raise ContentDecodeError(f"gzip: {exc}") from exc
        parts.append(part)
        size += len(part)
        body = inflater.unused_data
        if not body or not inflater.eof or size > limit:
            break
    return b"".join(parts)


def _deflate(body: bytes, limit: int) -> bytes:
    """``deflate`` is zlib-wrapped by the RFC, raw deflate from many servers: accept both."""
    try:
        return _inflate(body, 15, limit)
    except zlib.error:
        try:
            return _inflate(body, -15, limit)
        except zlib.error as exc:
            raise ContentDecodeError(f"deflate: {exc}") from exc


def _unbrotli(body: bytes, limit: int) -> bytes:
    try:
        return brotli.Decompressor().process(body, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise ContentDecodeError(f"br: {exc}") from exc


_DECODERS = {"gzip": _gunzip, "x-gzip": _gunzip, "deflate": _deflate, "br": _unbrotli}


def decode_content(body: bytes, coding: str, limit: int) -> bytes:
    """One content coding undone, output capped at ``limit + 1`` bytes (a page is not a zip bomb)."""
    decoder = _DECODERS.get(coding)
    if decoder is None:
        raise ContentDecodeError(f"unsupported content coding {coding!r}")
    return decoder(body, limit)


def http_payload(body: bytes, transfer_encoding: str | None, content_encoding: str | None,
                 max_bytes: int, counts: StageCounts) -> bytes | None:
    """The decoded payload of one HTTP response as stored in a WARC; None when it cannot be decoded.

    Counts ``dechunked_bodies``, ``decoded_<coding>_bodies``, ``coding_header_on_plain_body`` (the
    header named a coding the stored body does not have: used as stored), ``undecodable_body``
    (neither decodable nor markup: skipped) and ``body_cut_at_max_bytes`` (decoded beyond ``max_bytes``).
    """
    te, ce = _codings(transfer_encoding), _codings(content_encoding)
    # a transfer coding other than chunked (``gzip, chunked``) compresses like a content coding
    steps = [("chunked" if c == "chunked" else "content", c) for c in reversed(te)]
    steps += [("content", c) for c in reversed(ce)]
    for kind, coding in steps:
        try:
            body = dechunk(body) if kind == "chunked" else decode_content(body, coding, max_bytes)
        except ContentDecodeError as exc:
            if _MARKUP.match(body[:1024]):
                counts.event("coding_header_on_plain_body")
                continue
            counts.event("undecodable_body")
            log.debug("undecodable HTTP body: %s", exc)
            return None
        counts.event("dechunked_bodies" if kind == "chunked" else f"decoded_{coding.removeprefix('x-')}_bodies")
    if len(body) > max_bytes:
        counts.event("body_cut_at_max_bytes")
        body = body[:max_bytes]
    return body

