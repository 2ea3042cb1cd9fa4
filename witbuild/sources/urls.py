"""Image URL handling shared by the WARC, WAT and crawl readers: resolve, classify, pick."""

from __future__ import annotations

import codecs
import re
from urllib.parse import urlsplit

import ada_url

RASTER_EXCLUDED_SUFFIXES = (".svg", ".svgz")

#: ``<img>`` (and ``<source>``) attributes that name an image, in the default order of ``extract.url_attrs``. Lazy
#: loaders' attributes come first: lazysizes and lozad (``data-srcset``, ``data-src``), WP Rocket
#: (``data-lazy-srcset``, ``data-lazy-src``) and jQuery Lazy Load (``data-original``) keep the image there and a
#: placeholder in ``src``/``srcset`` until a script swaps them, and the placeholder is often a real URL
#: (``/blank.gif``, a grey "loading" picture) that would pair every caption of the site with one image.
LAZY_URL_ATTRS = ("data-srcset", "data-lazy-srcset", "data-src", "data-lazy-src", "data-original")
IMAGE_URL_ATTRS = (*LAZY_URL_ATTRS, "srcset", "src")
# scheme://netloc and path of an absolute http(s) URL, split the way urlsplit splits them
_HTTP = re.compile(r"(https?)://([^/?#]*)([^?#]*)")


DEFAULT_PORTS = {"http": 80, "https": 443}

# The URL parser (WHATWG, and urlsplit) deletes ASCII tab and newlines wherever they are: attribute
# values wrap long URLs over lines. It trims C0 controls and space from both ends; other Unicode
# whitespace (no-break spaces around attribute values) is trimmed too, as str.strip() did before.
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
_EDGE_CHARS = "".join(map(chr, range(0x21))) + "".join(c for c in map(chr, range(0x80, 0x3001)) if c.isspace())


def split_origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, lower-cased, the port filled in; None when it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in DEFAULT_PORTS or not host or any(c.isspace() for c in parts.netloc):
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def target_uri(value: object) -> str | None:
    """A WARC-Target-URI as a plain URL: WARC/1.0's grammar writes it as ``<uri>`` (wget, some
    Heritrix versions); WARC/1.1 and Common Crawl write it bare. None when absent or empty."""
    if not isinstance(value, str):
        return None
    uri = value.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri or None


def clean_url(raw: str) -> str:
    """``raw`` as a URL parser reads it: tab, CR and LF deleted, controls and whitespace trimmed.

    The WHATWG parser trims only controls and spaces; other Unicode whitespace at the ends (no-break spaces around
    attribute values) is trimmed here too, where a browser would percent-encode it into the URL. Cleaning also
    lets the early checks (``data:``, an empty reference) see the URL as the parser will.
    """
    if "\t" in raw or "\n" in raw or "\r" in raw:
        raw = raw.translate(_TAB_OR_NEWLINE)
    return raw.strip(_EDGE_CHARS)


def resolve(url: str, base: str, query_codec: str | None = None) -> str | None:
    """Absolute form of ``url`` against ``base`` as a browser forms it: the WHATWG URL standard (ada), so
    backslashes are slashes, dot segments are removed, spaces and non-ASCII characters are percent-encoded (those
    of the query in ``query_codec``, the page's legacy encoding, when given), the host is lower-cased (IDNA for
    non-ASCII names) and a default port dropped. None when no URL results."""
    return _resolve_clean(clean_url(url), base, query_codec)


def _resolve_clean(url: str, base: str, query_codec: str | None) -> str | None:
    """:func:`resolve` of a URL already passed through :func:`clean_url`."""
    if query_codec is not None and not url.isascii():
        url = encode_query(url, query_codec)
    try:
        return ada_url.join_url(base, url)
    except ValueError:  # an invalid reference, or a base that is no URL (then only an absolute one resolves)
        try:
            return ada_url.normalize_url(url)
        except ValueError:
            return None


def early_reason(raw: str) -> str | None:
    """data: and javascript: URLs, dropped before any URL parsing (lazy-load placeholders are common).

    Only a prefix is cleaned: data: URLs run to megabytes, and ``java\nscript:`` is still javascript.
    """
    head = clean_url(raw[:64]).lower()
    if head.startswith("data:"):
        return "data_url"
    if head.startswith("javascript:"):
        return "javascript_url"
    return None


class Resolver:
    """:func:`resolve` against one base, with the checks of an image reference. ``query_codec``: the Python codec of
    a page in a legacy encoding, in which a browser percent-encodes the non-ASCII characters of a URL's query (the
    WHATWG URL standard's document encoding); None: UTF-8, as for UTF-8 and UTF-16 pages."""

    __slots__ = ("base", "query_codec")

    def __init__(self, base: str, query_codec: str | None = None):
        self.base = base
        self.query_codec = query_codec

    def image_url(self, raw: str) -> tuple[str | None, str | None]:
        """(absolute URL, None) for a usable image reference, else (None, drop reason)."""
        reason = None if raw.startswith(("http://", "https://")) else early_reason(raw)
        if reason is not None:
            return None, reason
        url = clean_url(raw)
        if not url:
            return None, "no_url"
        url = _resolve_clean(url, self.base, self.query_codec)
        if url is None:
            return None, "invalid_url"
        reason = classify(url)
        return (url, None) if reason is None else (None, reason)


_SPECIAL_QUERY_SET = b"\"#<>'"  # with the controls, space and non-ASCII bytes


