"""Lazy loaders' markup judged by the loaders themselves: the image extract takes from a page as served is the one
the loader's own script puts on show once it has run in a browser.

Each page is written the way a loader's documentation writes it: a placeholder in ``src`` (a real file, or a
``data:`` pixel) and the image in the loader's attribute. The real scripts (``tests/data/lazy_loaders/packages.txt``,
fetched from npm by ``make install`` into ``.venv/js``) run in headless Chromium against a server on 127.0.0.1. Once
no image shows a placeholder any more (or after 20 s), the page posts its DOM back to the server, and that DOM is read
with ``src``/``srcset`` alone: what a browser shows. Waiting on that condition, not on a fixed time, keeps the check
the same on a busy machine. Extract, reading
the page as served with its default ``extract.url_attrs``, must give the same (URL, text) pairs; reading ``src`` and
``srcset`` alone (cc2dataset's rule, a WAT's ``IMG@/src``) gives the placeholders instead, so the check can fail.

WP Rocket is a WordPress plugin, not an npm package: its lazy load is vanilla-lazyload reading ``data-lazy-src`` and
``data-lazy-srcset``, which is how that page configures it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socketserver
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.helpers.warc_site import PIXEL, _png
from witbuild.counters import StageCounts
from witbuild.sources.html import page_images

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
PAGES: dict[str, tuple[tuple[str, ...], str, str]] = {
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


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each package's browser script, read from the npm tarball ``make install`` packed."""
    wanted = PACKAGES.read_text().split()
    paths = {spec.rsplit("@", 1)[0]: TARBALLS / f"{spec.replace('@', '-')}.tgz" for spec in wanted}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"npm tarballs missing ({', '.join(missing)}): make install packs them when npm is on PATH")
    out = {}
    for name, path in paths.items():
        with tarfile.open(path) as tar:
            member = tar.extractfile(SCRIPT_IN_TARBALL[name])
            assert member is not None, f"{path} has no {SCRIPT_IN_TARBALL[name]}"
            out[name] = member.read()
    return out


# Posts the body back once every image shows something other than a placeholder (the pages' placeholders are the
# data: pixel and files named so), or after 20 s: then the test sees what the loader did in that time.
REPORT = """(function () {
  const placeholder = /^data:|[/](placeholder|blank|grey|lqip)[.]/;
  const t0 = Date.now();
  (function poll() {
    const done = [...document.images].every(i => i.complete && i.currentSrc && !placeholder.test(i.currentSrc));
    if (done || Date.now() - t0 > 20000) fetch("/report", {method: "POST", body: document.body.outerHTML});
    else setTimeout(poll, 50);
  })();
})();"""


def page_html(loader: str, *, report: bool = False) -> str:
    """The page as the server sends it; ``report``: with the script that posts the DOM back (left out of the page
    extract reads, so that both read the same markup)."""
    packages, images, start = PAGES[loader]
    tags = "".join(f'<script src="/js/{name}.js"></script>' for name in packages)
    tail = f"<script>{REPORT}</script>" if report else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{loader}</title>{tags}</head>'
            f"<body>{images}<script>{start}</script>{tail}</body></html>")


class Site:
    """The pages, the scripts and an image (a distinct PNG) at every other path, on 127.0.0.1; the DOMs the pages
    post back to ``/report``, by page."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.reports: dict[str, str] = {}
        self.arrived = threading.Condition()

    def wait_report(self, loader: str, timeout: float) -> str | None:
        with self.arrived:
            self.arrived.wait_for(lambda: loader in self.reports, timeout)
            return self.reports.get(loader)


@pytest.fixture(scope="module")
def site(scripts: dict[str, bytes]):
    state = Site("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            loader = (self.headers.get("Referer") or "").rsplit("/", 1)[-1]
            with state.arrived:
                state.reports[loader] = body
                state.arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/js/"):
                body, kind = scripts.get(path[4:].removesuffix(".js"), b""), "text/javascript"
            elif path.lstrip("/") in PAGES:
                body, kind = page_html(path.lstrip("/"), report=True).encode(), "text/html; charset=utf-8"
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


def rendered_dom(browser: str, site: Site, loader: str, profile: Path) -> str:
    """The page's DOM as it posts it back from headless Chromium, once its loader is done. Every host but 127.0.0.1
    fails to resolve, so the browser reaches nothing else."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}",
           "--window-size=1200,900", f"{site.origin}/{loader}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        dom = site.wait_report(loader, timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium and its helper processes
        _, err = proc.communicate()
    assert dom is not None, f"{loader}: no DOM posted back in 90 s: {err.decode(errors='replace')[-2000:]}"
    return dom


def pairs(html: str, page_url: str, **kw) -> list[tuple[str, str]]:
    refs, _ = page_images(html, page_url, StageCounts(), **kw)
    return [(r.text, r.url) for r in refs]


@pytest.mark.parametrize("loader", sorted(PAGES))
def test_extract_takes_the_image_the_loader_shows(site: Site, loader: str, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install -y --no-install-recommends chromium")
    url = f"{site.origin}/{loader}"
    served = page_html(loader)
    shown = pairs(rendered_dom(browser, site, loader, tmp_path / "profile"), url, url_attrs=("srcset", "src"))
    placeholders = pairs(served, url, url_attrs=("srcset", "src"))
    n_images = served.count("<img ")
    assert len(shown) == n_images, f"{loader}: {shown}"
    assert not set(shown) & set(placeholders), f"{loader}: the loader did not run: {shown}"
    assert pairs(served, url) == shown
