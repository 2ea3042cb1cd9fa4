"""A small web site on 127.0.0.1 whose every ``<img>`` is known in advance, and the real tools that archive it.

The extract stage must read WARC and WAT files written by whatever users crawl with, not only by Common
Crawl and by the project itself. This module serves a site (a table of pages, written by hand, each with
the (absolute image URL, alt text) pairs a correct extractor must report) in all the ways real servers
answer: Content-Length, chunked, gzip/deflate/brotli content encodings sent unasked, HTTP/1.0 with a
close-delimited body, no Content-Type, a mixed-case charset, redirects and error pages whose bodies hold
images that must not be extracted. The writers then archive it with GNU Wget and warcio, for real.

Run as ``python -m tests.helpers.warc_site warcio OUT VERSION URL...`` it captures URLs with warcio's
``capture_http``: that module patches ``http.client`` at import, so it must be imported before
``requests``/``urllib3`` are, which only a fresh interpreter guarantees.

Standard library (and ``brotli``) only at import time: nothing here may import ``requests`` early.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import html
import io
import json
import shutil
import socketserver
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli

ROOT = Path(__file__).resolve().parents[2]
OTHER_HOST = "images.invalid"  # never fetched: no writer follows links off the site, and .invalid never resolves


SAME_URL = "=url"  # Img.wat_url: src alone gives the pair's URL
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"  # lazy loaders' placeholder


@dataclass(frozen=True)
class Img:
    """One ``<img>`` as written in a page, and the pair a correct extractor reports for it.

    ``src`` may hold ``{origin}`` (``http://127.0.0.1:PORT``) or ``{port}``. ``url`` is the expected
    absolute URL, written by hand: a leading ``/`` means "on this site". ``url``/``alt`` are None when the
    image yields no pair (no text). ``alt_html`` is the attribute as written when it differs from ``alt``
    (entities); ``style`` varies how the tag is written. ``markup`` writes the element whole (srcset, lazy
    loaders' attributes, ``<picture>``): ``src`` is then its ``src`` attribute as written ("" when it has none),
    and ``wat_url`` the pair a reader of ``src`` alone reports (None: none), as a WAT's ``IMG@/src`` link has it.
    """

    src: str
    url: str | None
    alt: str | None
    alt_html: str | None = None
    style: str = "plain"  # plain | upper | single | unquoted
    markup: str | None = None  # the element as written, when it is more than <img src alt>: {alt} is filled in
    wat_url: str | None = SAME_URL  # what ``src`` alone gives (a WAT's IMG@/src), when that is not ``url``

    def tag(self, origin: str, port: int) -> str:
        src = self.src.format(origin=origin, port=port)
        alt = self.alt_html if self.alt_html is not None else (self.alt or "")
        if self.markup is not None:
            return self.markup.format(alt=alt, origin=origin, port=port)
        if self.style == "upper":
            return f'<IMG SRC="{src}" ALT="{alt}">'
        if self.style == "single":
            return f"<img alt='{alt}' src='{src}' width=10>"
        if self.style == "unquoted":
            return f'<img src={src} class=pic alt="{alt}">'
        return f'<img src="{src}" alt="{alt}">'


@dataclass(frozen=True)
class Page:
    """A page of the site: where it lives, how the server delivers it, and its images."""

    path: str
    delivery: str  # plain | chunked | gzip | deflate | br | http10 | no_type | latin1
    title: str
    imgs: tuple[Img, ...]
    base: str | None = None  # <base href> as written
    aliases: tuple[str, ...] = ()  # other URLs serving the same bytes
    linked: bool = True  # linked from the index (else reached only through a redirect)


@dataclass(frozen=True)
class NotAPage:
    """A response that is not a page (redirect, error): its body has images no extractor may report."""

    path: str
    status: int
    reason: str
    imgs: tuple[Img, ...]
    location: str | None = None


TWICE_ALIAS = "/twice.html?via=second"  # the second URL of the page linked twice

PAGES: tuple[Page, ...] = (
    Page("/", "plain", "Index of the test site", (
        Img("img/home.jpg", "/img/home.jpg", "the home page banner"),
        Img("{origin}/img/absolute.png", "/img/absolute.png", "a picture with an absolute source"),
        Img(f"https://{OTHER_HOST}/remote.jpg", f"https://{OTHER_HOST}/remote.jpg", "a picture on another host"),
        Img("/img/fish.jpg", "/img/fish.jpg", "fish & chips on a plate", alt_html="fish &amp; chips on a plate"),
        Img("img/spacer.gif", None, None),  # alt="": no text, no pair
    )),
    Page("/chunked.html", "chunked", "Sent in chunks", (
        Img("img/chunk-one.jpg", "/img/chunk-one.jpg", "first picture of a chunked page", style="upper"),
        Img("/img/chunk-two.png", "/img/chunk-two.png", "second picture of a chunked page", style="single"),
        Img("img/chunk-three.jpg", "/img/chunk-three.jpg", "third picture of a chunked page", style="unquoted"),
    )),
    Page("/gzip.html", "gzip", "Gzip content encoding", (
        Img("img/gzip-a.jpg", "/img/gzip-a.jpg", "a picture behind gzip"),
        Img("/img/gzip-b.jpg", "/img/gzip-b.jpg", "another picture behind gzip"),
    )),
    Page("/deflate.html", "deflate", "Deflate content encoding", (
        Img("img/deflate-a.jpg", "/img/deflate-a.jpg", "a picture behind deflate"),
        Img("/img/deflate-b.png", "/img/deflate-b.png", "another picture behind deflate"),
    )),
    Page("/brotli.html", "br", "Brotli content encoding", (
        Img("img/brotli-a.jpg", "/img/brotli-a.jpg", "a picture behind brotli"),
        Img("/img/brotli-b.jpg", "/img/brotli-b.jpg", "another picture behind brotli"),
    )),
    Page("/http10.html", "http10", "An HTTP/1.0 answer", (
        Img("img/old-server.jpg", "/img/old-server.jpg", "a picture from an HTTP/1.0 server"),
        Img("/img/close-delimited.png", "/img/close-delimited.png", "a body that ends when the connection closes"),
    )),
    Page("/notype.html", "no_type", "No Content-Type", (
        Img("img/untyped-a.jpg", "/img/untyped-a.jpg", "a picture on a page without a content type"),
        Img("img/untyped-b.jpg", "/img/untyped-b.jpg", "a second untyped picture"),
    )),
    Page("/latin1.html", "latin1", "Caf\u00e9 in ISO-8859-1", (
        Img("img/cafe.jpg", "/img/cafe.jpg", "caf\u00e9 au lait"),
        Img("img/creme.jpg", "/img/creme.jpg", "cr\u00e8me br\u00fbl\u00e9e avec fa\u00e7on"),
        Img("img/ueber.jpg", "/img/ueber.jpg", "\u00dcber uns", alt_html="&Uuml;ber uns"),
    )),
    Page("/deep/dir/page.html", "plain", "Relative paths", (
        Img("../../img/deep-root.jpg", "/img/deep-root.jpg", "two levels up"),
        Img("../sibling.jpg", "/deep/sibling.jpg", "one level up"),
        Img("./here.jpg", "/deep/dir/here.jpg", "right here"),
        Img("pics/query.jpg?v=2", "/deep/dir/pics/query.jpg?v=2", "a source with a query"),
        Img("/img/rooted.jpg", "/img/rooted.jpg", "a root-relative source"),
    )),
    Page("/based.html", "plain", "A base element", (
        Img("a.jpg", "/assets/v2/a.jpg", "relative to the base"),
        Img("../up.jpg", "/assets/up.jpg", "above the base"),
        Img("/img/root-under-base.jpg", "/img/root-under-base.jpg", "root-relative despite the base"),
    ), base="/assets/v2/"),
    Page("/protocol.html", "plain", "Protocol-relative sources", (
        Img("//127.0.0.1:{port}/img/proto.jpg", "/img/proto.jpg", "a protocol-relative source"),
        Img(f"//{OTHER_HOST}/proto-remote.png", f"http://{OTHER_HOST}/proto-remote.png",
            "a protocol-relative source on another host"),
    )),
    Page("/moved.html", "plain", "Where the permanent redirect goes", (
        Img("img/moved.jpg", "/img/moved.jpg", "a picture after a permanent redirect"),
    ), linked=False),
    Page("/landing.html", "plain", "Where the temporary redirect goes", (
        Img("img/landing.jpg", "/img/landing.jpg", "a picture after a temporary redirect"),
    ), linked=False),
    Page("/responsive.html", "plain", "Responsive and lazy images", (
        Img("img/small.jpg", "/img/large.jpg", "the largest candidate of a srcset", wat_url="/img/small.jpg",
            markup='<img src="img/small.jpg" srcset="img/small.jpg 320w, img/large.jpg 1280w, '
                   'img/medium.jpg 640w" alt="{alt}" sizes="100vw">'),
        Img(PIXEL, "/img/lazy.jpg", "a lazily loaded picture", wat_url=None,
            markup=f'<img src="{PIXEL}" data-src="img/lazy.jpg" alt="{{alt}}" loading="lazy">'),
        Img("", "/img/photo-2x.webp", "a picture element with a WebP source", wat_url=None,
            markup='<picture>\n  <source type="image/svg+xml" srcset="img/vector.svg">\n'
                   '  <source type="image/webp" srcset="img/photo.webp 1x, img/photo-2x.webp 2x">\n'
                   '  <img alt="{alt}" width="640">\n</picture>'),
        Img(PIXEL, "/img/art-big.jpg", "a lazily loaded picture element", wat_url=None,
            markup=f'<picture><source media="(min-width: 800px)" data-srcset="img/art.jpg 800w, '
                   f'img/art-big.jpg 1600w"><img src="{PIXEL}" alt="{{alt}}" class="lazyload"></picture>'),
        Img("img/placeholder.gif", "/img/sized.jpg", "a lazysizes image over a placeholder file",
            wat_url="/img/placeholder.gif",
            markup='<img src="img/placeholder.gif" data-srcset="img/sized-300.jpg 300w, img/sized.jpg 900w" '
                   'data-sizes="auto" class="lazyload" alt="{alt}">'),
        Img("/img/grey.gif", "/img/original.jpg", "a jQuery lazy load image", wat_url="/img/grey.gif",
            markup='<img class="lazy" src="/img/grey.gif" data-original="img/original.jpg" alt="{alt}">'),
        Img("img/blank.gif", "/img/rocket.jpg", "a WP Rocket lazy image", wat_url="/img/blank.gif",
            markup='<img src="img/blank.gif" data-lazy-src="img/rocket.jpg" width="640" alt="{alt}">'),
        Img("/img/own.jpg", "/img/own.jpg", "an image in a picture keeps its own source",
            markup='<picture><source srcset="img/other.webp" type="image/webp">'
                   '<img src="/img/own.jpg" alt="{alt}"></picture>'),
    )),
    Page("/twice.html", "plain", "Linked under two URLs", (
        Img("img/twice-a.jpg", "/img/twice-a.jpg", "a page reachable twice"),
        Img("/img/twice-b.jpg", "/img/twice-b.jpg", "the same page under another URL"),
    ), aliases=(TWICE_ALIAS,)),
)

NOT_PAGES: tuple[NotAPage, ...] = (
    NotAPage("/old.html", 301, "Moved Permanently", (
        Img("/img/in-301-body.jpg", "/img/in-301-body.jpg", "a picture in a permanent redirect body"),
    ), location="{origin}/moved.html"),
    NotAPage("/temp.html", 302, "Found", (
        Img("/img/in-302-body.jpg", "/img/in-302-body.jpg", "a picture in a temporary redirect body"),
    ), location="/landing.html"),
    NotAPage("/missing.html", 404, "Not Found", (
        Img("/img/in-404-body.jpg", "/img/in-404-body.jpg", "a picture on a not found page"),
        Img("img/in-404-body-2.png", "/img/in-404-body-2.png", "another picture on a not found page"),
    )),
    NotAPage("/broken.html", 500, "Internal Server Error", (
        Img("/img/in-500-body.jpg", "/img/in-500-body.jpg", "a picture on a server error page"),
    )),
)

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
IMAGE_SUFFIXES = (".jpg", ".png", ".gif", ".webp", ".svg")
CHUNK = 61  # small and odd, so chunk boundaries fall inside <img> tags


def _png(seed: bytes) -> bytes:
    """A 1x1 PNG whose colour depends on ``seed``: every image URL gets its own bytes (and digest)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rgb = hashlib.sha1(seed).digest()[:3]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + rgb)) + chunk(b"IEND", b""))


