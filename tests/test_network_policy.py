"""The build's network policy (witbuild/network.py): what is refused before any request, and at the socket.

Only addresses on this machine are ever contacted (127.0.0.1 and 127.0.0.2, both loopback); public addresses
appear only in pure checks and in a patched resolver whose answers are refused before any connection.
"""

from __future__ import annotations

import io
import json
import pickle
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tests.conftest import run_job
from witbuild.config import load_config
from witbuild.download import GuardedDownloader, ResponseCache, ResponseKeeper, TdmReservationProcessor, error_class
from witbuild.network import (
    NetworkConfig,
    address_allowed,
    address_refusal,
    guarded_opener,
    guarded_urlopen,
    host_refusal,
    numeric_ipv4,
    url_refusal,
)

# --------------------------------------------------------------------------------------------
# Pure checks: the literal host, no DNS

LOOPBACK_SPELLINGS = [
    "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7F.0.0.1", "127.1", "127.0.1", "127.0.0.1.",
    "0x7f000001", "017700000001", "0177.1", "127.000.000.001", "::1", "[::1]", "::ffff:127.0.0.1",
    "::ffff:7f00:1", "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127\u30020\u30020\u30021",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_refused(host: str) -> None:
    assert host_refusal(host) == "loopback"


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "img.localhost", "a.b.localhost",
                                  "localhost.localdomain", "ip6-localhost"])
def test_localhost_names_are_refused(host: str) -> None:
    assert host_refusal(host) == "localhost_name"
    assert host_refusal(host, ["127.0.0.1"]) is None  # they stand for 127.0.0.1


