"""HTML pages to image references: decoding, ``<img>`` attributes, base URL and page language."""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5
from selectolax.lexbor import LexborHTMLParser, LexborNode

from witbuild.counters import StageCounts
from witbuild.sources.urls import (
    IMAGE_URL_ATTRS,
    LAZY_URL_ATTRS,
    Resolver,
    classify,
    largest_srcset_candidate,
    resolve,
)

log = logging.getLogger(__name__)

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "application/xhtml")
# The MIME Sniffing standard's HTML patterns (its "rules for identifying an unknown MIME type"): the body starts,
# after whitespace, with one of these and then a space or ">"; a browser renders nothing else typeless as HTML
_SNIFF_TAGS = (b"<!doctype html", b"<html", b"<head", b"<script", b"<iframe", b"<h1", b"<div", b"<font", b"<table",
               b"<a", b"<style", b"<title", b"<b", b"<body", b"<br", b"<p", b"<!--")
# The types under which a browser sniffs (none, or one that says it is unknown); text/plain and
# application/octet-stream are shown as text or saved, never rendered as a page
_UNKNOWN_TYPES = ("", "unknown/unknown", "application/unknown", "*/*")
_WHITESPACE = b"\t\n\x0c\r "


@dataclass(frozen=True)
class ImageRef:
    """One usable image reference of a page, before provenance is attached."""

    url: str
    text: str
    text_source: str
    url_source: str


def is_html(content_type: str | None, body_head: bytes) -> bool:
    """HTML by the declared type; sniffed from the first bytes, as browsers sniff, when no type is declared. A
    ``text/plain`` README quoting ``<img>`` is text to a browser, and its "images" were never shown on a page."""
    if content_type:
        ct = content_type.split(";", 1)[0].strip().lower()
        if ct in HTML_CONTENT_TYPES:
            return True
        if ct not in _UNKNOWN_TYPES:
            return False
    head = _ascii_head(body_head[:1024]).lstrip(_WHITESPACE).lower()
    return any(head.startswith(tag) and head[len(tag):len(tag) + 1] in (b" ", b">") for tag in _SNIFF_TAGS)