def _http_date() -> str:
    return email.utils.formatdate(usegmt=True)


class WarcSite:
    """The site, served by a threaded server on 127.0.0.1 at a free port; use as a context manager."""

    def __init__(self) -> None:
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def __enter__(self) -> WarcSite:
        site = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 10  # an idle keep-alive connection ends here

            def handle(self) -> None:
                site._serve_connection(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="warc-site", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- what the server says --------------------------------------------------------------------------

    def _serve_connection(self, rfile: Any, wfile: Any) -> None:
        """Requests on one connection, answered in turn until either side closes (HTTP/1.1 keep-alive)."""
        while True:
            try:
                line = rfile.readline(8192)
                if not line:
                    return
                if not line.strip():
                    continue
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                while True:
                    h = rfile.readline(8192)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                raw, keep_open = self.response(target)
                if method == "HEAD":
                    raw = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                wfile.write(raw)
                wfile.flush()
            except OSError:  # a reset, or the idle timeout
                return
            if not keep_open or version == "HTTP/1.0" or headers.get("connection", "").lower() == "close":
                return

    def response(self, target: str) -> tuple[bytes, bool]:
        """The raw bytes the server sends for ``target`` and whether the connection stays open."""
        path = target.split("#", 1)[0]
        bare = path.split("?", 1)[0]
        for page in PAGES:
            if path == page.path or path in page.aliases:
                return self._deliver(page)
        for other in NOT_PAGES:
            if bare == other.path:
                headers = [("Content-Type", "text/html; charset=utf-8")]
                if other.location:
                    headers.append(("Location", other.location.format(origin=self.origin, port=self.port)))
                body = self.not_a_page_html(other).encode()
                return _http11(f"{other.status} {other.reason}", headers, body), True
        if bare == "/robots.txt":
            return _http11("200 OK", [("Content-Type", "text/plain")], ROBOTS), True
        if bare.endswith(IMAGE_SUFFIXES):
            return _http11("200 OK", [("Content-Type", "image/png")], _png(bare.encode())), True
        return _http11("404 Not Found", [("Content-Type", "text/plain")], b"no such thing\n"), True

    def _deliver(self, page: Page) -> tuple[bytes, bool]:
        d = page.delivery
        html_type = [("Content-Type", "text/html; charset=utf-8")]
        if d == "latin1":
            body = self.page_html(page).encode("iso-8859-1")
            return _http11("200 OK", [("Content-Type", "Text/HTML; Charset=ISO-8859-1")], body), True
        body = self.page_html(page).encode()
        if d == "plain":
            return _http11("200 OK", html_type, body), True
        if d == "no_type":
            return _http11("200 OK", [], body), True
        if d == "chunked":
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + CHUNK]), body[i:i + CHUNK])
                              for i in range(0, len(body), CHUNK))
            head = _head("HTTP/1.1 200 OK", [*html_type, ("Transfer-Encoding", "chunked")])
            return head + chunks + b"0\r\n\r\n", True
        if d in ("gzip", "deflate", "br"):
            encoded = {"gzip": lambda b: gzip.compress(b, mtime=0), "deflate": zlib.compress,
                       "br": brotli.compress}[d](body)
            return _http11("200 OK", [*html_type, ("Content-Encoding", d), ("Vary", "Accept-Encoding")],
                           encoded), True
        if d == "http10":
            return _head("HTTP/1.0 200 OK", [*html_type, ("Connection", "close")]) + body, False
        raise ValueError(f"unknown delivery {d!r}")

    # --- the pages ---------------------------------------------------------------------------------------

    def page_html(self, page: Page) -> str:
        """The page's HTML; every page links to the index and the index links to every page."""
        charset = "" if page.delivery == "latin1" else '<meta charset="utf-8">'
        base = f'<base href="{page.base}">' if page.base else ""
        imgs = "\n".join(f"<p>{img.tag(self.origin, self.port)}</p>" for img in page.imgs)
        if page.path == "/":
            targets = [p for p in PAGES if p.linked and p.path != "/"]
            links = [f'<li><a href="{p.path.lstrip("/")}">{html.escape(p.title)}</a></li>' for p in targets]
            links += [f'<li><a href="{a.lstrip("/")}">{html.escape(p.title)} again</a></li>'
                      for p in targets for a in p.aliases]
            links += [f'<li><a href="{o.path}">{o.reason}</a></li>' for o in NOT_PAGES]
            links.append('<li><a href="/robots.txt">robots.txt</a></li>')
        else:
            links = ['<li><a href="/">home</a></li>', '<li><a href="/latin1.html">caf&eacute;</a></li>']
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head>{charset}<title>{html.escape(page.title)}</title>"
                f"{base}</head>\n<body><h1>{html.escape(page.title)}</h1>\n"
                f"<p>Some words about {html.escape(page.title.lower())} so the page is not only images.</p>\n"
                f"{imgs}\n<ul>{''.join(links)}</ul>\n</body></html>\n")

    def not_a_page_html(self, other: NotAPage) -> str:
        imgs = "\n".join(img.tag(self.origin, self.port) for img in other.imgs)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{other.status} {other.reason}"
                f"</title></head>\n<body><h1>{other.reason}</h1>\n{imgs}\n<a href=\"/\">home</a></body></html>\n")

    # --- the manifest ------------------------------------------------------------------------------------

    def absolute(self, expected: str) -> str:
        return self.origin + expected if expected.startswith("/") else expected

    def page_urls(self, page: Page) -> list[str]:
        return [self.url(page.path), *(self.url(a) for a in page.aliases)]

    def manifest(self) -> dict[str, Any]:
        """Every page URL with its expected pairs; every non-page URL with the images it must not yield."""
        pages = []
        for page in PAGES:
            pairs = [[self.absolute(i.url), i.alt] for i in page.imgs if i.url is not None and i.alt]
            wat = [[self.absolute(u), i.alt] for i in page.imgs
                   if (u := i.url if i.wat_url == SAME_URL else i.wat_url) is not None and i.alt]
            extra = {"wat_pairs": wat} if wat != pairs else {}
            pages.extend({"url": u, "delivery": page.delivery, "pairs": pairs, **extra}
                         for u in self.page_urls(page))
        not_pages = [{"url": self.url(o.path), "status": o.status,
                      "images": [self.absolute(i.url) for i in o.imgs if i.url]} for o in NOT_PAGES]
        return {"origin": self.origin, "pages": pages, "not_pages": not_pages,
                "robots": self.url("/robots.txt")}

    def crawl_urls(self) -> list[str]:
        """What the warcio capture fetches: the linked pages (the second URL of the page linked twice is
        written as a revisit instead), the non-pages, robots.txt and a few images; redirects are followed."""
        urls = [u for p in PAGES if p.linked for u in self.page_urls(p) if u != self.url(TWICE_ALIAS)]
        urls += [self.url(o.path) for o in NOT_PAGES] + [self.url("/robots.txt")]
        urls += [self.url(p) for p in ("/img/home.jpg", "/img/absolute.png", "/deep/dir/pics/query.jpg?v=2")]
        return urls