@pytest.mark.parametrize(("host", "reason"), [
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.5.4", "private"), ("172.31.0.1", "private"),
    ("192.168.1.1", "private"), ("0xa.0.0.1", "private"), ("167772161", "private"), ("012.0.0.1", "private"),
    ("169.254.169.254", "link_local"), ("2852039166", "link_local"), ("0xa9.0xfe.0xa9.0xfe", "link_local"),
    ("fe80::1", "link_local"), ("fe80::1%eth0", "link_local"),
    ("100.64.0.1", "cgnat"), ("100.127.255.254", "cgnat"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("0", "unspecified"), ("::", "unspecified"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"),
    ("fc00::1", "unique_local"), ("fd12:3456::1", "unique_local"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link_local"),
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("2002:a00:1::1", "private"),  # 6to4 wrapping 10.0.0.1
    ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("192.0.2.1", "private"), ("198.18.0.1", "private"),  # documentation, benchmarking (Python: private)
])
def test_refused_ranges(host: str, reason: str) -> None:
    assert host_refusal(host) == reason


@pytest.mark.parametrize("host", ["08.0.0.1", "1.2.3.4.5", "256.0.0.1", "0x100.0.0.1", "1.16777216", "127..1",
                                  "example.123", "4294967296"])
def test_numeric_hosts_that_are_no_address_are_refused(host: str) -> None:
    """A host whose last label is a number is never a name (WHATWG): an invalid one is refused, not resolved."""
    assert host_refusal(host) == "invalid_numeric_host"


@pytest.mark.parametrize("host", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "134744072", "0x08.0x08.0x08.0x08",
                                  "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "example.com",
                                  "images.example.org.", "cdn-1.example.net", "1.2.3.example"])
def test_public_addresses_and_names_pass_the_literal_check(host: str) -> None:
    """Names are checked again at connect time on what they resolve to; no connection is made here."""
    assert host_refusal(host) is None


@pytest.mark.parametrize(("host", "value"), [
    ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("10.1", "10.0.0.1"), ("10.1.2", "10.1.0.2"), ("0x7f.1", "127.0.0.1"),
    ("1.2.3.4", "1.2.3.4"), ("4294967295", "255.255.255.255"),
])
def test_numeric_ipv4_reads_hosts_as_inet_aton_does(host: str, value: str) -> None:
    assert str(numeric_ipv4(host)) == value
    assert str(numeric_ipv4(host)) == socket.inet_ntoa(socket.inet_aton(host))


def test_allow_list_is_narrow() -> None:
    allow = NetworkConfig(allow_addresses=["127.0.0.1", "10.1.2.0/24"])
    assert host_refusal("127.0.0.1", allow) is None and host_refusal("2130706433", allow) is None
    assert host_refusal("127.0.0.2", allow) == "loopback"
    assert host_refusal("10.1.2.77", allow) is None and host_refusal("10.1.3.1", allow) == "private"
    assert host_refusal("169.254.169.254", allow) == "link_local"
    assert address_allowed("::ffff:127.0.0.1", allow) and not address_allowed("::1", allow)
    assert address_refusal("not-an-ip") == "not_an_address"


def test_url_refusal() -> None:
    assert url_refusal("http://2130706433:8080/a.jpg") == "loopback"
    assert url_refusal("http://user:pw@0x7f.1/a.jpg") == "loopback"
    assert url_refusal("https://[::ffff:169.254.169.254]/latest/meta-data") == "link_local"
    assert url_refusal("HTTP://LocalHost:80/x") == "localhost_name"
    assert url_refusal("https://images.example.com/a.jpg") is None
    assert url_refusal("http:///a.jpg") == "no_host" and url_refusal(None) == "no_host"


def test_bad_allow_entry_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="not-a-cidr"):
        NetworkConfig(allow_addresses=["not-a-cidr"])
    with pytest.raises(ValidationError, match="nope"):
        load_config(inputs=["a.warc.gz"], output="out", sets=["network.allow_addresses=[nope]"])


def test_old_crawl_key_names_the_new_one() -> None:
    with pytest.raises(ValidationError, match=r"crawl\.allow_addresses moved to network\.allow_addresses"):
        load_config(inputs=["a.warc.gz"], output="out", sets=["crawl.allow_addresses=['127.0.0.1']"])
    cfg = load_config(inputs=["a.warc.gz"], output="out", sets=["network.allow_addresses=['127.0.0.1']"])
    assert cfg.network.allow_addresses == ["127.0.0.1"]
    assert load_config(inputs=["a.warc.gz"], output="out").network.allow_addresses == []


def test_blocked_message_is_its_own_error_class() -> None:
    assert error_class("<urlopen error blocked address: 127.0.0.2 resolves to 127.0.0.2 (loopback); "
                       "see network.allow_addresses>") == "blocked_address"
    assert error_class("<urlopen error [Errno 111] Connection refused>") == "connection"


def test_stats_count_rows_blocked_before_img2dataset() -> None:
    """Rows refused before the download are in the funnel only; ``witbuild stats`` adds them to the failures."""
    from collections import Counter

    from witbuild.stats.collect import DownloadStats, _download_section

    d = DownloadStats(rows=3, status=Counter({"success": 1, "failed_to_download": 2}),
                      messages=Counter({"<urlopen error blocked address: 10.0.0.1 (private)>": 1,
                                        "HTTP Error 404: Not Found": 1}))
    funnel = [{"stage": "download", "rows_in": 7, "rows_out": 1, "rows_dropped": 6,
               "dropped": {"blocked_address": 5, "http_404": 1}}]
    section = _download_section(d, funnel)
    assert section is not None and (section["rows"], section["success"], section["failed"]) == (7, 1, 6)
    assert [(f["class"], f["count"]) for f in section["failures_by_class"]] == [("blocked_address", 5), ("http_404", 1)]
    plain = _download_section(d, None)
    assert plain is not None and plain["rows"] == 3 and plain["failures_by_class"][0]["count"] == 1
    # rows img2dataset left out of a finished shard's metadata are in the funnel only too: the section's rows are
    # the stage's rows in, and its success rate the funnel's
    d = DownloadStats(rows=85, status=Counter({"success": 80, "failed_to_download": 5}),
                      messages=Counter({"HTTP Error 404: Not Found": 5}))
    funnel = [{"stage": "download", "rows_in": 100, "rows_out": 80, "rows_dropped": 20,
               "dropped": {"http_404": 5, "robots_disallowed": 10, "not_written": 5}}]
    section = _download_section(d, funnel)
    assert section is not None and (section["rows"], section["success_rate"]) == (100, 0.8)
    assert {f["class"]: f["count"] for f in section["failures_by_class"]} == {
        "robots_disallowed": 10, "http_404": 5, "not_written": 5}


# --------------------------------------------------------------------------------------------
# Connect time, in this process: a counting server on 127.0.0.1 and one on 127.0.0.2


def jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class CountingServer:
    """Serves ``/img/*.jpg`` (a JPEG) and ``redirects`` (path -> Location, 302); records every request path."""

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        self.redirects: dict[str, str] = {}
        body = jpeg()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path.startswith("/img/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def servers() -> Iterator[tuple[CountingServer, CountingServer]]:
    a, b = CountingServer("127.0.0.1"), CountingServer("127.0.0.2")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture()
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """socket.getaddrinfo answering names under ``.example`` from a table (never the machine's DNS or
    /etc/hosts); every lookup is recorded under ``'_lookups'``."""
    table: dict[str, list[str]] = {"_lookups": []}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kw: Any) -> list[tuple[Any, ...]]:
        if isinstance(host, str) and host.endswith(".example"):
            table["_lookups"].append(host)
            answers = table[host]
            if answers and isinstance(answers[0], list):  # a rebinding resolver: one answer per lookup
                answers = answers.pop(0)
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, int(port)) if ":" not in ip else (ip, int(port), 0, 0)) for ip in answers]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


