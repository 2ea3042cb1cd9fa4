"""Extract judged by a browser: headless Chromium, with pages served on 127.0.0.1, says which image an ``<img>``
shows, and extract must take that one.

**Lazy loaders.** Each page is written the way a loader's documentation writes it: a placeholder in ``src`` (a real
file, or a ``data:`` pixel) and the image in the loader's attribute. The real scripts
(``tests/data/lazy_loaders/packages.txt``, packed from npm by ``make install`` into ``.venv/js``) run in the browser.
Once no image shows a placeholder any more (or after 20 s), the page posts its DOM back, and that DOM is read with
``src``/``srcset`` alone: what a browser shows. Extract, reading the page as served with its default
``extract.url_attrs``, must give the same (text, URL) pairs; reading ``src`` and ``srcset`` alone (cc2dataset's rule,
a WAT's ``IMG@/src``) gives the placeholders instead, so the check can fail. WP Rocket is a WordPress plugin, not an
npm package: its lazy load is vanilla-lazyload reading ``data-lazy-src`` and ``data-lazy-srcset``, which is how that
page sets it up.

**srcset.** At a device scale factor of 8 a browser shows a srcset's densest candidate when none reaches 8 (every
candidate here: densities under 8, widths under 8 × the 1,200 px window at ``sizes="100vw"``), which is the
candidate extract takes; a srcset with no valid candidate shows ``src``. Each image posts its ``currentSrc``.

**URLs.** The URL each of 37 ``src`` spellings resolves to, against a relative ``<base href>``, is the ``src`` the
browser reports: the WHATWG URL standard.

**Markup.** The ``<img>`` elements of a page of parser corner cases, and their ``alt`` (whitespace collapsed, as
extract collapses it), are the ones the browser's DOM has.

**Text.** Pages that declare their encoding in the ways pages and servers do (BOM, HTTP charset, ``<meta>``, labels
of the WHATWG table, the vendors' decoders) load in frames; each image's ``alt`` as the browser decoded it is the
text extract must give, and its ``src`` the URL (a query's non-ASCII characters are written in the page's encoding).

Posting back, rather than dumping the DOM after a fixed virtual time, keeps the checks the same on a busy machine
(a 5 s virtual-time dump caught lazysizes mid-way in 4 runs of 15).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socketserver
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.helpers.warc_site import PIXEL, _png
from witbuild.counters import StageCounts
from witbuild.sources.html import decode_page, page_images

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ROOT / "tests" / "data" / "lazy_loaders" / "packages.txt"
TARBALLS = ROOT / ".venv" / "js"
SCRIPT_IN_TARBALL = {  # npm package -> the browser build inside its tarball
    "lazysizes": "package/lazysizes.min.js",
    "vanilla-lazyload": "package/dist/lazyload.min.js",
    "lozad": "package/dist/lozad.min.js",
    "jquery": "package/dist/jquery.min.js",
    "jquery-lazyload": "package/jquery.lazyload.js",
}
SIZE = 'width="120" height="90"'  # every image inside the first screen: the loaders load what is in view

# loader -> (packages whose scripts the page loads, in order; the images; the script that starts the loader)
LOADERS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "lazysizes": (("lazysizes",), f"""
<img src="/img/placeholder.gif" data-src="/img/ls-photo.jpg" class="lazyload" alt="a lazysizes photo" {SIZE}>
<img src="/img/lqip.jpg" data-srcset="/img/ls-set-300.jpg 300w, /img/ls-set-900.jpg 900w" data-sizes="auto"
     class="lazyload" alt="a lazysizes srcset" {SIZE}>
<picture><source type="image/webp" data-srcset="/img/ls-pic.webp">
  <img src="{PIXEL}" data-src="/img/ls-pic.jpg" class="lazyload" alt="a lazysizes picture" {SIZE}></picture>
""", ""),
    "vanilla-lazyload": (("vanilla-lazyload",), f"""