def _head(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line, f"Date: {_http_date()}", "Server: warc-site/1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _http11(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    return _head(f"HTTP/1.1 {status}", [*headers, ("Content-Length", str(len(body)))]) + body


# --- the writers ---------------------------------------------------------------------------------------------


@dataclass
class Written:
    """One archive file and what it holds: the page URLs captured with a 200 response, the revisits."""

    name: str
    writer: str
    pages: list[str]
    revisits: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"writer": self.writer, "pages": self.pages, "revisits": self.revisits}


def run_wget(site: WarcSite, workdir: Path, warc_name: str, *extra: str, start: str = "/",
             recursive: bool = True) -> None:
    """GNU Wget crawling the site into ``workdir/warc_name[.warc[.gz]]`` (it adds the suffix itself).

    ``-R`` keeps image files out (wget matches the name without its query string too): they would triple
    the size of the committed samples and add nothing the pages do not.
    """
    mirror = workdir / f"{warc_name}-mirror"
    cmd = ["wget", *(("-r", "-l", "inf") if recursive else ()), f"--warc-file={warc_name}", "-e", "robots=off",
           "-R", "*.jpg,*.png,*.gif,*.webp,*.svg", "-q", "-P", mirror.name, *extra, site.url(start)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=120)
    # wget exits 8 when some response was an error (our 404 and 500 pages): expected
    if proc.returncode not in (0, 8):
        raise RuntimeError(f"wget failed ({proc.returncode}): {proc.stderr[-2000:]}")
    shutil.rmtree(mirror, ignore_errors=True)