def test_name_resolving_to_a_refused_address_is_never_contacted(servers, resolver) -> None:
    a, b = servers
    resolver["rebind.example"] = ["127.0.0.2"]
    resolver["mixed.example"] = ["93.184.216.34", "10.0.0.1"]  # refused as a whole, before any connection
    resolver["meta.example"] = ["169.254.169.254"]
    opener = guarded_opener(["127.0.0.1"])
    for host in ("rebind.example", "mixed.example", "meta.example"):
        with pytest.raises(urllib.error.URLError, match="blocked address") as err:
            opener.open(b.url("/img/x.jpg", host), timeout=5)
        assert error_class(str(err.value)) == "blocked_address"
    assert b.hits == [] and a.hits == []


def test_connection_goes_to_the_checked_address(servers, resolver) -> None:
    """A rebinding resolver answers 127.0.0.1 (allowed) then 127.0.0.2: the guard looks up once and connects
    to the address it checked, so the second answer is never used."""
    a, b = servers
    resolver["rebind.example"] = [["127.0.0.1"], ["127.0.0.2"]]
    with guarded_opener(["127.0.0.1"]).open(a.url("/img/ok.jpg", "rebind.example"), timeout=5) as r:
        assert r.read() == jpeg()
    assert a.hits == ["/img/ok.jpg"] and b.hits == []
    assert resolver["_lookups"] == ["rebind.example"]


def test_redirect_to_a_refused_address_is_stopped_at_the_socket(servers) -> None:
    a, b = servers
    a.redirects["/to-b"] = b.url("/img/secret.jpg")
    a.redirects["/to-decimal"] = b.url("/img/secret.jpg", "2130706434")  # 127.0.0.2 as one number
    a.redirects["/to-ok"] = a.url("/img/ok.jpg")
    opener = guarded_opener(["127.0.0.1"])
    for path in ("/to-b", "/to-decimal"):
        with pytest.raises(urllib.error.URLError, match="blocked address"):
            opener.open(a.url(path), timeout=5)
    with opener.open(a.url("/to-ok"), timeout=5) as r:
        assert r.status == 200
    assert b.hits == []
    assert a.hits == ["/to-b", "/to-decimal", "/to-ok", "/img/ok.jpg"]


def test_img2dataset_download_image_uses_the_guarded_opener(servers) -> None:
    """img2dataset's own download function, as its threads call it: the refusal is its error message."""
    from img2dataset.downloader import download_image

    a, b = servers
    a.redirects["/to-b.jpg"] = b.url("/img/secret.jpg")
    with guarded_urlopen(["127.0.0.1"]):
        _, stream, err = download_image((0, a.url("/to-b.jpg")), 5, "witbuild", None)
        assert stream is None and error_class(err) == "blocked_address", err
        _, stream, err = download_image((1, a.url("/img/ok.jpg")), 5, "witbuild", None)
        assert err is None and stream.read() == jpeg()
        _, stream, err = download_image((2, b.url("/img/secret.jpg")), 5, "witbuild", None)
        assert error_class(err) == "blocked_address", err
    assert b.hits == []
    assert urllib.request._opener is None or not any(  # type: ignore[attr-defined]
        type(h).__name__.startswith("_Guarded") for h in urllib.request._opener.handlers)  # type: ignore[attr-defined]