<img class="lazy" src="/img/placeholder.gif" data-src="/img/vl-photo.jpg" alt="a vanilla-lazyload photo" {SIZE}>
<img class="lazy" src="/img/placeholder.gif" data-src="/img/vl-set-300.jpg"
     data-srcset="/img/vl-set-300.jpg 300w, /img/vl-set-900.jpg 900w" alt="a vanilla-lazyload srcset" {SIZE}>
""", 'new LazyLoad({elements_selector: ".lazy"});'),
    "wp-rocket": (("vanilla-lazyload",), f"""
<img src="/wp-content/plugins/rocket/blank.gif" data-lazy-src="/img/wp-photo.jpg" alt="a WP Rocket photo" {SIZE}>
<img src="/wp-content/plugins/rocket/blank.gif" data-lazy-src="/img/wp-set.jpg"
     data-lazy-srcset="/img/wp-set.jpg 640w, /img/wp-set-1280.jpg 1280w" alt="a WP Rocket srcset" {SIZE}>
""", 'new LazyLoad({elements_selector: "img[data-lazy-src]", data_src: "lazy-src", data_srcset: "lazy-srcset"});'),
    "lozad": (("lozad",), f"""
<img class="lozad" src="/img/placeholder.gif" data-src="/img/lz-photo.jpg" alt="a lozad photo" {SIZE}>
<img class="lozad" src="/img/placeholder.gif" data-srcset="/img/lz-set-300.jpg 300w, /img/lz-set-900.jpg 900w"
     alt="a lozad srcset" {SIZE}>
""", 'lozad(".lozad").observe();'),
    "jquery-lazyload": (("jquery", "jquery-lazyload"), f"""