def run_warcio(site: WarcSite, dest: Path, version: str) -> None:
    """warcio's ``capture_http`` with ``requests`` fetching the site, in a fresh interpreter (see module doc)."""
    first = site.url("/twice.html")  # first: the revisit written at the end refers to it
    cmd = [sys.executable, "-m", "tests.helpers.warc_site", "warcio", str(dest), version, first,
           *[u for u in site.crawl_urls() if u != first]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"warcio capture failed: {proc.stderr[-3000:]}")


def _warcio_capture(dest: str, version: str, urls: list[str]) -> None:
    """warcinfo, the captures (request + response), a metadata record, then the second URL of the page
    linked twice as request + revisit of the first: what a deduplicating crawler writes."""
    # warcio.capture_http first: it patches http.client, which urllib3 subclasses when imported
    from warcio.capture_http import capture_http  # noqa: I001
    import requests
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    gz = dest.endswith(".gz")
    with open(dest, "wb") as fh:
        writer = WARCWriter(fh, gzip=gz, warc_version=version)
        writer.write_record(writer.create_warcinfo_record(Path(dest).name, {
            "software": "warcio capture_http with requests", "format": f"WARC File Format {version}",
            "isPartOf": "witbuild test site"}))
        session = requests.Session()
        first_url, first_body, first_date = urls[0], b"", ""
        with capture_http(writer):
            for url in urls:
                r = session.get(url, timeout=10)
                if url == first_url:
                    first_body = r.content
                    first_date = writer._make_warc_date(use_micros=version == "1.1")
        outlinks = "\n".join(f"outlink: {u}" for u in urls[1:6]).encode() + b"\n"
        writer.write_record(writer.create_warc_record(urls[0], "metadata", payload=io.BytesIO(outlinks),
                                                      warc_content_type="application/warc-fields"))
        alias = first_url[: first_url.index("/", 8)] + TWICE_ALIAS
        request = (f"GET {alias[alias.index('/', 8):]} HTTP/1.1\r\nHost: {alias.split('/')[2]}\r\n"
                   "User-Agent: python-requests\r\nAccept: */*\r\n\r\n").encode()
        writer.write_record(writer.create_warc_record(alias, "request", payload=io.BytesIO(request),
                                                      warc_content_type="application/http; msgtype=request"))
        digest = "sha1:" + base64.b32encode(hashlib.sha1(first_body).digest()).decode()
        http_headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                   ("Content-Length", str(len(first_body)))], protocol="HTTP/1.1")
        writer.write_record(writer.create_revisit_record(alias, digest, first_url, first_date,
                                                         http_headers=http_headers))