def _url_reference(error: UnicodeEncodeError) -> tuple[str, int]:
    """A character the page's encoding lacks, as the URL standard writes it: its ``&#N;``, percent-encoded."""
    return "".join(f"%26%23{ord(c)}%3B" for c in error.object[error.start : error.end]), error.end


codecs.register_error("witbuild-url-reference", _url_reference)


def encode_query(url: str, codec: str) -> str:
    """``url`` with its query written as ``codec`` bytes, percent-encoded by the special-query set (a character the
    codec lacks as ``%26%23N%3B``): what a browser sends for a page in that encoding. The whole query is encoded at
    once, for stateful encodings (ISO-2022-JP); a byte of a multi-byte character may be printable ASCII and stays,
    as the second of Shift_JIS's ① is "@". The rest of the URL is left to the URL parser."""
    q = url.find("?")
    fragment = url.find("#")
    if q < 0 or 0 <= fragment < q:
        return url
    end = len(url) if fragment < 0 else fragment
    query = url[q + 1 : end]
    if query.isascii():
        return url
    data = query.encode(codec, "witbuild-url-reference")
    encoded = "".join(chr(b) if 0x20 < b < 0x7F and b not in _SPECIAL_QUERY_SET else f"%{b:02X}" for b in data)
    return f"{url[: q + 1]}{encoded}{url[end:]}"


def classify(url: str) -> str | None:
    """Why this URL cannot be an image to download, or None when it can.

    Reasons are stable names used in the stage counters.
    """
    m = _HTTP.match(url)  # the common case, without a full parse
    if m is not None:
        host = m.group(2)
        if host and " " not in host and "[" not in host:
            path = m.group(3)
            if path[-4:].lower() == ".svg" or path[-5:].lower() == ".svgz":
                return "svg"
            return None
    return _classify_slow(url)


def _classify_slow(url: str) -> str | None:
    head = url[:16].lower().lstrip()
    if head.startswith("data:"):
        return "data_url"
    if head.startswith("javascript:"):
        return "javascript_url"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "invalid_url"
    if parts.scheme not in ("http", "https"):
        return "non_http_scheme"
    if not parts.netloc or " " in parts.netloc:
        return "invalid_url"
    if parts.path.lower().endswith(RASTER_EXCLUDED_SUFFIXES):
        return "svg"
    return None


_ASCII_WHITESPACE = " \t\n\f\r"
_NON_NEGATIVE_INTEGER = re.compile(r"[0-9]+")
_FLOATING_POINT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_srcset(srcset: str) -> list[tuple[str, float]]:
    """Candidates of a ``srcset`` as (url, size): width for ``w`` descriptors, density for ``x`` (1 when none).

    The HTML standard's parser: a URL runs to whitespace (commas inside it stay, trailing ones end the candidate),
    descriptors to a comma outside parentheses; a candidate whose descriptors are invalid (an unknown or upper-case
    unit, a fractional or zero width, both a width and a density, a height without a width) is dropped, as
    browsers drop it. A width outranks any density: without the page's layout it is the one size known.
    """
    out: list[tuple[str, float]] = []
    i, n = 0, len(srcset)
    while True:
        while i < n and (srcset[i] in _ASCII_WHITESPACE or srcset[i] == ","):
            i += 1
        if i >= n:
            return out
        j = i
        while j < n and srcset[j] not in _ASCII_WHITESPACE:
            j += 1
        url = srcset[i:j]
        if url.endswith(","):
            url, descriptors, i = url.rstrip(","), [], j
        else:
            descriptors, i = _srcset_descriptors(srcset, j)
        size = _candidate_size(descriptors)
        if url and size is not None:
            out.append((url, size))


def _srcset_descriptors(s: str, i: int) -> tuple[list[str], int]:
    """The standard's descriptor tokenizer from ``s[i]``: the descriptors and where the next candidate starts."""
    out: list[str] = []
    current = ""
    state = "in"  # in a descriptor | in parentheses | after a descriptor
    n = len(s)
    while True:
        c = s[i] if i < n else ""
        if state == "in":
            if c and c in _ASCII_WHITESPACE:
                if current:
                    out.append(current)
                    current = ""
                state = "after"
            elif c == "," or not c:
                if current:
                    out.append(current)
                return out, i + 1
            else:
                current += c
                if c == "(":
                    state = "parens"
        elif state == "parens":
            if not c:
                out.append(current)
                return out, i
            current += c
            if c == ")":
                state = "in"
        elif not c:  # after a descriptor
            return out, i
        elif c not in _ASCII_WHITESPACE:
            state = "in"
            continue  # the character starts the next descriptor
        i += 1


def _candidate_size(descriptors: list[str]) -> float | None:
    """The candidate's rank from its descriptors (width × 1e6, else density), None when the standard drops it."""
    width = density = height = None
    for d in descriptors:
        value, unit = d[:-1], d[-1]
        if unit == "w" and width is None and density is None and _NON_NEGATIVE_INTEGER.fullmatch(value):
            width = int(value)
            if width == 0:
                return None
        elif unit == "x" and width is None and density is None and height is None \
                and _FLOATING_POINT.fullmatch(value) and float(value) >= 0:
            density = float(value)
        elif unit == "h" and height is None and density is None and _NON_NEGATIVE_INTEGER.fullmatch(value):
            height = int(value)
            if height == 0:
                return None
        else:
            return None
    if height is not None and width is None:
        return None
    if width is not None:
        return width * 1e6
    return 1.0 if density is None else density


def largest_srcset_candidate(srcset: str) -> str | None:
    cands = parse_srcset(srcset)
    if not cands:
        return None
    return max(cands, key=lambda c: c[1])[0]