<img class="lazy" src="/img/grey.gif" data-original="/img/jq-photo.jpg" alt="a jQuery Lazy Load photo" {SIZE}>
""", '$("img.lazy").lazyload();'),
}

# srcset values as pages write them, and as they break the standard's rules; widths against densities in one set are
# left out: a browser weighs a width against the layout's width, which extract does not know (it ranks widths first)
SRCSETS = (
    "a.jpg 1x, b.jpg 2x, c.jpg 3x",
    "s.jpg 320w, l.jpg 1280w, m.jpg 640w",
    "q_auto,f_auto/c.png 1x, q_auto,f_auto/d.png 2x",  # commas inside URLs (image CDNs)
    "a.jpg 1x,b.jpg 2x",
    "x.jpg,y.jpg 2x",  # no whitespace: one URL
    "a.jpg 1x, b.jpg 2x,",
    "a.jpg 1.5x, b.jpg 2.5x, c.jpg 2x",
    "a.jpg, b.jpg 2x",  # no descriptor: 1x
    "a.jpg   2x  , b.jpg 3x",
    "a.jpg 2x, b.jpg 2x",  # a repeated density: the first
    "a.jpg 640w, b.jpg 640w",
    f"{PIXEL} 1x, real.jpg 2x",  # a data: URL's comma
    "a.jpg 1x,\n b.jpg 2x",
    "a.jpg 0x, b.jpg 1x",
    "a.jpg 1e0x, b.jpg 5e-1x",  # exponents
    ", , a.jpg 1x, , b.jpg 2x",
    "a.jpg 3x, b.jpg 2x, c.jpg",
    "a%20b.jpg 2x, c.jpg 1x",
    "a.jpg 1x (foo, bar), b.jpg 2x",  # a comma in parentheses does not end the descriptors
    "a.jpg 200w 100h, b.jpg 100w",
    # candidates the standard drops: what is left wins, and with nothing left the image shows src
    "big.jpg 5q, small.jpg 1x",
    "a.jpg 100w 2x, b.jpg 1x",
    "a.jpg 100.5w, b.jpg 50w",
    "a.jpg 2x 100h, b.jpg 1x",
    "a.jpg -2x, b.jpg 1x",
    "a.jpg 0w, b.jpg 1x",
    "a.jpg 1X, b.jpg 2X",
    "a.jpg 7x 7x",
)

# image references as pages write them, resolved on a page whose <base href> is itself relative; two spellings are
# left out: a no-break space at an end (extract trims it, a browser keeps it) and "|" in a path (Chromium
# percent-encodes it, which the URL standard does not)
SRCS = (
    "a.jpg", "/a.jpg", "../../../a.jpg", "./x/../a.jpg", "//{host}/a.jpg", "\\img\\a.jpg", "img\\a.jpg",
    "a b.jpg", " a.jpg ", "a\tb\n.jpg", "caf\u00e9.jpg", "%7Euser/a.jpg", "a.jpg#frag", "a.jpg?x=1 2", "http:a.jpg",
    "HTTP://{host}/A.jpg", "http://{host}/./b/../a.jpg", "http://{host}/a%2fb.jpg", "a.jpg?q=\u00e9", "?q=1",
    "http://{host}//double//slash.jpg", "http://LOCALHOST:{port}/a.jpg", "http://127.0.0.1:80/a.jpg",
    'a"b.jpg', "a<b>.jpg", "a^b.jpg", "a{{b}}.jpg", "a`b.jpg", "a%zzb.jpg", "/a/%2e%2e/b.jpg", "/a/%2E./b.jpg",
    "http://0x7f.0.0.1:{port}/hex.jpg", "http://2130706433:{port}/decimal.jpg", "https://{host}/x.jpg",
    "http://user:pw@{host}/creds.jpg", "http://[::1]:{port}/v6.jpg", "http://B\u00fccher.example/umlaut.jpg",
)

# markup whose <img> elements and alt text only the HTML standard's parser reads right: character references
# (legacy ones without ";", numeric ones out of range or in the C1 block), attributes given twice or unquoted, the
# <image> tag, <img> breaking out of <svg> and <math>, and the places where no element is parsed (<template>,
# <textarea>, <title>, <iframe>, <xmp>) or where one is moved (out of a <table>)
MARKUP = (
    '<img src="m1.jpg" alt="fish &amp; chips">', '<img src="m2.jpg" alt="caf&eacute; cr&egrave;me">',
    '<img src="m3.jpg" alt="&copy 2020 photo">', '<img src="m4.jpg" alt="a&copy=1 b">',
    '<img src="m5.jpg" alt="&notit; &notin; x">', '<img src="m6.jpg" alt="&#x41;&#66;&#0;&#x110000;&#128;">',
    '<img src="m7.jpg" alt=unquoted&amp;x title=t>', '<img src="m8.jpg" alt="first" alt="second">',
    '<IMAGE src="m9.jpg" alt="an image tag">', '<svg><img src="m10.jpg" alt="out of svg"></svg>',
    '<template><img src="m11.jpg" alt="in a template"></template>', '<img src="m12.jpg" alt="a\nb\tc  d">',
    '<img src="m13.jpg" alt="&lt;b&gt;bold&lt;/b&gt;">', '<img src="m14.jpg" alt="&nbsp;nbsp&nbsp;">',
    '<img src="m15.jpg" alt="&AMP;&LT;caps">', '<img src="m16.jpg" alt="&ampx &amp;x">',
    '<p><img src="m17.jpg" alt="in &lt;p&gt;"</p>', '<img src="m18.jpg" alt=\'single "quoted"\'>',
    '<img/src="m19.jpg"/alt="slashes">', '<textarea><img src="m20.jpg" alt="in a textarea"></textarea>',
    '<title><img src="m21.jpg" alt="in a title"></title>', '<select><img src="m22.jpg" alt="in a select"></select>',
    '<table><img src="m23.jpg" alt="foster parented"><tr><td>x</td></tr></table>',
    '<img src="m24.jpg" alt="&#x1F600; emoji &#128512;">', '<img src="m25.jpg" alt="cr&#13;lf">',
    '<math><img src="m26.jpg" alt="out of math"></math>', '<object><img src="m27.jpg" alt="in an object"></object>',
    '<iframe><img src="m28.jpg" alt="iframe text"></iframe>', '<xmp><img src="m29.jpg" alt="in xmp"></xmp>',
    '<img src="m30.jpg" alt="&#150; a C1 reference">',
)
# Posts each image's src attribute and alt.
REPORT_ALTS = """fetch("/report", {method: "POST", body: JSON.stringify(
  [...document.images].map(i => [i.getAttribute("src"), i.alt]))});"""

RU, ZH, JA = "Старый мост через реку", "山上的老房子和风景", "東京の夜景と桜の写真"


def _charset_page(alt: str, head: str = "", src: str = "a.jpg") -> str:
    return f'<!DOCTYPE html><html><head>{head}<title>t</title></head><body><img src="{src}" alt="{alt}"></body></html>'


# (Content-Type, body): pages that declare their encoding, in the ways pages and servers do, each body encoded as
# a browser reads it; the vendors' extensions (UHC hangul, NEC kanji, HKSCS, GB18030's four-byte characters) too.
# Undeclared pages are left out: detection is no standard, and a frame without a declaration takes its parent's.
CHARSET_PAGES: tuple[tuple[str, bytes], ...] = (
    ("text/html; charset=windows-1251", _charset_page(RU).encode("cp1251")),
    ("text/html; charset=windows-1251", _charset_page(RU, '<meta charset="utf-8">').encode("cp1251")),
    ("text/html", _charset_page(ZH, '<meta charset="gbk">').encode("gbk")),
    ("text/html", _charset_page(ZH + " 𠀀", '<meta charset="gb2312">').encode("gb18030")),
    ("text/html", _charset_page(JA + " ①", '<meta http-equiv="Content-Type" content="text/html; charset=shift_jis">')
     .encode("cp932")),
    ("text/html; charset=iso-8859-1", _charset_page("“quoted” café – dash").encode("cp1252")),
    ("text/html", _charset_page("café naïve", '<meta charset="utf-16">').encode("utf-8")),
    ("text/html; charset=windows-1252", b"\xef\xbb\xbf" + _charset_page("café über").encode("utf-8")),
    ('text/html; charset="utf-8"', _charset_page("café über").encode("utf-8")),
    ("text/html; charset=foo-bar", _charset_page(RU, '<meta charset="windows-1251">').encode("cp1251")),
    ("text/html; charset=koi8-r", _charset_page(RU).encode("koi8_r")),
    ("text/html; charset=koi8-u", _charset_page("Київ і Львів").encode("koi8_u")),
    ("text/html; charset=ibm866", _charset_page(RU).encode("cp866")),
    ("text/html; charset=euc-kr", _charset_page("서울의 야경 똠방각하").encode("cp949")),
    ("text/html; charset=big5", _charset_page("台北的夜景 㗎").encode("big5hkscs")),
    ("text/html; charset=euc-jp", _charset_page(JA).encode("euc_jp")),
    ("text/html; charset=iso-2022-jp", _charset_page(JA).encode("iso2022_jp")),
    ("text/html", ("<!DOCTYPE html><html><head><!--" + "y" * 1500 + '--><meta charset="windows-1251"></head><body>'
                   f'<img src="a.jpg" alt="{RU}"></body></html>').encode("cp1251")),
    ("text/html", _charset_page(RU, '<meta charset=" windows-1251 ">').encode("cp1251")),
    ("text/html; charset=x-mac-cyrillic", _charset_page(RU).encode("mac_cyrillic")),
    ("text/html; charset=tis-620", _charset_page("ภาพถ่ายกรุงเทพ").encode("cp874")),
    ("text/html; charset=latin-1", _charset_page("café “q”").encode("cp1252")),
    ("text/html; charset=windows-1250", _charset_page("Zażółć gęślą jaźń").encode("cp1250")),
    ("text/html; charset=iso-8859-7", _charset_page("Η Ακρόπολη της Αθήνας").encode("iso8859_7")),
    ("text/html; charset=windows-1256", _charset_page("صورة مدينة القاهرة").encode("cp1256")),
    ("text/html; charset=iso-8859-8-i", _charset_page("ירושלים בלילה").encode("iso8859_8")),
    ("text/html; charset=macintosh", _charset_page("café – “mac”").encode("mac_roman")),
    # a URL's query is written in the page's encoding, its path and fragment in UTF-8
    ("text/html", _charset_page(ZH, '<meta charset="gbk">', "img.php?name=中文&size=2").encode("gbk")),
    ("text/html", _charset_page(ZH, '<meta charset="gbk">', "a.jpg?q=&#128512;x").encode("gbk")),  # not in GBK
    ("text/html; charset=shift_jis", _charset_page(JA, src="photo.cgi?q=東京①").encode("cp932")),
    ("text/html; charset=windows-1251", _charset_page(RU, src="/фото/мост.jpg?q=мост#якорь").encode("cp1251")),
    ("text/html; charset=euc-kr", _charset_page("서울", src="view?q=서울").encode("cp949")),
    ("text/html; charset=koi8-r", _charset_page(RU, src="?q=мост").encode("koi8_r")),
    ("text/html; charset=iso-2022-jp", _charset_page(JA, src="a.cgi?q=東京 の夜").encode("iso2022_jp")),  # stateful
    ("text/html; charset=windows-1252", b"\xef\xbb\xbf" + _charset_page("café", src="a.jpg?q=café").encode("utf-8")),
    ("text/html; charset=utf-8", _charset_page(ZH, src="a.jpg?q=中文").encode("utf-8")),
)
# Posts the alt and the resolved src of the image in each frame once the frames have loaded.
REPORT_FRAME_ALTS = """window.addEventListener("load", () => fetch("/report", {method: "POST", body: JSON.stringify(
  [...document.querySelectorAll("iframe")].map(f => f.contentDocument.querySelector("img")).map(
    i => [i.alt, i.src]))}));"""

# Posts the body back once every image shows something other than a placeholder (the pages' placeholders are the
# data: pixel and files named so), or after 20 s: then the test sees what the loader did in that time.
REPORT_DOM = """(function () {
  const placeholder = /^data:|[/](placeholder|blank|grey|lqip)[.]/;
  const t0 = Date.now();
  (function poll() {
    const done = [...document.images].every(i => i.complete && i.currentSrc && !placeholder.test(i.currentSrc));
    if (done || Date.now() - t0 > 20000) fetch("/report", {method: "POST", body: document.body.outerHTML});
    else setTimeout(poll, 50);
  })();
})();"""
# Posts each image's resolved src (the URL the browser fetches), without waiting for the images.
REPORT_SRC = """fetch("/report", {method: "POST", body: JSON.stringify([...document.images].map(i => i.src))});"""
# Posts each image's currentSrc once every image is complete.
REPORT_CURRENT_SRC = """(function poll() {
  if ([...document.images].every(i => i.complete))
    fetch("/report", {method: "POST", body: JSON.stringify([...document.images].map(i => i.currentSrc))});
  else setTimeout(poll, 50);
})();"""


def loader_page(loader: str, *, report: bool = False) -> str:
    """A loader's page as the server sends it; ``report``: with the script that posts the DOM back (left out of the
    page extract reads, so that both read the same markup)."""
    packages, images, start = LOADERS[loader]
    tags = "".join(f'<script src="/js/{name}.js"></script>' for name in packages)
    tail = f"<script>{REPORT_DOM}</script>" if report else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{loader}</title>{tags}</head>'
            f"<body>{images}<script>{start}</script>{tail}</body></html>")


def srcset_page(*, report: bool = False) -> str:
    imgs = "\n".join(f'<img src="/img/fallback-{i}.jpg" srcset="{html.escape(s)}" sizes="100vw" alt="srcset {i}" '
                     f"{SIZE}>" for i, s in enumerate(SRCSETS))
    tail = f"<script>{REPORT_CURRENT_SRC}</script>" if report else ""
    return f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"></head><body>{imgs}{tail}</body></html>'


def urls_page(port: int, *, report: bool = False) -> str:
    srcs = [s.format(host=f"127.0.0.1:{port}", port=port) for s in SRCS]
    imgs = "\n".join(f'<img src="{html.escape(s)}" alt="src {i}" {SIZE}>' for i, s in enumerate(srcs))
    tail = f"<script>{REPORT_SRC}</script>" if report else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><base href="../base/dir/"></head>'
            f"<body>{imgs}{tail}</body></html>")


def charsets_page() -> str:
    frames = "".join(f'<iframe src="/charset/{i}"></iframe>' for i in range(len(CHARSET_PAGES)))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{frames}'
            f"<script>{REPORT_FRAME_ALTS}</script></body></html>")


def markup_page(*, report: bool = False) -> str:
    tail = f"<script>{REPORT_ALTS}</script>" if report else ""
    return f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{"".join(MARKUP)}{tail}</body></html>'


def page(name: str, port: int, *, report: bool = False) -> str | None:
    if name == "charsets":
        return charsets_page()
    if name == "markup":
        return markup_page(report=report)
    if name in LOADERS:
        return loader_page(name, report=report)
    if name == "urls":
        return urls_page(port, report=report)
    return srcset_page(report=report) if name == "srcset" else None


class Site:
    """The pages, the loaders' scripts and an image (a distinct PNG) at every other path, on 127.0.0.1; what the
    pages post back to ``/report``, by page."""

    def __init__(self) -> None:
        self.origin = ""
        self.scripts: dict[str, bytes] = {}
        self.reports: dict[str, str] = {}
        self.arrived = threading.Condition()

    def wait_report(self, name: str, timeout: float) -> str | None:
        with self.arrived:
            self.arrived.wait_for(lambda: name in self.reports, timeout)
            return self.reports.get(name)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    state = Site()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            name = (self.headers.get("Referer") or "").rsplit("/", 1)[-1]
            with state.arrived:
                state.reports[name] = body
                state.arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            served = page(path.rsplit("/", 1)[-1], self.server.server_address[1], report=True)
            if path.startswith("/js/"):
                body, kind = state.scripts.get(path[4:].removesuffix(".js"), b""), "text/javascript"
            elif path.startswith("/charset/"):
                kind, body = CHARSET_PAGES[int(path.rsplit("/", 1)[1])]
            elif served is not None:
                body, kind = served.encode(), "text/html; charset=utf-8"
            else:
                body, kind = _png(path.encode()), "image/png"
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("chromium not installed: apt-get install -y --no-install-recommends chromium")
    return found


@pytest.fixture(scope="module")
def loaders(site: Site) -> Site:
    """The site with each package's browser script, read from the npm tarball ``make install`` packed."""
    wanted = PACKAGES.read_text().split()
    paths = {spec.rsplit("@", 1)[0]: TARBALLS / f"{spec.replace('@', '-')}.tgz" for spec in wanted}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"npm tarballs missing ({', '.join(missing)}): make install packs them when npm is on PATH")
    for name, path in paths.items():
        with tarfile.open(path) as tar:
            member = tar.extractfile(SCRIPT_IN_TARBALL[name])
            assert member is not None, f"{path} has no {SCRIPT_IN_TARBALL[name]}"
            site.scripts[name] = member.read()
    return site


