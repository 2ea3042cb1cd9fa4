"""The extract stage's per-file logic: one WARC or WAT file in, Arrow batches of candidates out.

Pure of Spark so it can be tested and benchmarked alone; ``witbuild.stages.extract`` runs it
in one Spark task per input file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import BinaryIO

import fsspec
import pyarrow as pa

from witbuild import schemas
from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.dedup.urls import uid_of
from witbuild.layout import local_path
from witbuild.sources.html import ImageRef, decode_page, is_html, may_be_utf16, page_images
from witbuild.sources.http_body import http_payload
from witbuild.sources.warc import WarcRecord, iter_records
from witbuild.sources.wat import WAT_IMAGE_MARK, wat_images

log = logging.getLogger(__name__)

WAT_SUFFIXES = (".wat", ".wat.gz")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def source_format(path: str) -> str:
    name = path.lower().split("?", 1)[0]
    return "wat" if name.endswith(WAT_SUFFIXES) else "warc"


class _BatchBuilder:
    """Accumulates candidate rows column-wise and emits Arrow record batches."""

    def __init__(self, schema: pa.Schema, batch_rows: int):
        self.schema = schema
        self.batch_rows = batch_rows
        self._reset()

    def _reset(self) -> None:
        self.uid: list[str] = []
        self.url: list[str] = []
        self.text: list[str] = []
        self.text_source: list[str] = []
        self.url_source: list[str] = []
        self.page_url: list[str] = []
        self.page_lang: list[str | None] = []
        self.offset: list[int] = []
        self.date: list[int | None] = []  # microseconds since the epoch: Arrow takes ints fastest

    def __len__(self) -> int:
        return len(self.uid)

    def add_page(self, refs: list[ImageRef], page_url: str, page_lang: str | None, offset: int,
                 date: datetime | None) -> None:
        n = len(refs)
        for ref in refs:
            self.uid.append(uid_of(ref.url, ref.text))
            self.url.append(ref.url)
            self.text.append(ref.text)
            self.text_source.append(ref.text_source)
            self.url_source.append(ref.url_source)
        self.page_url.extend([page_url] * n)
        self.page_lang.extend([page_lang] * n)
        self.offset.extend([offset] * n)
        self.date.extend([None if date is None else (date - _EPOCH) // _MICROSECOND] * n)

    def flush(self, source_file: str, source_format: str) -> pa.RecordBatch:
        n = len(self.uid)
        batch = pa.RecordBatch.from_pydict({
            "uid": self.uid, "url": self.url, "text": self.text, "text_source": self.text_source,
            "url_source": self.url_source, "page_url": self.page_url, "page_lang": self.page_lang,
            "source_file": [source_file] * n, "source_format": [source_format] * n,
            "record_offset": self.offset, "crawl_date": self.date,
        }, schema=self.schema)
        self._reset()
        return batch


# Tag names are case-insensitive, and parsers read <image> as <img> (HTML's tree construction)
_IMG_TAG = re.compile(rb"<im(?:g|age)", re.IGNORECASE)


def _may_have_img(body: bytes, http_charset: str | None) -> bool:
    """Cheap pre-check so pages without images skip decoding and parsing.

    UTF-16 pages (a BOM or a declared charset says so) have no ASCII tag bytes: they are parsed.
    The plain search first finds most pages' tags faster than the regular expression does.
    """
    return b"<img" in body or _IMG_TAG.search(body) is not None or may_be_utf16(body, http_charset)


def _warc_page(rec: WarcRecord, cfg: ExtractConfig, counts: StageCounts,
               path: str) -> tuple[list[ImageRef], str | None] | None:
    """(image references, page language) of one response record; None for a record that is no
    HTML page (counted by why) or whose page has no ``<img>``."""
    if not rec.target_uri:
        counts.event("records_without_target_uri")
        return None
    if not _is_page_status(rec.http_status, counts):
        return None
    body = rec.body
    if rec.transfer_encoding or rec.content_encoding:
        body = http_payload(body, rec.transfer_encoding, rec.content_encoding, cfg.max_page_bytes, counts)
        if body is None:
            return None
    if not is_html(rec.content_type, body[:1024]):
        counts.event("non_html_responses")
        return None
    counts.event("html_pages")
    if not _may_have_img(body, rec.charset):
        return None
    try:
        html, encoding = decode_page(body, rec.charset, counts)
        return page_images(html, rec.target_uri, counts, url_attrs=cfg.url_attrs, text_attrs=cfg.text_attrs,
                           keep_empty_text=cfg.keep_empty_text, max_text_chars=None,
                           content_language=rec.content_language, encoding=encoding)
    except Exception:  # a parser failure on one page must not lose the file
        log.exception("HTML parse failed: %s at %d", path, rec.offset)
        counts.event("html_parse_errors")
        return None


def _is_page_status(status: int | None, counts: StageCounts) -> bool:
    """A 2xx response (or one without HTTP status: a resource record) is a page; redirects and
    errors are not, whatever their bodies show, and are counted."""
    if status is None or 200 <= status < 300:
        return True
    counts.event("redirect_responses" if 300 <= status < 400 else "error_responses")
    return False


def _open_local_or_fsspec(path: str) -> Callable[[], BinaryIO]:
    local = local_path(path)  # a path, file:/x or file:///x
    if local is not None:
        return lambda: open(local, "rb", buffering=1 << 20)
    return lambda: _local_copy(path)


@contextlib.contextmanager
def _local_copy(url: str) -> Iterator[BinaryIO]:
    """A remote file (any fsspec URL) streamed into a local temporary file.

    The reader seeks (to resynchronise after damage); remote seeks are slow or, over plain HTTP
    without range support, impossible. One sequential download per file is what a WARC needs.
    """
    with tempfile.TemporaryFile() as tmp:
        with fsspec.open(url, "rb", block_size=0) if url.startswith(("http://", "https://")) \
                else fsspec.open(url, "rb") as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.seek(0)
        yield tmp


def extract_file(
    path: str,
    cfg: ExtractConfig,
    counts: StageCounts,
    opener: Callable[[], BinaryIO] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Candidates of one WARC/WAT file as Arrow batches (schema ``candidates``).

    Never raises on bad content: damage is counted in ``counts`` and the rest of the file is
    still read. An unreadable file (missing, permission) is counted as ``unreadable_file``.
    """
    schema = schemas.load("candidates").arrow()
    builder = _BatchBuilder(schema, cfg.batch_rows)
    fmt = source_format(path)
    opener = opener or _open_local_or_fsspec(path)
    counts.event("files_read")
    try:
        if fmt == "wat":
            records = iter_records(opener, counts, record_types=("metadata",), parse_http=False,
                                   max_body_bytes=cfg.max_page_bytes, body_must_contain=WAT_IMAGE_MARK,
                                   skipped_event="wat_records_without_images")
        else:
            records = iter_records(opener, counts, record_types=("response",), parse_http=True,
                                   max_body_bytes=cfg.max_page_bytes)
        for rec in records:
            page_lang: str | None
            if fmt == "wat":
                page_url, refs, page_lang = wat_images(
                    rec.body, counts, keep_empty_text=cfg.keep_empty_text,
                    max_text_chars=None, text_attrs=tuple(cfg.text_attrs), record_uri=rec.target_uri)
                if page_url is None:
                    continue
            else:
                page_url = rec.target_uri
                page = _warc_page(rec, cfg, counts, path)
                if page is None:
                    continue
                refs, page_lang = page
            if refs:
                builder.add_page(refs, page_url, page_lang, rec.offset, rec.date)
                if len(builder) >= cfg.batch_rows:
                    yield builder.flush(path, fmt)
    except OSError as exc:  # the file itself cannot be opened or read
        log.error("cannot read %s: %s", path, exc)
        counts.event("unreadable_file")
    if len(builder):
        yield builder.flush(path, fmt)