def test_response_cache_fetches_each_url_once(servers, tmp_path) -> None:
    """img2dataset's download function behind the cache: a second fetch of a URL is answered from disk, with the
    same bytes and headers; a redirect is replayed hop by hop; errors and opted-out answers are never kept."""
    from img2dataset.downloader import download_image

    a, _ = servers
    a.redirects["/moved.jpg"] = a.url("/img/target.jpg")
    extra = (TdmReservationProcessor(), ResponseCache(str(tmp_path)), ResponseKeeper(str(tmp_path)))
    for _ in range(2):
        with guarded_urlopen(["127.0.0.1"], extra=extra):
            _, stream, err = download_image((0, a.url("/img/one.jpg")), 5, "witbuild", None)
            assert err is None and stream.read() == jpeg()
            _, stream, err = download_image((1, a.url("/moved.jpg")), 5, "witbuild", None)
            assert err is None and stream.read() == jpeg()
            _, stream, err = download_image((2, a.url("/gone.jpg")), 5, "witbuild", None)
            assert stream is None and error_class(err) == "http_404", err
            r = urllib.request.urlopen(a.url("/img/one.jpg"), timeout=5)
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
    # the first round fetched one.jpg, the redirect and its target, and the 404; the second only the redirect
    # (3xx answers are not kept) and the 404 again
    assert sorted(a.hits) == sorted(["/img/one.jpg", "/moved.jpg", "/img/target.jpg", "/gone.jpg",
                                     "/moved.jpg", "/gone.jpg"])
    assert len(list(tmp_path.rglob("*.json"))) == 2 and not list(tmp_path.rglob("*.tmp"))


def test_response_cache_replays_only_under_the_policy_it_was_kept_under(servers, tmp_path) -> None:
    """An answer is replayed only to a build under the policy that let it through: under another policy (one that
    might refuse the address a name led to) the request goes to the network, through that policy's checks."""
    a, _ = servers
    url = a.url("/img/one.jpg")
    kept = (ResponseCache(str(tmp_path), ("127.0.0.1",)), ResponseKeeper(str(tmp_path), ("127.0.0.1",)))
    with guarded_urlopen(["127.0.0.1"], extra=kept):
        assert urllib.request.urlopen(url, timeout=5).read() == jpeg()
    with guarded_urlopen(["127.0.0.1"], extra=kept):  # the same policy: from the cache
        assert urllib.request.urlopen(url, timeout=5).read() == jpeg()
    assert a.hits == ["/img/one.jpg"]
    other = ("127.0.0.1", "10.0.0.0/8")
    extra = (ResponseCache(str(tmp_path), other), ResponseKeeper(str(tmp_path), other))
    with guarded_urlopen(list(other), extra=extra):
        assert urllib.request.urlopen(url, timeout=5).read() == jpeg()
    assert a.hits == ["/img/one.jpg", "/img/one.jpg"]  # another policy: fetched again, through its own checks


def test_response_cache_keeps_no_opted_out_answer(tmp_path) -> None:
    class Reserved(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("tdm-reservation", "1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Reserved)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        extra = (TdmReservationProcessor(), ResponseCache(str(tmp_path)), ResponseKeeper(str(tmp_path)))
        with guarded_urlopen(["127.0.0.1"], extra=extra), pytest.raises(urllib.error.URLError, match="opted out"):
            urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_address[1]}/x.jpg", timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not list(tmp_path.rglob("*.body"))


def test_guarded_opener_handles_no_ftp_or_file_urls() -> None:
    with pytest.raises(urllib.error.URLError, match="unknown url type"):
        guarded_opener().open("file:///etc/hostname", timeout=5)


def _probe(_row: Any) -> str:
    """What a worker sees inside the wrapper: the opener urlopen would use."""
    return type(urllib.request._opener).__name__ + ":" + ",".join(  # type: ignore[attr-defined]
        sorted(type(h).__name__ for h in urllib.request._opener.handlers))  # type: ignore[attr-defined]


def test_guarded_downloader_pickles_and_guards_the_call() -> None:
    wrapped = pickle.loads(pickle.dumps(GuardedDownloader(_probe, ("127.0.0.1",))))
    assert wrapped.allow == ("127.0.0.1",)
    assert "_GuardedHTTPHandler" in wrapped(None) and "_GuardedHTTPSHandler" in wrapped(None)
    assert "ResponseCache" not in wrapped(None)
    cached = pickle.loads(pickle.dumps(GuardedDownloader(_probe, ("127.0.0.1",), "/tmp/cache")))
    assert "ResponseCache" in cached(None) and "ResponseKeeper" in cached(None)


# --------------------------------------------------------------------------------------------
# The real job through the download stage

CAPTIONS = [
    "a red bicycle leaning against an old brick wall", "two brown dogs playing in the green park",
    "a white sailing boat on the calm blue lake", "fresh oranges and apples in a wooden basket",
    "a small yellow house with a red door", "children flying a colourful kite on the beach",
    "a black cat sleeping on a soft blue blanket", "snow on the tall mountains above the village",
    "a cup of hot coffee on the kitchen table", "an old steam train crossing a stone bridge",
    "a bowl of tomato soup with fresh bread", "the city skyline at night with bright lights",
]


def write_page_warc(path: Path, page_url: str, image_urls: list[str]) -> None:
    imgs = "\n".join(f'<p><img src="{u}" alt="{CAPTIONS[i]}"></p>' for i, u in enumerate(image_urls))
    html = f"<!doctype html><html lang=en><head><title>Photos</title></head><body>{imgs}</body></html>".encode()
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                              ("Content-Length", str(len(html)))], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(page_url, "response", payload=io.BytesIO(html),
                                                      http_headers=headers))


