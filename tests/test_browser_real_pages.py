"""Extract on real pages judged by a browser. Every page with an ``<img>`` in the real Common Crawl and ClueWeb
samples (``../shared/data/warc``: 42 pages from 2009 to 2024 in EUC-JP, GB2312, GBK, windows-1251, ISO-8859-1 and
UTF-8) is served on 127.0.0.1 with the Content-Type it was captured with, and headless Chromium loads it with
scripts off, which is how extract reads a page: no script runs, and ``<noscript>`` content is markup. The browser
reports the encoding it chose and, for each ``<img>``, the ``alt`` it decoded and the URL it resolved. The records
are read with warcio, so nothing of extract's own WARC reader is shared with the reference.

**As captured.** Extract (``src`` and ``alt`` alone, empty texts kept) must give each image's (text, URL) as the
browser has it, leaving out only what it counts as dropped.

**Undeclared.** The same bytes with every ``charset`` spelled ``charxet`` (same length: no ``<meta>`` or header
names an encoding any more) and a bare ``text/html``, so both sides must detect the encoding. On every page in a
legacy encoding, extract's text is the browser's. On a UTF-8 page the browser takes windows-1252, by design
(browsers do not detect UTF-8 on the web, so that pages do not come to depend on it), and shows mojibake; extract
detects UTF-8 and gives the text the browser shows when the page declares it. A caption is worth more as its
author wrote it than as a browser's compatibility rule shows it. Either way the text is the one extract gives
when the encoding is declared.
"""

from __future__ import annotations

import re
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from warcio.archiveiterator import ArchiveIterator

from tests.helpers.cdp import Chromium, find_chromium
from witbuild.counters import StageCounts
from witbuild.sources.html import decode_page, page_images

# The document's URL and encoding, and each <img>'s src attribute, alt and resolved src.
REPORT = """({url: document.URL, charset: document.characterSet,
  images: [...document.images].map(i => [i.getAttribute("src"), i.alt, i.src])})"""
Pair = tuple[str, str]  # (text, URL)


@dataclass(frozen=True)
class Page:
    source: str  # sample file
    url: str  # where it was captured
    content_type: str
    body: bytes  # the payload, content-encoding undone

    def undeclared(self) -> Page:
        return Page(self.source, self.url, "text/html", re.sub(rb"(?i)charset", b"charxet", self.body))


def sample_pages(folder: Path) -> list[Page]:
    """The 200 responses of the samples that are HTML pages with an ``<img``, read with warcio."""
    pages = []
    for path in sorted(folder.glob("*.warc.gz")):
        with path.open("rb") as f:
            for rec in ArchiveIterator(f):
                if rec.rec_type != "response" or rec.http_headers is None:
                    continue
                content_type = rec.http_headers.get_header("Content-Type") or "text/html"
                if rec.http_headers.get_statuscode() != "200" or "html" not in content_type.lower():
                    continue
                body = rec.content_stream().read()  # warcio undoes chunking and gzip
                if re.search(rb"(?i)<img", body):
                    pages.append(Page(path.name, rec.rec_headers.get_header("WARC-Target-URI"), content_type, body))
    return pages


