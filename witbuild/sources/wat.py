"""Common Crawl WAT metadata records to image references.

Layout: ``Envelope → Payload-Metadata → HTTP-Response-Metadata → HTML-Metadata → Links[]``;
image links have ``path == "IMG@/src"`` with ``url``, ``alt`` and ``title``. Relative links are
resolved against ``Head → Base`` (itself resolved against the page URL), else the page URL —
the rule cc2dataset uses.
"""

from __future__ import annotations

from typing import Any

import orjson

from witbuild.counters import StageCounts
from witbuild.sources.html import ImageRef, clean_lang, first_text
from witbuild.sources.urls import Resolver, classify, resolve, target_uri

IMG_PATH = "IMG@/src"
WAT_IMAGE_MARK = b'"IMG@'  # no record without it has an image link


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _status(value: Any) -> int | None:
    """The HTTP status of a WAT's ``Response-Message`` (a string in Common Crawl's files)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def wat_images(
    payload: bytes,
    counts: StageCounts,
    *,
    keep_empty_text: bool = False,
    max_text_chars: int | None = 4096,
    text_attrs: tuple[str, ...] = ("alt", "title"),
    record_uri: str | None = None,
) -> tuple[str | None, list[ImageRef], str | None]:
    """(page URL, image references, page language) of one WAT metadata record.

    Records without any image link (request and metadata captures: two of every three records in
    a Common Crawl WAT) are not parsed at all; a record that is not JSON, or has no HTML metadata,
    yields no references. Both are counted as events. The page URL is the envelope's
    ``WARC-Target-URI`` (angle brackets of WARC/1.0 writers removed), else ``record_uri``, the WAT
    record's own target URI.
    """
    if WAT_IMAGE_MARK not in payload:
        counts.event("wat_records_without_images")
        return None, [], None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        counts.event("wat_invalid_json")
        return None, [], None
    envelope = _get(doc, "Envelope")
    page_url = target_uri(_get(envelope, "WARC-Header-Metadata", "WARC-Target-URI")) or target_uri(record_uri)
    response = _get(envelope, "Payload-Metadata", "HTTP-Response-Metadata")
    status = _status(_get(response, "Response-Message", "Status"))
    if status is not None and not 200 <= status < 300:
        # Common Crawl's WATs carry HTML metadata for redirect and error bodies too: not pages
        counts.event("redirect_responses" if 300 <= status < 400 else "error_responses")
        return page_url, [], None
    html_meta = _get(response, "HTML-Metadata")
    if page_url is None or not isinstance(html_meta, dict):
        counts.event("wat_records_without_html")
        return page_url, [], None
    counts.event("wat_html_records")
    headers = _get(envelope, "Payload-Metadata", "HTTP-Response-Metadata", "Headers") or {}
    lang = clean_lang(_header(headers, "content-language"))

    base = page_url
    head_base = _get(html_meta, "Head", "Base")
    if isinstance(head_base, str) and head_base.strip():
        resolved = resolve(head_base, page_url)
        if resolved and classify(resolved) is None:
            base = resolved

    resolver = Resolver(base)
    refs: list[ImageRef] = []
    links = html_meta.get("Links") or []
    if not isinstance(links, list):
        counts.event("wat_malformed_links")
        links = []
    n_in = n_out = 0
    drop = counts.dropped
    image_url = resolver.image_url
    try:  # most links are anchors, scripts, styles: select the images in one pass
        images = [link for link in links if link.get("path") == IMG_PATH]
    except AttributeError:  # an entry that is not an object
        counts.event("wat_malformed_links")
        images = [link for link in links if isinstance(link, dict) and link.get("path") == IMG_PATH]
    for link in images:
        n_in += 1
        raw = link.get("url")
        if not isinstance(raw, str) or not raw.strip():
            drop["no_url"] += 1
            continue
        url, reason = image_url(raw)
        if reason is not None:
            drop[reason] += 1
            continue
        text, text_source = first_text(link, text_attrs, max_text_chars, counts)
        if not text and not keep_empty_text:
            drop["empty_text"] += 1
            continue
        refs.append(ImageRef(url, text, text_source, "wat"))
        n_out += 1
    counts.rows_in += n_in
    counts.rows_out += n_out
    return page_url, refs, lang


def _header(headers: object, name: str) -> str | None:
    """A response header by its lower-case name, however the WAT spells it (HTTP/2 captures keep them lower-case)."""
    if not isinstance(headers, dict):
        return None
    return next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name), None)