def write_single_stream(src: Path, dest: Path) -> None:
    """The whole uncompressed WARC as ONE gzip stream, by the gzip command, as ``gzip file.warc`` leaves it."""
    with open(dest, "wb") as out:
        subprocess.run(["gzip", "-9", "-n", "-c", str(src)], stdout=out, check=True, timeout=60)


def write_wat(site: WarcSite, source_warc: Path, dest: Path, *, bracketed: bool) -> None:
    """A WAT of ``source_warc`` in Common Crawl's layout: one metadata record per WARC record, whose JSON
    ``Envelope`` describes it; HTML responses get ``HTML-Metadata`` (``Head → Base``, ``Links[]`` with
    ``IMG@/src`` entries written from the page table, as the HTML has them: raw ``src``, decoded ``alt``).

    ``bracketed``: WARC-Target-URI as ``<http://…>`` in the record header and in the JSON (WARC/1.0 as
    wget writes it); else plain.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.warcwriter import WARCWriter

    by_path: dict[str, Page | NotAPage] = {}
    for page in PAGES:
        for p in (page.path, *page.aliases):
            by_path[p] = page
    for other in NOT_PAGES:
        by_path[other.path] = other

    def wrap(uri: str) -> str:
        return f"<{uri}>" if bracketed and uri else uri

    with open(source_warc, "rb") as src, open(dest, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        info = {"Software-Info": "ia-web-commons layout, written for the witbuild test site",
                "Extracted-Date": _http_date(), "format": "WARC File Format 1.0"}
        writer.write_record(writer.create_warcinfo_record(dest.name, info))
        it = ArchiveIterator(src)
        for rec in it:
            offset = it.get_record_offset()
            h = rec.rec_headers
            uri = (h.get_header("WARC-Target-URI") or "").strip("<>")
            rtype = rec.rec_type
            header_meta = {k: v for k, v in h.headers}
            if uri:
                header_meta["WARC-Target-URI"] = wrap(uri)
            envelope: dict[str, Any] = {"Format": "WARC", "WARC-Header-Length": str(len(h.to_bytes())),
                                        "Block-Digest": h.get_header("WARC-Block-Digest") or "",
                                        "Actual-Content-Length": h.get_header("Content-Length"),
                                        "WARC-Header-Metadata": header_meta}
            payload_meta: dict[str, Any] = {"Actual-Content-Type": h.get_header("Content-Type") or ""}
            if rtype in ("response", "revisit") and rec.http_headers is not None:
                hh = rec.http_headers
                status = hh.get_statuscode()
                response_meta: dict[str, Any] = {
                    "Response-Message": {"Version": hh.protocol or "HTTP/1.1", "Status": status,
                                         "Reason": hh.statusline.partition(" ")[2]},
                    "Headers-Length": str(len(hh.to_bytes())),
                    "Headers": {k: v for k, v in hh.headers},
                }
                path = uri[len(site.origin):] if uri.startswith(site.origin) else None
                target = by_path.get(path) if path is not None else None
                if rtype == "response" and target is not None:  # the site's HTML pages and non-pages
                    response_meta["HTML-Metadata"] = _html_metadata(site, target)
                payload_meta["HTTP-Response-Metadata"] = response_meta
            elif rtype == "request" and rec.http_headers is not None:
                payload_meta["HTTP-Request-Metadata"] = {"Request-Message": {
                    "Method": rec.http_headers.protocol, "Path": rec.http_headers.statusline.split(" ")[0]},
                    "Headers": {k: v for k, v in rec.http_headers.headers}}
            rec.raw_stream.read()  # to the end, so the next offset is right (raw: warcio cannot inflate br)
            envelope["Payload-Metadata"] = payload_meta
            doc = {"Container": {"Filename": source_warc.name, "Compressed": source_warc.suffix == ".gz",
                                 "Offset": str(offset)}, "Envelope": envelope}
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
            headers = {"WARC-Refers-To": h.get_header("WARC-Record-ID") or ""}
            meta = writer.create_warc_record(wrap(uri) or source_warc.name, "metadata", payload=io.BytesIO(body),
                                             length=len(body), warc_content_type="application/json",
                                             warc_headers_dict=headers)
            writer.write_record(meta)


def _html_metadata(site: WarcSite, target: Page | NotAPage) -> dict[str, Any]:
    head: dict[str, Any] = {"Title": getattr(target, "title", f"{getattr(target, 'status', '')}")}
    if isinstance(target, Page) and target.base:
        head["Base"] = target.base
    links: list[dict[str, str]] = [{"path": "A@/href", "url": "/", "text": "home"}]
    for img in target.imgs:
        if not img.src:  # an <img> without a src attribute has no IMG@/src link
            continue
        link = {"path": "IMG@/src", "url": img.src.format(origin=site.origin, port=site.port)}
        if img.alt:
            link["alt"] = img.alt
        links.append(link)
    return {"Head": head, "Links": links}


FILES = ("wget.warc.gz", "wget.warc", "wget-single-stream.warc.gz", "wget-dedup.warc.gz",
         "warcio-1.1.warc.gz", "warcio-1.0.warc.gz", "site.warc.wat.gz", "site-bracketed.warc.wat.gz")


def write_all(site: WarcSite, out: Path) -> dict[str, Written]:
    """Every kind of file (``FILES``) written into ``out`` by the real tools, each checked to hold what
    its :class:`Written` says (a 200 response for each of its pages, a revisit record for each revisit)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    work.mkdir(exist_ok=True)
    all_pages = [u for p in PAGES for u in site.page_urls(p)]
    twice, alias = site.url("/twice.html"), site.url(TWICE_ALIAS)
    written: dict[str, Written] = {}

    run_wget(site, work, "wget")
    shutil.move(work / "wget.warc.gz", out / "wget.warc.gz")
    written["wget.warc.gz"] = Written("wget.warc.gz", "wget -r (a gzip member per record)", all_pages)

    run_wget(site, work, "wget", "--no-warc-compression")
    shutil.move(work / "wget.warc", out / "wget.warc")
    written["wget.warc"] = Written("wget.warc", "wget -r --no-warc-compression", all_pages)

    write_single_stream(out / "wget.warc", out / "wget-single-stream.warc.gz")
    written["wget-single-stream.warc.gz"] = Written("wget-single-stream.warc.gz", "gzip -9 -n -c wget.warc",
                                                    all_pages)

    # a first crawl of /twice.html alone writes a CDX; the full crawl deduplicates against it. wget matches
    # URL and payload digest, so /twice.html becomes a revisit and its second URL a full response.
    run_wget(site, work, "prime", "--warc-cdx", start="/twice.html", recursive=False)
    run_wget(site, work, "wget-dedup", "--warc-dedup=prime.cdx")
    shutil.move(work / "wget-dedup.warc.gz", out / "wget-dedup.warc.gz")
    written["wget-dedup.warc.gz"] = Written("wget-dedup.warc.gz", "wget -r --warc-dedup=CDX of /twice.html",
                                            [u for u in all_pages if u != twice], [twice])

    for version in ("1.1", "1.0"):
        name = f"warcio-{version}.warc.gz"
        run_warcio(site, out / name, version)
        written[name] = Written(name, f"warcio capture_http with requests, then WARCWriter; WARC/{version}",
                                [u for u in all_pages if u != alias], [alias])

    for name, bracketed in (("site.warc.wat.gz", False), ("site-bracketed.warc.wat.gz", True)):
        write_wat(site, out / "wget.warc.gz", out / name, bracketed=bracketed)
        written[name] = Written(name, f"WAT of wget.warc.gz by warcio's WARCWriter, target URIs "
                                f"{'<bracketed>' if bracketed else 'plain'}", all_pages)
    shutil.rmtree(work)

    for name, w in written.items():
        if name.endswith(".wat.gz"):
            continue
        recs = read_records((out / name).read_bytes())
        ok = {r.uri for r in recs if r.type == "response" and r.status == 200}
        revisits = [r.uri for r in recs if r.type == "revisit"]
        if not set(w.pages) <= ok or sorted(revisits) != sorted(w.revisits):
            raise RuntimeError(f"{name}: pages missing {sorted(set(w.pages) - ok)}, revisits {revisits}")
    return written


