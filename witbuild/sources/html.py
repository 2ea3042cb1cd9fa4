"""HTML pages to image references: decoding, ``<img>`` attributes, base URL and page language."""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5
from selectolax.lexbor import LexborHTMLParser

from witbuild.counters import StageCounts
from witbuild.sources.urls import Resolver, classify, largest_srcset_candidate, resolve

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "application/xhtml")
_SNIFF_TAGS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<div", b"<img", b"<table", b"<p>", b"<meta")


@dataclass(frozen=True)
class ImageRef:
    """One usable image reference of a page, before provenance is attached."""

    url: str
    text: str
    text_source: str
    url_source: str


def is_html(content_type: str | None, body_head: bytes) -> bool:
    """HTML by the declared type; sniffed from the first bytes when no type is declared."""
    if content_type:
        ct = content_type.split(";", 1)[0].strip().lower()
        if ct in HTML_CONTENT_TYPES:
            return True
        if ct not in ("", "application/octet-stream", "unknown/unknown", "text/plain"):
            return False
    head = body_head[:1024].lstrip().lower()
    return any(tag in head for tag in _SNIFF_TAGS)


def _valid_charset(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'")
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    return map_encoding_to_html5(label)


def decode_html(body: bytes, http_charset: str | None, counts: StageCounts | None = None) -> str:
    """Decode a page: the HTTP charset, else ``<meta>`` charset, else detection (uchardet).

    Invalid byte sequences become U+FFFD rather than losing the page.
    """
    encoding = _valid_charset(http_charset)
    if http_charset and encoding is None and counts is not None:
        counts.event("bad_http_charset")
    if encoding is None:
        encoding = detect_encoding(body, max_len=65536, from_html_meta=True)
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    try:
        return body.decode(encoding)
    except UnicodeDecodeError:
        if counts is not None:
            counts.event("invalid_bytes_replaced")
        return body.decode(encoding, errors="replace")


def clean_lang(value: object) -> str | None:
    """A declared language tag, lower-cased; the first of a list; None when absent."""
    if not isinstance(value, str) or not value:
        return None
    lang = value.split(",", 1)[0].strip().lower()[:35]
    return lang or None


def clean_text(value: object, max_chars: int | None, counts: StageCounts) -> str:
    """Whitespace collapsed and capped at ``max_chars`` (counted as ``text_truncated``; None: no cap)."""
    if not isinstance(value, str) or not value:
        return ""
    text = " ".join(value.split())
    if max_chars is not None and len(text) > max_chars:
        counts.event("text_truncated")
        text = text[:max_chars].rstrip()
    return text


def first_text(attrs: Mapping[str, object], text_attrs: Sequence[str], max_chars: int | None,
               counts: StageCounts) -> tuple[str, str]:
    """(text, attribute) of the first non-empty text attribute, cleaned; ("", "none") when none."""
    for attr in text_attrs:
        text = clean_text(attrs.get(attr), max_chars, counts)
        if text:
            return text, attr
    return "", "none"


def page_images(
    html: str,
    page_url: str,
    counts: StageCounts,
    *,
    url_attrs: Sequence[str] = ("srcset", "src", "data-src", "data-srcset"),
    text_attrs: Sequence[str] = ("alt", "title"),
    keep_empty_text: bool = False,
    max_text_chars: int | None = 4096,
    content_language: str | None = None,
) -> tuple[list[ImageRef], str | None]:
    """All usable ``<img>`` references of a page and the page's declared language.

    ``counts.rows_in`` grows by the number of ``<img>`` elements; each one either becomes an
    :class:`ImageRef` (``rows_out``) or is dropped with a reason.
    """
    tree = LexborHTMLParser(html)
    root = tree.css_first("html")
    lang = clean_lang(root.attributes.get("lang") if root is not None else None)
    if lang is None:
        lang = clean_lang(root.attributes.get("xml:lang") if root is not None else None)
    if lang is None:
        meta = tree.css_first('meta[http-equiv="content-language" i]')
        lang = clean_lang(meta.attributes.get("content") if meta is not None else None)
    if lang is None:
        lang = clean_lang(content_language)

    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        resolved = resolve(base_node.attributes.get("href") or "", page_url)
        if resolved and classify(resolved) is None:
            base = resolved

    resolver = Resolver(base)
    refs: list[ImageRef] = []
    for node in tree.css("img"):
        counts.rows_in += 1
        attrs = node.attributes
        url = None
        url_source = ""
        first_reason = None
        for attr in url_attrs:
            raw = attrs.get(attr)
            if not raw or not raw.strip():
                continue
            if attr.endswith("srcset"):
                raw = largest_srcset_candidate(raw)
                if not raw:
                    continue
            absolute, reason = resolver.image_url(raw)
            if reason is None:
                url, url_source = absolute, attr
                break
            first_reason = first_reason or reason
        if url is None:
            counts.drop(first_reason or "no_url")
            continue
        text, text_source = first_text(attrs, text_attrs, max_text_chars, counts)
        if not text and not keep_empty_text:
            counts.drop("empty_text")
            continue
        refs.append(ImageRef(url, text, text_source, url_source))
        counts.rows_out += 1
    return refs, lang