class Server:
    """Page ``i`` at ``/p{i}`` followed by its captured path and query, so relative URLs resolve as they did there."""

    def __init__(self, pages: list[Page]) -> None:
        served = pages

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                first = self.path.split("/")[1]
                index = int(first[1:]) if re.fullmatch(r"p\d+", first) else len(served)
                page = served[index] if index < len(served) else None
                body = page.body if page else b""
                self.send_response(200 if page else 404)
                self.send_header("Content-Type", page.content_type if page else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Threaded(socketserver.ThreadingTCPServer):
            daemon_threads = True

        self.httpd = Threaded(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, index: int, page: Page) -> str:
        parts = urlsplit(page.url)
        return f"{self.origin}/p{index}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Seen:
    """One page as the browser and as extract read it."""

    page: Page
    browser_charset: str
    shown: list[Pair]  # each <img>: (alt as the browser decoded it, resolved src; "" without a src)
    taken: list[Pair]  # extract's (text, URL)
    encoding: str  # extract's
    dropped: Counter[str]


def read_both(chromium: Chromium, server: Server, pages: list[Page], first: int = 0) -> list[Seen]:
    """Each page, served as page ``first + i``, read by the browser and by extract."""
    seen = []
    for i, page in enumerate(pages, first):
        report = chromium.evaluate_page(server.url(i, page), REPORT)
        shown = [(alt, src if attr and attr.strip() else "") for attr, alt, src in report["images"]]
        charset = page.content_type.partition("charset=")[2].strip().strip("\"'") or None
        text, encoding = decode_page(page.body, charset)
        counts = StageCounts()
        refs, _ = page_images(text, report["url"], counts, url_attrs=("src",), text_attrs=("alt",),
                              keep_empty_text=True, max_text_chars=None, encoding=encoding)
        seen.append(Seen(page, report["charset"], shown, [(r.text, r.url) for r in refs], encoding,
                         Counter(counts.dropped)))
    return seen


def collapsed(text: str) -> str:
    return " ".join(text.split())


def _texts(pairs: list[Pair]) -> list[Pair]:
    return [(text, "") for text, _ in pairs]


def kept_in_order(shown: list[Pair], taken: list[Pair], dropped: Counter[str]) -> bool:
    """``taken`` is ``shown`` (its text collapsed as extract collapses it) less as many images as extract counts as
    dropped, in the same order."""
    rest = iter([(collapsed(t), u) for t, u in shown])
    return all(pair in rest for pair in taken) and len(shown) - len(taken) == sum(dropped.values())


@pytest.fixture(scope="module")
def pages(shared_warc: Path) -> list[Page]:
    found = sample_pages(shared_warc)
    # of 46 HTML pages: 16 Common Crawl 2020 (4 without an <img>), 1 Wikipedia 2024, 29 ClueWeb09 in EUC-JP
    assert len(found) == 42, [p.url for p in found]
    return found


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed: apt-get install -y --no-install-recommends chromium")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(pages: list[Page]) -> Iterator[Server]:
    served = Server([*pages, *(p.undeclared() for p in pages)])
    yield served
    served.close()


@pytest.fixture(scope="module")
def declared(pages: list[Page], chromium: Chromium, server: Server) -> list[Seen]:
    return read_both(chromium, server, pages)


def test_real_pages_as_captured_give_the_browsers_images_and_text(declared: list[Seen]) -> None:
    seen = declared  # the pages as captured
    wrong = [(s.page.url, s.encoding, s.browser_charset, [p for p in s.shown if p not in s.taken],
              [p for p in s.taken if p not in s.shown]) for s in seen if not kept_in_order(s.shown, s.taken, s.dropped)]
    assert not wrong, "page, extract's encoding, the browser's, the browser's pairs only, extract's only:\n" + \
        "\n".join(map(repr, wrong))
    assert sum(len(s.shown) for s in seen) == 1_418
    # Wikipedia's wordmark and tagline (SVG), four <img> without a src
    assert sum((s.dropped for s in seen), Counter()) == {"svg": 2, "no_url": 4}
    assert sum(any(ord(c) > 0x7F for t, _ in s.taken for c in t) for s in seen) == 34  # pages with non-ASCII text


def test_undeclared_real_pages_decode_as_detected_by_the_browser_or_as_utf8(pages, chromium, server,
                                                                           declared: list[Seen]) -> None:
    undeclared = [p.undeclared() for p in pages]
    assert all(b"charset" not in p.body.lower() for p in undeclared)
    seen = read_both(chromium, server, undeclared, first=len(pages))
    wrong, utf8, mojibake = [], 0, 0
    for s, d in zip(seen, declared, strict=True):
        if s.encoding == "utf-8" and s.browser_charset == "windows-1252":
            utf8 += 1  # the text is the browser's reading of the page that declares UTF-8
            mojibake += [t for t, _ in s.shown] != [t for t, _ in d.shown]
            agrees = kept_in_order(_texts(d.shown), _texts(s.taken), s.dropped)
        else:
            agrees = kept_in_order(s.shown, s.taken, s.dropped)
        same_text = _texts(s.taken) == _texts(d.taken)  # as when the encoding was declared
        if not agrees or not same_text:
            wrong.append((s.page.url, s.encoding, s.browser_charset, same_text))
    assert not wrong, "page, extract's encoding, the browser's, same text as declared:\n" + "\n".join(map(repr, wrong))
    assert utf8 == sum(d.encoding == "utf-8" for d in declared) == 7  # every UTF-8 page, and only those
    assert mojibake == 3  # of them with non-ASCII alt text, which the browser garbles