# --- a plain reading of the WARC format, independent of any WARC library ------------------------------------


@dataclass(frozen=True)
class RawRecord:
    """One record of an intact WARC as the format defines it; offsets are in the uncompressed stream."""

    start: int  # the "WARC/" line
    block_start: int  # after the header's blank line
    end: int  # after the block and its two CRLFs
    version: str
    type: str
    uri: str  # WARC-Target-URI, angle brackets removed
    status: int | None  # HTTP status of response and revisit records
    fields: dict[str, str]


def uncompressed(data: bytes) -> bytes:
    """The WARC stream of a .warc, a .warc.gz with a gzip member per record, or one gzip stream."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_records(data: bytes) -> list[RawRecord]:
    """Records of an intact WARC (file bytes, compressed or not), by Content-Length alone."""
    data = uncompressed(data)
    out: list[RawRecord] = []
    pos = 0
    while pos < len(data):
        head_end = data.index(b"\r\n\r\n", pos)
        lines = data[pos:head_end].decode("utf-8").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        block_start = head_end + 4
        end = block_start + int(fields["content-length"]) + 4
        if data[end - 4:end] != b"\r\n\r\n":
            raise ValueError(f"record at {pos} does not end with CRLF CRLF")
        block = data[block_start:end - 4]
        status = None
        if fields["warc-type"] in ("response", "revisit") and block.startswith(b"HTTP/"):
            status = int(block.split(b" ", 2)[1])
        uri = fields.get("warc-target-uri", "")
        if uri.startswith("<") and uri.endswith(">"):
            uri = uri[1:-1]
        out.append(RawRecord(pos, block_start, end, lines[0], fields["warc-type"], uri, status, fields))
        pos = end
    return out


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "warcio":
        sys.exit("usage: python -m tests.helpers.warc_site warcio OUT VERSION URL...")
    _warcio_capture(sys.argv[2], sys.argv[3], sys.argv[4:])
