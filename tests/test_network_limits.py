"""What the network policy holds to besides addresses: a proxy from the environment does not switch the policy
off, no exchange outlasts its total timeout however slowly a server sends, image bodies are capped, and
robots.txt answers that are cut off, redirected into nothing or start with a byte-order mark are not read as
"everything allowed". Only 127.0.0.1 is ever contacted; refused addresses appear in URLs that are never fetched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from witbuild.download import BodyLimit, GuardedDownloader, ImageLimits, error_class
from witbuild.network import TotalTimeoutError, address_refusal, guarded_opener, guarded_urlopen
from witbuild.robots import MISSING, OK, UNREACHABLE, RobotsLimits, fetch_robots, origin_of, robots_refusal

LOOPBACK = ["127.0.0.1"]


class _Recorder(BaseHTTPRequestHandler):
    """Answers from the server's ``routes`` ({path or absolute URL: (status, headers, body)}) and records every
    request line's target: as a proxy it sees absolute URLs."""

    def do_GET(self) -> None:
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        status, headers, body = self.server.routes.get(self.path, (404, {}, b""))  # type: ignore[attr-defined]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Any]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.routes = [], {}  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _base(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# ------------------------------------------------------------------------------------------------ proxies


def test_a_proxy_from_the_environment_never_carries_a_refused_url(recorder: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``http_proxy`` set, the socket goes to the (allowed) proxy, which would fetch any URL it is handed:
    the URL's host, and every redirect hop's, is checked before the request leaves."""
    monkeypatch.setenv("http_proxy", _base(recorder))
    monkeypatch.setenv("no_proxy", "")
    recorder.routes["http://public.example/a.jpg"] = (302, {"Location": "http://169.254.169.254/latest/"}, b"")
    opener = guarded_opener(LOOPBACK)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://2130706434/"):
        with pytest.raises(urllib.error.URLError, match="blocked address"):
            opener.open(url, timeout=5)
    assert recorder.seen == []  # refused before the proxy was asked
    with pytest.raises(urllib.error.URLError, match=r"blocked address.*link_local"):
        opener.open("http://public.example/a.jpg", timeout=5)
    assert recorder.seen == ["http://public.example/a.jpg"]  # the redirect hop never went out


def test_robots_txt_through_a_proxy_is_not_read_from_a_refused_address(recorder: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", _base(recorder))
    monkeypatch.setenv("no_proxy", "")
    recorder.routes["http://public.example/robots.txt"] = (301, {"Location": "http://10.0.0.1/robots.txt"}, b"")
    recorder.routes["http://10.0.0.1/robots.txt"] = (200, {}, b"User-agent: *\nAllow: /\n")
    answer = fetch_robots("http://public.example", LOOPBACK, RobotsLimits(timeout=5, total_timeout=10), "t")
    assert answer.outcome == UNREACHABLE and "blocked address" in answer.error
    assert recorder.seen == ["http://public.example/robots.txt"]


# ------------------------------------------------------------------------------------------------ slow servers


class _Drip:
    """A server on 127.0.0.1 that answers every connection with ``head``, then sends ``drip`` one piece every
    ``every`` seconds: it never goes quiet for a read timeout, and never finishes in time."""

    def __init__(self, head: bytes, drip: list[bytes], every: float) -> None:
        self.head, self.drip, self.every = head, drip, every
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.answered = threading.Event()  # a client's request came and the head went out
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.head)
                self.answered.set()
                for piece in self.drip:
                    if self.stop.wait(self.every):
                        return
                    conn.sendall(piece)
            except OSError:  # the client cut it off: what is tested
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


HEADER_DRIP = (b"HTTP/1.1 200 OK\r\n", [b"X-Slow: %d\r\n" % i for i in range(40)], 0.25)  # ~10 s of headers
BODY_DRIP = (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", [b"x"] * 40, 0.25)  # ~10 s of body
UNDECLARED_BODY_DRIP = (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", [b"x"] * 40, 0.25)  # read through the cap
CHUNKED_BODY_DRIP = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", [b"1\r\nx\r\n"] * 40, 0.25)


@pytest.fixture
def drip(request: pytest.FixtureRequest) -> Iterator[_Drip]:
    server = _Drip(*request.param)
    yield server
    server.close()


@pytest.mark.parametrize("drip", [HEADER_DRIP], indirect=True)
def test_dripped_headers_end_at_the_total_timeout(drip: _Drip) -> None:
    """Each header line comes within the read timeout (1 s), so only the total timeout (1 s) can stop the
    exchange: it ends ~1 s in, not after the ~10 s the server would take."""
    start = time.monotonic()
    with pytest.raises(TotalTimeoutError, match="timed out"):
        guarded_opener(LOOPBACK, total_timeout=1.0).open(drip.url + "/x.jpg", timeout=1)
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("drip", [HEADER_DRIP], indirect=True)
def test_robots_txt_with_dripped_headers_is_unreachable_at_the_total_timeout(drip: _Drip) -> None:
    start = time.monotonic()
    answer = fetch_robots(drip.url, LOOPBACK, RobotsLimits(timeout=1, total_timeout=1.0), "t")
    assert answer.outcome == UNREACHABLE
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("drip", [HEADER_DRIP, BODY_DRIP, UNDECLARED_BODY_DRIP, CHUNKED_BODY_DRIP], indirect=True)
def test_img2dataset_download_ends_at_the_total_timeout(drip: _Drip) -> None:
    """img2dataset's own download function, as its threads call it through the downloader's opener: the error
    is classed ``timeout``, and comes ~1 s in."""
    from img2dataset.downloader import download_image

    start = time.monotonic()
    with guarded_urlopen(LOOPBACK, extra=(BodyLimit(1 << 20),), total_timeout=1.0):
        _, stream, err = download_image((0, drip.url + "/x.jpg"), 1, "witbuild", None)
    assert stream is None and error_class(err) == "timeout", err
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("drip", [(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", [b"x"] * 40, 0.05)],
                         indirect=True)
def test_a_declared_body_read_in_pieces_ends_at_the_total_timeout(drip: _Drip) -> None:
    """``read(amt)`` on a cut-off declared body: http.client returns short without a word; it says timed out."""
    opener = guarded_opener(LOOPBACK, (BodyLimit(1 << 20),), total_timeout=0.5)
    with opener.open(drip.url + "/x.jpg", timeout=5) as r, pytest.raises(TotalTimeoutError, match="timed out"):
        while r.read(4):
            pass


def test_a_declared_body_cut_short_is_incomplete_not_a_timeout() -> None:
    """The server closes after 10 of 40 declared bytes, well within the total timeout."""
    from img2dataset.downloader import download_image

    server = _Drip(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", [b"x" * 10], 0.01)
    try:
        with guarded_urlopen(LOOPBACK, extra=(BodyLimit(1 << 20),), total_timeout=30):
            _, stream, err = download_image((0, server.url + "/x.jpg"), 5, "witbuild", None)
    finally:
        server.close()
    assert stream is None and "IncompleteRead" in err and error_class(err) != "timeout", err


def test_a_redirect_hop_keeps_the_first_requests_deadline(recorder: Any) -> None:
    """A hop to a dripping server ends at the deadline the first request was given."""
    server = _Drip(*BODY_DRIP)
    try:
        recorder.routes["/a.jpg"] = (302, {"Location": server.url + "/b.jpg"}, b"")
        start = time.monotonic()
        opener = guarded_opener(LOOPBACK, (BodyLimit(1 << 20),), total_timeout=1.0)
        with pytest.raises(TotalTimeoutError, match="timed out"), opener.open(_base(recorder) + "/a.jpg",
                                                                               timeout=5) as r:
            r.read()
        assert time.monotonic() - start < 6
    finally:
        server.close()


def test_deadlines_of_different_spans_each_fire_on_time() -> None:
    """Each total timeout has its own FIFO in the watch: a short deadline queued after a long one still fires
    first, and on time (the watch wakes every 20 ms at most)."""
    slow, quick = _Drip(*BODY_DRIP), _Drip(*BODY_DRIP)
    ended: dict[str, float] = {}

    def fetch(name: str, url: str, span: float) -> None:
        start = time.monotonic()
        opener = guarded_opener(LOOPBACK, (BodyLimit(1 << 20),), total_timeout=span)
        with contextlib.suppress(TotalTimeoutError), opener.open(url, timeout=5) as r:
            r.read()
        ended[name] = time.monotonic() - start

    try:
        long_one = threading.Thread(target=fetch, args=("long", slow.url + "/x.jpg", 3.0))
        long_one.start()
        assert slow.answered.wait(10)  # the long deadline is in the watch before the short one, on a loaded machine too
        fetch("short", quick.url + "/x.jpg", 0.5)
        long_one.join()
    finally:
        slow.close()
        quick.close()
    assert 0.5 <= ended["short"] < 1.5, ended
    assert 3.0 <= ended["long"] < 5.0, ended


# ------------------------------------------------------------------------------------------------ body cap


def test_image_bodies_over_the_cap_are_refused(recorder: Any) -> None:
    from img2dataset.downloader import download_image

    recorder.routes["/big.jpg"] = (200, {}, b"x" * 5000)  # Content-Length 5000 declared
    recorder.routes["/ok.jpg"] = (200, {}, b"y" * 100)
    with guarded_urlopen(LOOPBACK, extra=(BodyLimit(1000),), total_timeout=10):
        _, big, err = download_image((0, _base(recorder) + "/big.jpg"), 5, "witbuild", None)
        _, ok, ok_err = download_image((1, _base(recorder) + "/ok.jpg"), 5, "witbuild", None)
    assert big is None and error_class(err) == "body_too_large", err
    assert ok is not None and ok.read() == b"y" * 100 and ok_err is None


@pytest.mark.parametrize("drip", [(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", [b"z" * 600] * 4, 0.01)],
                         indirect=True)
def test_an_undeclared_body_over_the_cap_is_cut_while_read(drip: _Drip) -> None:
    """No Content-Length: the body ends when the server closes; it is refused once 1000 bytes came in."""
    from img2dataset.downloader import download_image

    with guarded_urlopen(LOOPBACK, extra=(BodyLimit(1000),), total_timeout=10):
        _, stream, err = download_image((0, drip.url + "/x.jpg"), 5, "witbuild", None)
    assert stream is None and error_class(err) == "body_too_large", err


def test_the_downloader_carries_its_limits_to_the_worker_processes() -> None:
    import pickle

    wrapped = pickle.loads(pickle.dumps(GuardedDownloader(print, ("127.0.0.1",), None, ImageLimits(5.0, 123))))
    assert wrapped.limits == ImageLimits(5.0, 123)


# ------------------------------------------------------------------------------------------------ robots.txt


def test_a_byte_order_mark_does_not_hide_robots_rules(recorder: Any) -> None:
    body = "\ufeffUser-agent: *\nDisallow: /\n"
    assert robots_refusal("http://h/x.jpg", OK, body, ("witbuild",)) == "robots_disallowed"
    recorder.routes["/robots.txt"] = (200, {}, body.encode("utf-8"))
    answer = fetch_robots(_base(recorder), LOOPBACK, RobotsLimits(timeout=5, total_timeout=10), "t")
    assert answer.outcome == OK and answer.body == "User-agent: *\nDisallow: /\n"


def test_robots_txt_redirected_to_nothing_is_unreachable(recorder: Any) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    recorder.routes["/robots.txt"] = (301, {"Location": f"http://127.0.0.1:{port}/robots.txt"}, b"")
    answer = fetch_robots(_base(recorder), LOOPBACK, RobotsLimits(timeout=5, total_timeout=10), "t")
    assert answer.outcome == UNREACHABLE
    recorder.routes["/robots.txt"] = (404, {}, b"")
    assert fetch_robots(_base(recorder), LOOPBACK, RobotsLimits(timeout=5, total_timeout=10), "t").outcome == MISSING


@pytest.mark.parametrize(("url", "origin"), [
    ("http://[::ffff:1.1.1.1]/a.jpg", "http://[::ffff:101:101]"),
    ("http://[::ffff:101:101]:80/a.jpg", "http://[::ffff:101:101]"),
    ("https://[2606:4700::1.1.1.1]:8443/a.jpg", "https://[2606:4700::101:101]:8443"),
    ("http://[64:ff9b::1.1.1.1]/a.jpg", "http://[64:ff9b::101:101]"),
    ("http://[2606:4700:4700:0:0:0:0:1111]/", "http://[2606:4700:4700::1111]"),
])
def test_every_ipv6_spelling_has_one_robots_origin(url: str, origin: str) -> None:
    assert origin_of(url) == origin


def test_site_local_ipv6_is_refused() -> None:
    assert address_refusal("fec0::1") == "site_local"
    assert address_refusal("feff:ffff::1") == "site_local"