def _ascii_head(head: bytes) -> bytes:
    """The first bytes with the NUL halves of UTF-16 characters removed, so that ASCII tags show."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head[2:].replace(b"\x00", b"")
    return head.removeprefix(b"\xef\xbb\xbf")


# Byte order marks, which win over any declared charset (HTML's encoding sniffing, step 1)
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
# Python codec names the WHATWG label table lacks, as Python-written servers send them, mapped to
# the WHATWG label of the same encoding; other Python names (latin-1, windows_1251, cp936,
# euc-cn) reach a WHATWG label through Python's own canonical name (iso8859-1, cp1251, gbk, gb2312).
_PYTHON_NAME_LABELS = {"cp949": "euc-kr", "cp932": "shift_jis", "cp950": "big5", "big5hkscs": "big5",
                       "utf-8-sig": "utf-8"}
# WHATWG labels resiliparse's table lacks (found by tests/test_browser_reference.py), and the Python codec of each
_MISSING_LABELS = {"x-mac-cyrillic": "mac-cyrillic", "x-mac-ukrainian": "mac-cyrillic"}
_DETECT_BYTES = 65536  # what detection reads: half from each end of a longer page
_DEFAULT_ENCODING = "cp1252"  # windows-1252, what browsers take when nothing names or detects an encoding
_KOI8_U_LETTERS = (b"\xa4", b"\xa6", b"\xa7", b"\xad", b"\xb4", b"\xb6", b"\xb7", b"\xbd")  # є і ї ґ Є І Ї Ґ
# WHATWG decodes these encodings with the vendors' supersets; the plain Python codecs of the same
# names lack the extension characters (UHC hangul, NEC/IBM kanji, HKSCS) real pages use.
_WHATWG_DECODERS = {"euc_kr": "cp949", "shift_jis": "cp932", "gbk": "gb18030", "big5": "big5hkscs",
                    "iso8859-11": "cp874"}


def query_codec(encoding: str | None) -> str | None:
    """The Python codec in which a page in ``encoding`` (:func:`decode_page`'s) writes its URLs' queries; None for
    UTF-8, which the URL standard uses for UTF-8 and UTF-16 pages. A GBK page writes GBK, not the GB18030 its text
    decodes with; the other encodings write with their decoder."""
    if not encoding or encoding.startswith(("utf-8", "utf-16")):
        return None
    codec = encoding if encoding == "gbk" else _WHATWG_DECODERS.get(encoding, encoding)
    try:
        codecs.lookup(codec)
    except LookupError:  # an encoding Python lacks (its page was decoded as UTF-8 too)
        return None
    return codec


def charset_encoding(label: str | None) -> str | None:
    """The encoding a charset label names, by the WHATWG label table; None for a label it lacks.

    An unknown label is no charset (browsers then read ``<meta>`` and guess): mapping it to
    UTF-8 would turn every byte of a legacy page into U+FFFD. Python codec names are accepted
    where they name an encoding of the table.
    """
    if not label:
        return None
    label = label.strip().strip("\"'").strip()
    if not label:
        return None
    return (map_encoding_to_html5(label, fallback_utf8=False) or _MISSING_LABELS.get(label.lower())
            or _python_name_encoding(label))


def _python_name_encoding(label: str) -> str | None:
    """The WHATWG encoding of a Python codec name (``latin-1``, ``cp949``); None for codecs outside the table."""
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    if name in _MISSING_LABELS.values():
        return name
    return map_encoding_to_html5(_PYTHON_NAME_LABELS.get(name, name), fallback_utf8=False)


def bom_encoding(body: bytes) -> tuple[str | None, int]:
    """(encoding, BOM length) of a body that starts with a byte order mark; (None, 0) otherwise."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding, len(bom)
    return None, 0


def may_be_utf16(body: bytes, http_charset: str | None) -> bool:
    """Whether the page will decode as UTF-16 (BOM, else HTTP charset), whose tags are no ASCII bytes."""
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if body.startswith(b"\xef\xbb\xbf"):
        return False
    encoding = charset_encoding(http_charset)
    return encoding is not None and encoding.startswith("utf-16")


def _sniffed_encoding(body: bytes) -> str:
    """Encoding from ``<meta>``, else detection (uchardet), for a page without BOM or usable HTTP charset.

    uchardet's names go through the WHATWG label table as any label does: resiliparse's own mapping turns a name it
    lacks into UTF-8 (``cp949``, its name for EUC-KR; ``mac-cyrillic``), and every byte of such a page became U+FFFD.
    A detected encoding outside the table (DOS code pages other than IBM866) or no answer leaves the choice to the
    bytes: UTF-8 when they are valid UTF-8, else windows-1252, the browsers' default. Bytes that are valid UTF-8 and
    not all ASCII are UTF-8 whatever uchardet says (legacy text is next to never valid UTF-8; uchardet takes a short
    one for ISO-8859-13 or windows-1252), unless a ``<meta>`` names another encoding. Detected KOI8-R is KOI8-U when
    the page has a byte that only KOI8-U makes a letter (Ukrainian і ї є ґ; box drawing in KOI8-R): uchardet does
    not tell them apart.

    A ``<meta>`` that says UTF-16 is readable as ASCII, so the page cannot be UTF-16: the HTML
    spec reads it as UTF-8. A real UTF-16 page has NUL bytes beside its ASCII characters.
    """
    found = detect_encoding(body, max_len=_DETECT_BYTES, html5_compatible=False, from_html_meta=True)
    encoding = charset_encoding(found) if found else None
    sample = body if len(body) <= _DETECT_BYTES else body[:_DETECT_BYTES // 2]
    if encoding is None:
        return "utf-8" if _is_utf8(sample) else _DEFAULT_ENCODING
    if encoding.startswith("utf-16") and b"\x00" not in body[:1024]:
        return "utf-8"
    if encoding != "utf-8" and not sample.isascii() and _is_utf8(sample) and not _meta_named(body, found):
        return "utf-8"
    if encoding == "koi8-r" and any(b in body for b in _KOI8_U_LETTERS):
        return "koi8-u"
    return encoding


def _meta_named(body: bytes, found: str) -> bool:
    """Whether ``found`` came from the page's ``<meta>``: uchardet alone says otherwise (resiliparse gives a
    ``<meta>`` label in its WHATWG spelling, uchardet's answer in its own)."""
    return detect_encoding(body, max_len=_DETECT_BYTES, html5_compatible=False) != found


def _is_utf8(sample: bytes) -> bool:
    """Whether ``sample`` is UTF-8, a sequence cut at its end allowed."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def decode_html(body: bytes, http_charset: str | None, counts: StageCounts | None = None) -> str:
    """:func:`decode_page`'s text."""
    return decode_page(body, http_charset, counts)[0]


def decode_page(body: bytes, http_charset: str | None, counts: StageCounts | None = None) -> tuple[str, str]:
    """(text, encoding) of a page decoded the way the HTML spec sniffs its encoding: a byte order mark, else the
    HTTP charset, else a ``<meta>`` charset, else detection (uchardet). The encoding is the page's (its URLs'
    queries are written in it).

    Invalid byte sequences become U+FFFD rather than losing the page.
    """
    declared = charset_encoding(http_charset)
    if http_charset and declared is None and counts is not None:
        counts.event("bad_http_charset")
    encoding, bom_length = bom_encoding(body)
    if bom_length:
        body = body[bom_length:]
    encoding = encoding or declared or _sniffed_encoding(body)
    return _decode(body, _WHATWG_DECODERS.get(encoding, encoding), counts), encoding


def _decode(body: bytes, encoding: str, counts: StageCounts | None) -> str:
    """``body`` in ``encoding`` (UTF-8 when Python lacks it), invalid bytes replaced and counted."""
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


#: ``<source type>`` values of a ``<picture>`` whose images the download decodes (img2dataset decodes with OpenCV:
#: tests/test_html.py checks each one); a source with no type is taken too, one of another type (image/jxl,
#: image/svg+xml) is passed over.
PICTURE_SOURCE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/avif")


def picture_source_url(img: LexborNode, resolver: Resolver, attrs_in_order: Sequence[str]) -> tuple[str | None, str]:
    """The image of the ``<picture>`` around ``img`` from its ``<source>`` elements, for an ``<img>`` that names
    none itself (no ``src``, or only a placeholder): the largest candidate of the first source of a decodable type,
    from the first of ``attrs_in_order`` (the srcset attributes of ``extract.url_attrs``) it has, as (absolute URL,
    "source_" + attribute); (None, "") when there is no picture or no usable source."""
    parent = img.parent
    if parent is None or parent.tag != "picture":
        return None, ""
    for source in parent.iter():
        if source.tag != "source":
            continue
        attrs = source.attributes
        kind = (attrs.get("type") or "").split(";", 1)[0].strip().lower()
        if kind and kind not in PICTURE_SOURCE_TYPES:
            continue
        for attr in attrs_in_order:
            raw = largest_srcset_candidate(attrs.get(attr) or "")
            if raw:
                absolute, reason = resolver.image_url(raw)
                if reason is None:
                    return absolute, f"source_{attr}"
    return None, ""


def placeholder_differs(attrs: Mapping[str, str | None], url: str | None, resolver: Resolver) -> bool:
    """Whether ``src`` names a usable image other than ``url``, the one a lazy loader's attribute gave: the
    placeholder a reader of ``src`` alone (a WAT's ``IMG@/src``, cc2dataset) would have paired with the text."""
    raw = attrs.get("src")
    if not raw or not raw.strip():
        return False
    absolute, reason = resolver.image_url(raw)
    return reason is None and absolute != url


# The tree builder's work per tag grows with the elements still open (its scope checks walk them) and per attribute
# with the element's other attributes (duplicates are checked pairwise): 40,000 nested <div>s parse in 2 s, 300,000
# in minutes, and one <img> with 100,000 attributes in 24 s. No page is written that way; a page that is (crafted,
# or generated by a broken template) is skipped and counted, as browsers cap the depth (Blink at 512) for the same
# reason. At these limits a 5 MB page parses in two seconds at worst.
MAX_OPEN_ELEMENTS = 2048
# The cost is the depth times the tags that follow: a page of fewer tags than this parses in a fraction of a second
# however deep, so only longer ones are followed tag by tag (which costs about as much as parsing them)
SCAN_TAGS = 4 * MAX_OPEN_ELEMENTS
MAX_ATTRIBUTES = 2048
# Elements without content, and those the parser closes itself without being told: neither stays open on the tree
# builder's stack
_NOT_LEFT_OPEN = frozenset((
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr", "param",
    "keygen", "basefont", "bgsound", "frame", "image", "tbody", "thead", "tfoot", "option", "optgroup", "colgroup",
    "caption", "rb", "rt", "rtc", "rp", "html", "head", "body"))
# Elements whose end tag may be left out: they stay on the stack until the rules below close them, as the parser's do
# (left out of the count, a page of 5,000 "<li><a href>" would count 5,000 open links)
_IMPLIED_END = ("p", "li", "dt", "dd", "tr", "td", "th")
# The HTML standard's "special" elements: an end tag of another element does not close past one of them
_SPECIAL = frozenset((
    "address", "applet", "article", "aside", "blockquote", "button", "center", "details", "dialog", "dir", "div",
    "dl", "fieldset", "figcaption", "figure", "footer", "form", "frameset", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hgroup", "iframe", "listing", "main", "marquee", "menu", "nav", "noembed", "noframes", "noscript",
    "object", "ol", "plaintext", "pre", "script", "search", "section", "select", "style", "summary", "table",
    "template", "textarea", "title", "ul", "xmp", "foreignobject", "desc", "mi", "mo", "mn", "ms", "mtext",
    *_IMPLIED_END))
# Where the search for an element stops in the standard's default scope, and in its other scopes
_SCOPE = frozenset(("applet", "caption", "html", "table", "td", "th", "marquee", "object", "template", "mi", "mo",
                    "mn", "ms", "mtext", "annotation-xml", "foreignobject", "desc", "title"))
_BUTTON_SCOPE = _SCOPE | {"button"}
_LIST_ITEM_SCOPE = _SCOPE | {"ol", "ul"}
_TABLE_SCOPE = frozenset(("html", "table", "template"))
_TABLE_PARTS = frozenset(("tr", "td", "th"))
# Formatting elements: closed by the end of another element, the parser opens them again at the next content (the
# standard's "reconstruct the active formatting elements"), unless a cell or table end clears them
_FORMATTING = frozenset(("a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt",
                         "u"))
_CLEARS_FORMATTING = _TABLE_PARTS | {"table", "caption", "template", "applet", "marquee", "object"}
_END_TAG_SCOPE = {"p": _BUTTON_SCOPE, "li": _LIST_ITEM_SCOPE, "dd": _SCOPE, "dt": _SCOPE, "td": _TABLE_SCOPE,
                  "th": _TABLE_SCOPE, "tr": _TABLE_SCOPE}
# Start tags that close an open <p> in button scope first
_CLOSES_P = frozenset((
    "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir", "div", "dl", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "listing",
    "main", "menu", "nav", "ol", "p", "pre", "search", "section", "summary", "ul"))
_LIST_ITEM_STOPS = _SPECIAL - {"address", "div", "p"}
_FOREIGN = ("svg", "math")
_END_TAG_SEARCH = 64  # elements an end tag is looked for among; beyond, it is taken to close nothing (an overcount)
# Raw-text elements: the tree builder reads what follows their start tag as text, up to their end tag
_RAW_TEXT_NAMES = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes")
_RAW_TEXT = re.compile(rf"<!--|<({'|'.join(_RAW_TEXT_NAMES)})\b[^>]*>", re.I)
_RAW_TEXT_END = {name: re.compile(rf"</{name}[\s/>]", re.I) for name in _RAW_TEXT_NAMES}
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*)[^<>]*?(/?)>")
_VOID_TAG = re.compile(r"<(?:area|base|br|col|embed|hr|img|input|link|meta|source|track|wbr|param|keygen)\b[^<>]*>",
                       re.I)
# An element holding text alone, closed by its own end tag: the parser opens and closes it there, whatever the rules
_LEAF = re.compile(r"<([A-Za-z][^\s/>]*)[^<>]*>[^<]*</\1\s*>")
_LEAF_PASSES = 3
_LONG_TAG = re.compile(rf"<[A-Za-z][^<>]{{{2 * MAX_ATTRIBUTES},}}")  # n attributes take at least 2n characters
_ATTRIBUTE = re.compile(r"""[\s/]+[^\s/>="']+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]*))?""")


def costly_markup(html: str) -> str | None:
    """Why parsing ``html`` would take the tree builder quadratic time (``markup_too_deep``,
    ``markup_too_many_attributes``), or None. Scans only pages with enough tags or long enough tags to be either."""
    if html.count("<") > SCAN_TAGS and _open_elements(html) > MAX_OPEN_ELEMENTS:
        return "markup_too_deep"
    for tag in _LONG_TAG.finditer(html):
        if len(_ATTRIBUTE.findall(tag.group())) > MAX_ATTRIBUTES:
            return "markup_too_many_attributes"
    return None


def _open_elements(html: str) -> int:
    """The most elements the tree builder holds open at once, followed from the tags as its rules would, roughly:
    comments and raw text skipped, SVG's and MathML's ``<x/>`` closed at once, a start tag closing the open element
    it implies the end of (``<li>`` an open ``<li>``, ``<div>`` an open ``<p>``, ``<a>`` an open ``<a>``), cells
    and rows only inside a table, an end tag closing its element only when no special element (for a special one:
    no scope boundary) stands between, and formatting elements closed that way opened again. The table modes'
    finer rules are not followed: on random tag soup the count was within a third of html5lib's stack at worst,
    and more often high than low.
    """
    stack: list[str] = []
    held: dict[str, int] = {}
    deepest = foreign = 0

    def push(name: str) -> None:
        nonlocal deepest, foreign
        stack.append(name)
        held[name] = held.get(name, 0) + 1
        foreign += name in _FOREIGN
        deepest = max(deepest, len(stack))

    def close(n: int, by: str) -> list[str]:
        """Pop ``n`` elements; the formatting ones the parser opens again at the next content (all but the one
        closed, and none that a cell or table end takes with it)."""
        nonlocal foreign
        popped = stack[-n:]
        for closed in popped:
            held[closed] -= 1
            foreign -= closed in _FOREIGN
        del stack[-n:]
        return [] if by in _CLEARS_FORMATTING else [f for f in popped[:-1] if f in _FORMATTING]

    for closing, tag_name, self_closed in _TAG.findall(_without_leaves(html)):
        name = tag_name.lower()
        if name in _NOT_LEFT_OPEN or (self_closed and (foreign or name in _FOREIGN)):
            continue
        if not closing:
            if name in _TABLE_PARTS and not held.get("table"):
                continue  # outside a table the parser ignores a cell or row tag, and so its end tag
            n = 0 if foreign else _closed_by_start(stack, held, name)
            reopened = close(n, name) if n else []
            push(name)
            for again in reopened:
                push(again)
        elif n := _end_tag_target(stack, held, name):
            for again in close(n, name):
                push(again)
    return deepest


def _closed_by_start(stack: list[str], held: dict[str, int], name: str) -> int:
    """How many elements from the top a start tag of ``name`` closes before it opens its own, by the standard's
    "in body" and table rules for the tags that end an open element of their kind; 0 where in doubt (an overcount).
    """
    if name == "li":
        return _target(stack, held, ("li",), _LIST_ITEM_STOPS)
    if name in ("dd", "dt"):
        return _target(stack, held, ("dd", "dt"), _LIST_ITEM_STOPS)
    if name in ("td", "th"):
        return _target(stack, held, ("td", "th"), _TABLE_SCOPE)
    if name == "tr":
        return _target(stack, held, ("tr",), _TABLE_SCOPE)
    if name in ("a", "nobr"):  # the adoption agency with no furthest block: up to and with the open one
        return _target(stack, held, (name,), _SPECIAL | _SCOPE)
    if name == "button":
        return _target(stack, held, ("button",), _SCOPE)
    if name in _CLOSES_P:
        return _target(stack, held, ("p",), _BUTTON_SCOPE)
    return 0


def _target(stack: list[str], held: dict[str, int], names: tuple[str, ...], stops: frozenset[str]) -> int:
    """How many elements from the top down to the nearest of ``names``, if no element of ``stops`` comes first."""
    if not any(held.get(n) for n in names):
        return 0
    for i, open_name in enumerate(reversed(stack[-_END_TAG_SEARCH:]), 1):
        if open_name in names:
            return i
        if open_name in stops:
            return 0
    return 0


def _without_leaves(html: str) -> str:
    """The tags that can change how deep the tree gets: comments, raw text, void elements and (a few levels of)
    elements that hold text alone removed, in C, so that the tag-by-tag pass sees a small part of a big page."""
    text = _VOID_TAG.sub("", _without_raw_text(html))
    for _ in range(_LEAF_PASSES):
        shorter = _LEAF.sub("", text)
        if len(shorter) == len(text):
            break
        text = shorter
    return text


def _without_raw_text(html: str) -> str:
    """``html`` without comments and raw-text elements' contents, in one pass: an element never closed (an XHTML
    ``<iframe/>``, read by the parser as the start of text) takes the rest of the page with it, as it does there."""
    kept: list[str] = []
    pos = 0
    while (m := _RAW_TEXT.search(html, pos)) is not None:
        kept.append(html[pos:m.start()])
        if m.group(1) is None:  # a comment
            end = html.find("-->", m.end())
            pos = len(html) if end < 0 else end + 3
            continue
        end_tag = _RAW_TEXT_END[m.group(1).lower()].search(html, m.end())
        if end_tag is None:
            return "".join(kept)
        close = html.find(">", end_tag.start())
        pos = len(html) if close < 0 else close + 1
    kept.append(html[pos:])
    return "".join(kept)


def _end_tag_target(stack: list[str], held: dict[str, int], name: str) -> int:
    """How many elements from the top the end tag of ``name`` closes (0: none, the tag is ignored)."""
    return _target(stack, held, (name,), _END_TAG_SCOPE.get(name) or (_SCOPE if name in _SPECIAL else _SPECIAL))


def page_images(
    html: str,
    page_url: str,
    counts: StageCounts,
    *,
    url_attrs: Sequence[str] = IMAGE_URL_ATTRS,
    text_attrs: Sequence[str] = ("alt", "title"),
    keep_empty_text: bool = False,
    max_text_chars: int | None = 4096,
    content_language: str | None = None,
    encoding: str | None = None,
) -> tuple[list[ImageRef], str | None]:
    """All usable ``<img>`` references of a page and the page's declared language.

    ``counts.rows_in`` grows by the number of ``<img>`` elements; each one either becomes an
    :class:`ImageRef` (``rows_out``) or is dropped with a reason. An ``<img>`` inside a ``<picture>`` that names
    no usable URL itself takes its picture's (:func:`picture_source_url`). ``encoding``: the page's, as
    :func:`decode_page` found it, in which URL queries are written (None: UTF-8).
    """
    costly = costly_markup(html)
    if costly is not None:
        log.warning("%s: not parsed: %s", page_url, costly)
        counts.event(costly)
        return [], None
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
    codec = query_codec(encoding)
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        resolved = resolve(base_node.attributes.get("href") or "", page_url, codec)
        if resolved and classify(resolved) is None:
            base = resolved

    resolver = Resolver(base, codec)
    source_attrs = [a for a in url_attrs if a.endswith("srcset")]
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
        if url_source in LAZY_URL_ATTRS and placeholder_differs(attrs, url, resolver):
            counts.event("lazy_url_over_src")
        if url is None:
            url, url_source = picture_source_url(node, resolver, source_attrs)
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