def browse(browser: str, site: Site, name: str, profile: Path, *flags: str) -> str:
    """What page ``name`` posts back from headless Chromium. Every host but 127.0.0.1 fails to resolve, so the
    browser reaches nothing else."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}",
           "--window-size=1200,900", *flags, f"{site.origin}/{name}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        report = site.wait_report(name.rsplit("/", 1)[-1], timeout=90)  # by the page's file name (its Referer)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helper processes
        _, err = proc.communicate()
    assert report is not None, f"{name}: nothing posted back in 90 s: {err.decode(errors='replace')[-2000:]}"
    return report


def pairs(markup: str, page_url: str, **kw) -> list[tuple[str, str]]:
    refs, _ = page_images(markup, page_url, StageCounts(), **kw)
    return [(r.text, r.url) for r in refs]


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_extract_takes_the_image_the_loader_shows(loaders: Site, browser: str, loader: str, tmp_path: Path) -> None:
    url = f"{loaders.origin}/{loader}"
    served = loader_page(loader)
    shown = pairs(browse(browser, loaders, loader, tmp_path / "profile"), url, url_attrs=("srcset", "src"))
    placeholders = pairs(served, url, url_attrs=("srcset", "src"))
    assert len(shown) == served.count("<img "), f"{loader}: {shown}"
    assert not set(shown) & set(placeholders), f"{loader}: the loader did not run: {shown}"
    assert pairs(served, url) == shown


def test_srcset_candidate_is_the_one_a_browser_shows_at_the_highest_density(site: Site, browser: str,
                                                                            tmp_path: Path) -> None:
    url = f"{site.origin}/srcset"
    shown = json.loads(browse(browser, site, "srcset", tmp_path / "profile", "--force-device-scale-factor=8"))
    taken = pairs(srcset_page(), url, url_attrs=("srcset", "src"))
    assert [t for t, _ in taken] == [f"srcset {i}" for i in range(len(SRCSETS))]
    wrong = [(s, got, want) for s, (_, got), want in zip(SRCSETS, taken, shown, strict=True) if got != want]
    assert not wrong, "srcset, extract's candidate, the browser's:\n" + "\n".join(map(repr, wrong))
    assert sum(u.rsplit("/", 1)[-1].startswith("fallback-") for u in shown) == 2  # no valid candidate: src


def test_image_urls_resolve_as_a_browser_resolves_them(site: Site, browser: str, tmp_path: Path) -> None:
    """The URL extract gives each src is the one Chromium fetches (the WHATWG URL standard): backslashes, dot
    segments, percent-encoding, host case and IDNA, default ports, IPv4 in other notations, a relative base."""
    url = f"{site.origin}/pages/urls"
    shown = json.loads(browse(browser, site, "pages/urls", tmp_path / "profile"))
    port = int(site.origin.rsplit(":", 1)[1])
    taken = dict(pairs(urls_page(port), url, url_attrs=("src",)))
    wrong = [(s, taken.get(f"src {i}"), want) for i, (s, want) in enumerate(zip(SRCS, shown, strict=True))
             if taken.get(f"src {i}") != want]
    assert not wrong, "src, extract's URL, the browser's:\n" + "\n".join(map(repr, wrong))
    assert shown[0] == f"{site.origin}/base/dir/a.jpg" and shown[5] == f"{site.origin}/img/a.jpg"


def test_alt_text_and_url_decode_as_a_browser_decodes_them(site: Site, browser: str, tmp_path: Path) -> None:
    """The text of each page's image is what Chromium shows: byte order mark, then the HTTP charset, then <meta>,
    by the WHATWG label table (ISO-8859-1 is windows-1252, a meta UTF-16 is UTF-8) and the vendors' decoders; its
    URL is the one Chromium fetches, with the query written in the page's encoding."""
    shown = [tuple(p) for p in json.loads(browse(browser, site, "charsets", tmp_path / "profile"))]
    taken = []
    for i, (content_type, body) in enumerate(CHARSET_PAGES):
        html_text, encoding = decode_page(body, content_type.partition("charset=")[2] or None)
        taken.append(pairs(html_text, f"{site.origin}/charset/{i}", encoding=encoding)[0])
    wrong = [(ct, got, want) for (ct, _), got, want in zip(CHARSET_PAGES, taken, shown, strict=True) if got != want]
    assert not wrong, "Content-Type, extract's (text, URL), the browser's:\n" + "\n".join(map(repr, wrong))
    assert sum("\ufffd" in t for t, _ in shown) == 0
    assert sum("?" in u and "%E" not in u.partition("?")[2] for _, u in shown if "%" in u) >= 5  # legacy queries


def test_img_elements_and_their_text_are_the_ones_a_browser_parses(site: Site, browser: str, tmp_path: Path) -> None:
    shown = {src: " ".join(alt.split()) for src, alt in json.loads(browse(browser, site, "markup", tmp_path / "p"))}
    taken = {url.rsplit("/", 1)[-1]: text for text, url in pairs(markup_page(), f"{site.origin}/markup",
                                                                  url_attrs=("src",))}
    assert taken == shown
    assert len(shown) == len(MARKUP) - 5  # template, textarea, title, iframe and xmp hold no element