def build(tmp_path: Path, warc: Path, *sets: str) -> Path:
    out = tmp_path / "out"
    args = ["--input", str(warc), "--output", str(out), "--until-stage", "download", "--set", "langid.allowed=[]",
            "--set", "querylist.bigram_min_count=1", "--set", "download.timeout=5", "--set", "download.retries=0",
            "--set", "download.thread_count=4", "--set", "download.min_image_size=10"]
    for s in sets:
        args += ["--set", s]
    proc = run_job(*args, spark_args=("--driver-memory", "1g", "--executor-memory", "1g"), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def download_counts(out: Path) -> dict[str, Any]:
    return json.loads((out / "stages" / "download" / "_counts.json").read_text())


@pytest.mark.slow
@pytest.mark.spark
def test_default_policy_fetches_no_loopback_spelling(tmp_path: Path) -> None:
    server = CountingServer("127.0.0.1")
    try:
        hosts = ["127.0.0.1", "localhost", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "127.0.0.1.",
                 "LOCALHOST", "img.localhost", "[::ffff:127.0.0.1]"]
        urls = [server.url(f"/img/{i}.jpg", host) for i, host in enumerate(hosts)]
        warc = tmp_path / "page.warc.gz"
        write_page_warc(warc, "https://photos.example.org/index.html", urls)
        out = build(tmp_path, warc)
    finally:
        server.close()
    assert server.hits == []
    counts = download_counts(out)
    assert counts["rows_in"] == len(hosts), counts  # every image reached the download stage
    assert counts["rows_out"] == 0 and counts["dropped"] == {"blocked_address": len(hosts)}, counts
    assert not list((out / "stages" / "download").glob("*.tar"))  # img2dataset was never started
    report = json.loads((out / "build_report.json").read_text())
    assert report["stages"]["download"]["dropped"] == {"blocked_address": len(hosts)}


@pytest.mark.slow
@pytest.mark.spark
def test_allowed_server_cannot_redirect_to_another_loopback_address(tmp_path: Path) -> None:
    a, b = CountingServer("127.0.0.1"), CountingServer("127.0.0.2")
    try:
        a.redirects["/img/redirect.jpg"] = b.url("/img/secret.jpg")
        a.redirects["/img/redirect-decimal.jpg"] = b.url("/img/secret2.jpg", "2130706434")
        urls = [a.url("/img/ok.jpg"), a.url("/img/redirect.jpg"), a.url("/img/redirect-decimal.jpg"),
                b.url("/img/direct.jpg"), a.url("/img/ok2.jpg", "2130706433")]
        warc = tmp_path / "page.warc.gz"
        write_page_warc(warc, "https://photos.example.org/index.html", urls)
        out = build(tmp_path, warc, "network.allow_addresses=['127.0.0.1']")
    finally:
        a.close()
        b.close()
    assert b.hits == []
    # one robots.txt request: 127.0.0.1 and 2130706433 are one origin
    assert sorted(a.hits) == ["/img/ok.jpg", "/img/ok2.jpg", "/img/redirect-decimal.jpg", "/img/redirect.jpg",
                              "/robots.txt"]
    counts = download_counts(out)
    assert counts["rows_in"] == 5 and counts["rows_out"] == 2, counts
    assert counts["dropped"] == {"blocked_address": 3}, counts  # one before any request, two at the socket
    meta = [r for p in sorted((out / "stages" / "download").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    failed = {r["url"]: r["error_message"] for r in meta if r["status"] != "success"}
    assert set(failed) == {urls[1], urls[2]}
    assert all("blocked address" in m for m in failed.values()), failed
