"""Serves the synthetic demo web on 127.0.0.1, so the live-crawl path runs with no internet.

``witbuild demo`` serves it at a fixed origin, ``http://DEMO_HOST:DEMO_PORT`` (see :mod:`witbuild.demo`): the
pages' image URLs carry the port and pair ids hash the URL, so a fixed port makes every demo build the same.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from witbuild.demo import DEMO_HOST, DEMO_PORT
from witbuild.demo.images import digit_image, draw_shapes, encode, skimage_web_image
from witbuild.demo.web import BROKEN_SHARE, DemoPage, generate_pages, parse_image_stem

log = logging.getLogger(__name__)

__all__ = ["DEMO_HOST", "DEMO_PORT", "DemoWebServer", "demo_image", "demo_job_settings"]

ROBOTS = b"User-agent: *\nDisallow: /private/\n"
BROKEN_IMAGE_SHARE = BROKEN_SHARE  # one picture link in 33 is broken (404), as on the real web
IMAGE_PREFIXES = ("/pages/img/", "/cdn/img/")  # the same stem serves the same bytes under either
# pending connections the listening socket queues: img2dataset opens thread_count connections per Spark task at
# once, and with socketserver's default of 5 a burst overflows the queue and connections wait for SYN retries
# (1 s, 3 s, ...), long enough under load to turn into download timeouts that differ from run to run
LISTEN_BACKLOG = 256


@functools.lru_cache(maxsize=8192)
def demo_image(path: str) -> bytes | None:
    """The JPEG a demo page's image URL points at, drawn from what its name says; None (404) for a broken link.

    ``/pages/img/digit-0123.jpg``: sklearn digit 123 (never a held-out one); ``sk-astronaut-2.jpg``: a skimage
    sample in variant 2; ``draw-circle-red-3-blue-1.jpg``: three red circles on blue, layout 1.
    """
    prefix = next((p for p in IMAGE_PREFIXES if path.startswith(p)), None)
    if prefix is None or not path.endswith(".jpg"):
        return None
    parsed = parse_image_stem(path[len(prefix):-len(".jpg")])
    if parsed is None:
        return None
    kind, args = parsed
    if kind == "digit":
        return encode(digit_image(args[0], (224, 224)), "jpg", 90)
    if kind == "skimage":
        return encode(skimage_web_image(*args), "jpg", 88)
    return encode(draw_shapes(*args), "jpg", 90)


def demo_job_settings(n_pages: int) -> list[str]:
    """The ``--set`` arguments a build of the demo web needs: 127.0.0.1 allowed by the network policy (the crawl
    and the image downloads reach the demo server there), no politeness delay, every page within the crawl budget
    and within reach (a page links at most ~30 pages ahead, so the last one is n_pages / 30 links deep)."""
    return ["--set", "network.allow_addresses=['127.0.0.1']", "--set", "crawl.delay_seconds=0",
            "--set", f"crawl.max_pages_per_host={n_pages}", "--set", f"crawl.max_depth={max(50, n_pages)}"]


class _DemoHTTPServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is normal, not a traceback: one closing a kept connection with a response it did
        not read (an error page img2dataset did not read) resets it, as a timed-out client does."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class DemoWebServer:
    """A threaded HTTP server with the demo pages, their images and a robots.txt; a context manager.

    The port is bound first so that the pages' absolute links carry it. ``port=0`` (the default) takes any free
    port, so that tests can run several servers at once; ``witbuild demo`` passes ``DEMO_PORT``, for a build that
    is the same on every run. A port in use raises ``OSError`` (errno ``EADDRINUSE``) here, never a fall-back.
    """

    def __init__(self, n_pages: int = 200, seed: int = 0, host: str = DEMO_HOST, port: int = 0,
                 script_bytes: int = 0, image_delay_s: float = 0.0):
        self.requests: list[str] = []
        self.image_delay_s = image_delay_s  # a slower image host, to watch a download in progress
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps a connection open for the client's next request, as web servers do
            disable_nagle_algorithm = True  # headers and body go out as written, not after the client's delayed ACK
            timeout = 60  # idle clients cannot pin a thread forever

            def do_GET(self) -> None:
                server.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path == "/robots.txt":
                    self._send(200, "text/plain", ROBOTS)
                elif path in server.pages:
                    page = server.pages[path]
                    self._send(200, f"text/html; charset={page.charset}", page.html)
                elif (image := demo_image(path)) is not None:
                    if server.image_delay_s:
                        time.sleep(server.image_delay_s)
                    self._send(200, "image/jpeg", image)
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug(fmt, *args)

        self.httpd = _DemoHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.site = f"http://{host}:{self.httpd.server_address[1]}"
        page_list = list(generate_pages(n_pages, site=self.site, seed=seed, script_bytes=script_bytes))
        self.pages: dict[str, DemoPage] = {p.url[len(self.site):]: p for p in page_list}
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="demo-web", daemon=True)

    @property
    def seed_url(self) -> str:
        return f"{self.site}/pages/00000.html"

    def start(self) -> DemoWebServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> DemoWebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
