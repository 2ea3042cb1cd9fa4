"""What a hostile server or name can do to a fetch, and the bounds the network policy keeps it within: a redirect
with an endless body, a name with a dozen addresses that never answer, a host spelled with escapes a proxy
decodes, image hosts whose DNS never answers, and an update check at import. Only 127.0.0.1 is ever contacted;
names are answered in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from witbuild.config import CrawlConfig
from witbuild.counters import StageCounts
from witbuild.network import REDIRECT_BODY_BYTES, BodyLimit, NetworkConfig, guarded_opener, guarded_urlopen, url_refusal
from witbuild.resolver import LookupTimeoutError, getaddrinfo_within, lookup_domain
from witbuild.robots import OK, RobotsLimits, fetch_robots
from witbuild.sources.crawl import crawl_host

LOOPBACK = ["127.0.0.1"]
MIB = 1 << 20
BIG = 64 * MIB  # a redirect body nobody should read; loopback buffers hold a few MiB of it at most
SENT_BOUND = 16 * MIB


class _Hostile:
    """A server on 127.0.0.1 whose answers are written by hand: ``/big`` and ``/robots.txt`` redirect with a
    ``BIG`` body (declared, or chunked with ``?chunked``), ``/short`` redirects with a 100-byte body, every other
    path is a small 200. It counts the body bytes it managed to send per path, and the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sent: dict[str, int] = {}
        self.connections = 0
        self.handlers: list[threading.Thread] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self.handlers.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rfile:
            try:
                while True:
                    line = rfile.readline()
                    if not line:
                        return
                    while rfile.readline() not in (b"\r\n", b""):
                        pass
                    self._respond(conn, line.split()[1].decode())
            except OSError:
                return

    def _respond(self, conn: socket.socket, target: str) -> None:
        path = target.split("?", 1)[0]
        if path in ("/big", "/robots.txt"):
            self._redirect_big(conn, path, "/robots-real" if path == "/robots.txt" else "/img", "chunked" in target)
        elif path == "/short":
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /img\r\nContent-Length: 100\r\n\r\n" + b"r" * 100)
        else:
            body = b"User-agent: *\nDisallow: /private\n" if path == "/robots-real" else b"img"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))

    def _redirect_big(self, conn: socket.socket, path: str, location: str, chunked: bool) -> None:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % BIG
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\n%s\r\n\r\n" % (location.encode(), framing))
        block = b"A" * MIB
        for _ in range(BIG // MIB):
            conn.sendall(b"%x\r\n%s\r\n" % (MIB, block) if chunked else block)
            self.sent[path] = self.sent.get(path, 0) + MIB
        if chunked:
            conn.sendall(b"0\r\n\r\n")

    def sent_after_close(self, path: str) -> int:
        """Body bytes sent for ``path``, once every handler has ended (the client has closed or read everything)."""
        for thread in self.handlers:
            thread.join(timeout=10)
        # a client that neither reads nor closes would leave a handler blocked in sendall, its count low
        assert not any(thread.is_alive() for thread in self.handlers), "a redirect's connection was left open"
        return self.sent.get(path, 0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[_Hostile]:
    server = _Hostile()
    yield server
    server.close()


# ------------------------------------------------------------------------------------------- redirect bodies


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_an_image_redirects_body_is_not_read(hostile: _Hostile, query: str) -> None:
    opener = guarded_opener(LOOPBACK, extra=(BodyLimit(MIB),), total_timeout=30)
    try:
        with opener.open(hostile.url("/big" + query), timeout=10) as response:
            assert response.read() == b"img"
    finally:
        opener.close()
    assert hostile.sent_after_close("/big") < SENT_BOUND


def test_img2dataset_follows_a_redirect_without_reading_its_body(hostile: _Hostile) -> None:
    from img2dataset.downloader import download_image

    with guarded_urlopen(LOOPBACK, extra=(BodyLimit(MIB),), total_timeout=30):
        _, stream, err = download_image((0, hostile.url("/big")), 10, "witbuild", ["noai"])
    assert err is None and stream is not None and stream.getvalue() == b"img"
    assert hostile.sent_after_close("/big") < SENT_BOUND


def test_a_short_redirect_body_keeps_the_connection_for_the_next_hop(hostile: _Hostile) -> None:
    opener = guarded_opener(LOOPBACK, total_timeout=30)
    try:
        with opener.open(hostile.url("/short"), timeout=10) as response:
            assert response.read() == b"img"
    finally:
        opener.close()
    assert REDIRECT_BODY_BYTES >= 100 and hostile.connections == 1


def test_robots_txt_behind_a_redirect_with_a_huge_body(hostile: _Hostile) -> None:
    answer = fetch_robots(hostile.url("").rstrip("/"), LOOPBACK, RobotsLimits(timeout=10, total_timeout=30), "t")
    assert answer.outcome == OK and "Disallow: /private" in answer.body
    assert hostile.sent_after_close("/robots.txt") < SENT_BOUND


@pytest.mark.parametrize("query", ["", "?chunked"])
def test_the_crawl_reads_a_few_kib_of_a_redirects_body(hostile: _Hostile, tmp_path: Path, query: str) -> None:
    counts = StageCounts()
    cfg = CrawlConfig(delay_seconds=0.0, connect_timeout=2.0, read_timeout=10.0, total_timeout=30.0, max_depth=0)
    crawl_host([hostile.url("/big" + query)], cfg, str(tmp_path / "c.warc.gz"), counts,
               NetworkConfig(allow_addresses=LOOPBACK))
    assert counts.events["redirect_body_truncated"] == 2  # robots.txt's redirect, and the page's
    assert counts.events["robots_fetched"] == 2 and counts.events["pages_fetched"] == 2
    assert hostile.sent_after_close("/big") < SENT_BOUND and hostile.sent_after_close("/robots.txt") < SENT_BOUND


# ------------------------------------------------------------------------------------------- many addresses


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port on 127.0.0.1 that never completes a connection: a listener whose accept queue is full, so that the
    kernel drops further SYNs (as a host that does not answer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.3)
    yield port
    for s in (*fillers, listener):
        s.close()


@pytest.fixture
def twelve_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``many.test`` resolves to 127.0.0.1 twelve times; every other lookup goes to the real resolver."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "many.test":
            flags = args[3] if len(args) > 3 else kw.get("flags", 0)
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            return real("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM) * 12
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_addresses_that_never_answer_end_at_the_total_timeout(blackhole: int, twelve_addresses: None) -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="timed out"):
        guarded_opener(LOOPBACK, total_timeout=2.0).open(f"http://many.test:{blackhole}/img", timeout=2.0)
    assert time.monotonic() - started < 8.0  # each address for the full timeout: 24 s


def test_only_a_few_addresses_are_tried(blackhole: int, twelve_addresses: None) -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="timed out"):
        guarded_opener(LOOPBACK).open(f"http://many.test:{blackhole}/img", timeout=1.0)
    assert time.monotonic() - started < 8.0  # every address: 12 s


# ------------------------------------------------------------------------------------------- escaped hosts


@pytest.mark.parametrize("url", ["http://169.254.169.%32%35%34/latest/", "https://10.0.0.%31:8443/admin",
                                 "http://127.0.0.1\\@img.example/", "http://img.example\\.10.0.0.1/"])
def test_hosts_that_parsers_read_differently_are_refused(url: str) -> None:
    assert url_refusal(url) is not None
    assert url_refusal(url, ["0.0.0.0/0"]) is not None  # not an address question: no allow list lets them by


def test_a_proxy_is_never_handed_an_escaped_redirect_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib decodes the host before it connects or asks the proxy; ``urlsplit`` would have judged a name."""
    proxy = _Hostile()
    try:
        monkeypatch.setenv("http_proxy", proxy.url(""))
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setattr(_Hostile, "_respond", _escaped_redirect)
        with pytest.raises(urllib.error.URLError, match="blocked address"):
            guarded_opener(LOOPBACK, total_timeout=10).open("http://img.example/first", timeout=5)
        for thread in proxy.handlers:
            thread.join(timeout=5)
        assert proxy.sent == {"http://img.example/first": 0}
    finally:
        proxy.close()


def _escaped_redirect(self: _Hostile, conn: socket.socket, target: str) -> None:
    self.sent[target] = 0
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.%32%35%34/latest/\r\nContent-Length: 0\r\n\r\n")


def test_https_through_a_proxy_asks_it_for_a_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    """An https URL goes to the proxy as ``CONNECT host:443`` (urllib's tunnel), not as a TLS handshake with the
    proxy itself; the proxy here refuses every tunnel."""
    proxy = _Hostile()
    try:
        monkeypatch.setenv("https_proxy", proxy.url(""))
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setattr(_Hostile, "_answer", _refuse_tunnel)
        with pytest.raises(OSError, match="403"):
            guarded_opener(LOOPBACK, total_timeout=10).open("https://img.example/a.jpg", timeout=5)
        for thread in proxy.handlers:
            thread.join(timeout=5)
        assert [line.split()[:2] for line in proxy.sent] == [["CONNECT", "img.example:443"]]
    finally:
        proxy.close()


def _refuse_tunnel(self: _Hostile, conn: socket.socket) -> None:
    with conn, conn.makefile("rb") as rfile:
        self.sent[rfile.readline().decode("latin-1").strip()] = 0
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")


# ------------------------------------------------------------------------------------------- name lookups


@pytest.fixture
def hung_domain(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Names under ``evil.test`` get no answer until the test ends; ``good.test`` answers at once."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            flags = args[3] if len(args) > 3 else kw.get("flags", 0)
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            if host.endswith(".evil.test"):
                release.wait(60)
            return real("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    release.set()


def test_one_domain_whose_dns_hangs_does_not_starve_the_others(hung_domain: None) -> None:
    def hostile(i: int) -> None:
        with pytest.raises(LookupTimeoutError):
            getaddrinfo_within(f"img{i}.evil.test", 80, 0.3)

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):  # 48 lookups hung in the resolver would hold every lookup thread
        assert getaddrinfo_within(f"img{i}.good.test", 80, 2.0)[0][4][0] == "127.0.0.1"


def test_a_few_addresses_of_each_family_are_tried() -> None:
    """With IPv6 unroutable, a name listing many IPv6 addresses first is still reached on IPv4 (RFC 8305's order)."""
    from witbuild.network import MAX_CONNECT_ADDRESSES, _interleaved

    v6 = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (f"2001:db8::{i}", 80, 0, 0)) for i in range(6)]
    v4 = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{i}", 80)) for i in range(2)]
    tried = [info[4][0] for info in _interleaved(v6 + v4)[:MAX_CONNECT_ADDRESSES]]
    assert tried == ["2001:db8::0", "192.0.2.0", "2001:db8::1", "192.0.2.1"]
    assert [info[4][0] for info in _interleaved(v4)] == ["192.0.2.0", "192.0.2.1"]


def test_lookup_domains() -> None:
    assert lookup_domain("a.b.images.example.com") == "example.com"
    assert lookup_domain("img.shop.co.uk.") == "shop.co.uk"
    assert lookup_domain("x.de") == "x.de" and lookup_domain("localhost") == "localhost"


# ------------------------------------------------------------------------------------------- imports


def test_importing_img2dataset_through_witbuild_asks_no_update_server() -> None:
    """albumentations, which img2dataset imports, asks pypi.org for a newer release at import unless told not to:
    the build's code sets that before img2dataset is imported, by the download stage or ahead of it."""
    script = textwrap.dedent("""
        import os, socket
        asked = []
        def refuse(*args, **kw):
            asked.append(args[:2])
            raise OSError("no network in this test")
        socket.getaddrinfo = refuse
        socket.socket.connect = lambda self, addr: refuse(addr)
        import witbuild.pipeline, witbuild.stages.download
        assert os.environ.get("NO_ALBUMENTATIONS_UPDATE") == "1"
        import img2dataset
        print("asked", asked)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "asked []" in done.stdout
