"""The image hosts' robots.txt and the TDM reservation header (witbuild/robots.py, the download stage).

Every server here listens on a loopback address of this machine; each counts the requests it saw, so the
tests check both what the funnel says and what really reached the servers (one robots.txt request per host).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.test_network_policy import CAPTIONS, build, download_counts, jpeg, write_page_warc
from witbuild.robots import (
    MISSING,
    OK,
    ROBOTS_MIN_BYTES,
    UNREACHABLE,
    RobotsLimits,
    agent_tokens,
    fetch_robots,
    origin_of,
    robots_refusal,
    user_agent_string,
)

ALLOW_LOOPBACK = ("127.0.0.1",)
LIMITS = RobotsLimits(timeout=2.0, total_timeout=4.0, max_bytes=1024)
PADDING = "# " + "x" * 78 + "\n"  # one 81-byte comment line, to push rules past the size cap


class Host:
    """One image host: its robots.txt answer (status, body, delay before the headers, drip) and JPEGs at any path
    ending in .jpg; ``tdm`` paths carry ``tdm-reservation: 1``. ``hits`` lists every request path."""

    def __init__(self, robots_status: int = 404, robots_body: str = "", delay: float = 0.0, drip: float = 0.0,
                 redirect: str | None = None, tdm: tuple[str, ...] = (), bind: str = "127.0.0.1") -> None:
        self.hits: list[str] = []
        image = jpeg()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hits.append(self.path)
                if self.path == "/robots.txt":
                    self._robots()
                elif self.path.split("?")[0].endswith(".jpg"):
                    extra = [("tdm-reservation", "1")] if self.path in tdm else []
                    self._send(200, image, "image/jpeg", extra)
                else:
                    self._send(404, b"not found", "text/plain")

            def _robots(self) -> None:
                if delay:
                    time.sleep(delay)
                if redirect:
                    self._send(302, b"", "text/plain", [("Location", redirect)])
                elif drip:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    for line in robots_body.splitlines(keepends=True):
                        self.wfile.write(line.encode())
                        self.wfile.flush()
                        time.sleep(drip)
                else:
                    self._send(robots_status, robots_body.encode(), "text/plain")

            def _send(self, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] = ()) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in extra:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((bind, 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://{bind}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return self.origin + path

    def robots_hits(self) -> int:
        return self.hits.count("/robots.txt")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------------------------
# Pure rules


def test_origin_is_scheme_host_and_port() -> None:
    assert origin_of("HTTP://Img.Example.COM/a/b.jpg?x=1") == "http://img.example.com"
    assert origin_of("https://img.example.com:443/a.jpg") == "https://img.example.com"
    assert origin_of("https://img.example.com:8443/a.jpg") == "https://img.example.com:8443"
    assert origin_of("http://2130706433:8080/a.jpg") == origin_of("http://127.0.0.1:8080/b.jpg")
    assert origin_of("http://[::1]:80/a.jpg") == "http://[::1]"
    assert origin_of("ftp://img.example.com/a.jpg") is None
    assert origin_of("not a url") is None
    assert origin_of("http://host:99999/a.jpg") is None


RULES = """User-agent: *
Disallow: /private/
Disallow: /img/
Allow: /img/*.jpg$

User-agent: img2dataset
Disallow: /no-img2dataset/
"""


@pytest.mark.parametrize(("path", "reason"), [
    ("/photo.jpg", None),
    ("/private/photo.jpg", "robots_disallowed"),
    ("/img/photo.jpg", None),                # Allow with a wildcard and an end anchor wins (longer match)
    ("/img/photo.jpg?size=2", "robots_disallowed"),  # the anchor: the URL goes on past .jpg
    ("/img/photo.png", "robots_disallowed"),
    ("/no-img2dataset/a.jpg", "robots_disallowed"),  # the request also names img2dataset
])
def test_rules_apply_to_every_token_the_request_carries(path: str, reason: str | None) -> None:
    assert robots_refusal("http://h.example" + path, OK, RULES, agent_tokens("witbuild")) == reason


def test_a_group_for_our_token_replaces_the_star_group() -> None:
    rules = "User-agent: *\nDisallow: /\n\nUser-agent: witbuild\nAllow: /\n\nUser-agent: img2dataset\nAllow: /\n"
    assert robots_refusal("http://h.example/a.jpg", OK, rules, agent_tokens("witbuild")) is None
    assert robots_refusal("http://h.example/a.jpg", OK, rules, agent_tokens("otherbot")) == "robots_disallowed"


def test_missing_allows_and_unreachable_disallows() -> None:
    tokens = agent_tokens("witbuild")
    assert robots_refusal("http://h.example/a.jpg", MISSING, "", tokens) is None
    assert robots_refusal("http://h.example/a.jpg", UNREACHABLE, "", tokens) == "robots_unreachable"
    assert robots_refusal("http://h.example/a.jpg", None, None, tokens) is None  # not checked
    assert agent_tokens("witbuild") == ("witbuild", "img2dataset")
    assert agent_tokens("img2dataset") == ("img2dataset",)


# --------------------------------------------------------------------------------------------
# One fetch, against a loopback server


def fetch(host: Host, limits: RobotsLimits = LIMITS, allow: tuple[str, ...] = ALLOW_LOOPBACK) -> Any:
    try:
        return fetch_robots(host.origin, allow, limits, user_agent_string("witbuild"))
    finally:
        host.close()


def test_rules_are_fetched_and_read() -> None:
    host = Host(200, "User-agent: *\nDisallow: /private/\n")
    answer = fetch(host)
    assert (answer.outcome, answer.status, answer.oversize) == (OK, 200, False)
    assert "Disallow: /private/" in answer.body and host.hits == ["/robots.txt"]


@pytest.mark.parametrize(("status", "outcome"), [(404, MISSING), (403, MISSING), (410, MISSING),
                                                 (429, UNREACHABLE), (500, UNREACHABLE), (503, UNREACHABLE)])
def test_status_classes(status: int, outcome: str) -> None:
    assert fetch(Host(status, "User-agent: *\nDisallow: /\n")).outcome == outcome


def test_a_server_that_does_not_answer_in_time_is_unreachable() -> None:
    started = time.monotonic()
    answer = fetch(Host(200, "User-agent: *\nAllow: /\n", delay=6.0))
    assert answer.outcome == UNREACHABLE and "timed out" in answer.error.lower()
    assert time.monotonic() - started < 5.5  # the 2 s read timeout, not the server's 6 s


def test_a_drip_is_cut_at_the_total_timeout() -> None:
    body = "User-agent: *\n" + "Allow: /a\n" * 40  # 41 lines, 0.2 s apart: 8 s > the 4 s total
    started = time.monotonic()
    answer = fetch(Host(200, body, drip=0.2), RobotsLimits(timeout=2.0, total_timeout=4.0, max_bytes=100_000))
    assert answer.outcome == UNREACHABLE and "total_timeout" in answer.error
    assert time.monotonic() - started < 7.0


def test_an_oversize_file_is_read_up_to_the_cap() -> None:
    body = "User-agent: *\nDisallow: /early/\n" + PADDING * 30 + "Disallow: /late/\n"
    answer = fetch(Host(200, body))
    assert answer.outcome == OK and answer.oversize and len(answer.body) == LIMITS.max_bytes
    tokens = agent_tokens("witbuild")
    assert robots_refusal("http://h/early/a.jpg", answer.outcome, answer.body, tokens) == "robots_disallowed"
    assert robots_refusal("http://h/late/a.jpg", answer.outcome, answer.body, tokens) is None


def test_the_network_policy_applies_to_robots_txt() -> None:
    host = Host(200, "User-agent: *\nAllow: /\n")
    answer = fetch(host, allow=())  # the default policy: loopback refused
    assert answer.outcome == UNREACHABLE and "blocked address" in answer.error and host.hits == []


def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    other = Host(200, "User-agent: *\nAllow: /\n", bind="127.0.0.2")
    try:
        answer = fetch(Host(redirect=other.url("/robots.txt")))
    finally:
        other.close()
    assert answer.outcome == UNREACHABLE and "blocked address" in answer.error and other.hits == []


# --------------------------------------------------------------------------------------------
# The download stage: the real job, img2dataset's downloader, one robots.txt request per host


@pytest.mark.slow
@pytest.mark.spark
def test_download_stage_honours_robots_and_tdm(tmp_path: Path) -> None:
    hosts = {
        "all": Host(200, "User-agent: *\nDisallow: /\n"),
        "path": Host(200, "User-agent: *\nDisallow: /private/\n"),
        "wild": Host(200, "User-agent: *\nDisallow: /img/\nAllow: /img/*.jpg$\n"),
        "i2d": Host(200, "User-agent: img2dataset\nDisallow: /\n"),
        "none": Host(404),
        "err": Host(500, "User-agent: *\nAllow: /\n"),
        "slow": Host(200, "User-agent: *\nAllow: /\n", delay=6.0),
        # past RFC 9309's 500 KiB, which is read whatever crawl.max_page_bytes says
        "big": Host(200, "User-agent: *\nDisallow: /early/\n" + PADDING * (ROBOTS_MIN_BYTES // len(PADDING) + 1)
                    + "Disallow: /late/\n"),
        "tdm": Host(404, tdm=("/img/reserved.jpg",)),
    }
    images = [("all", "/img/a.jpg"), ("path", "/private/b.jpg"), ("path", "/img/c.jpg"), ("wild", "/img/d.jpg"),
              ("wild", "/img/e.jpg?w=2"), ("i2d", "/img/f.jpg"), ("none", "/img/g.jpg"), ("err", "/img/h.jpg"),
              ("slow", "/img/i.jpg"), ("big", "/early/j.jpg"), ("big", "/late/k.jpg"), ("tdm", "/img/reserved.jpg")]
    assert len(images) <= len(CAPTIONS)
    try:
        warc = tmp_path / "page.warc.gz"
        write_page_warc(warc, "https://photos.example.org/index.html", [hosts[h].url(p) for h, p in images])
        out = build(tmp_path, warc, "network.allow_addresses=['127.0.0.1']", "crawl.read_timeout=2",
                    "crawl.total_timeout=4", "crawl.max_page_bytes=1024")
    finally:
        for h in hosts.values():
            h.close()
    assert {name: h.robots_hits() for name, h in hosts.items()} == dict.fromkeys(hosts, 1)
    counts = download_counts(out)
    assert (counts["rows_in"], counts["rows_out"]) == (12, 4), counts
    assert counts["dropped"] == {"robots_disallowed": 5, "robots_unreachable": 2, "opted_out": 1}, counts
    assert counts["events"] == {"robots_hosts": 9, "robots_ok_hosts": 5, "robots_missing_hosts": 2,
                                "robots_unreachable_hosts": 2, "robots_oversize_hosts": 1}, counts
    fetched = sorted((name, p) for name, h in hosts.items() for p in h.hits if p != "/robots.txt")
    assert fetched == [("big", "/late/k.jpg"), ("none", "/img/g.jpg"), ("path", "/img/c.jpg"),
                       ("tdm", "/img/reserved.jpg"), ("wild", "/img/d.jpg")]
    saved = json.loads((out / "build_report.json").read_text())["stages"]["download"]
    assert saved["dropped"] == counts["dropped"]


@pytest.mark.slow
@pytest.mark.spark
def test_one_setting_turns_robots_off(tmp_path: Path) -> None:
    host = Host(200, "User-agent: *\nDisallow: /\n")
    try:
        warc = tmp_path / "page.warc.gz"
        write_page_warc(warc, "https://photos.example.org/index.html", [host.url("/img/a.jpg"), host.url("/b.jpg")])
        out = build(tmp_path, warc, "network.allow_addresses=['127.0.0.1']", "download.respect_robots=false")
    finally:
        host.close()
    assert sorted(host.hits) == ["/b.jpg", "/img/a.jpg"]
    counts = download_counts(out)
    assert (counts["rows_in"], counts["rows_out"], counts["dropped"]) == (2, 2, {}), counts


def test_stats_list_rows_dropped_before_the_download() -> None:
    """``witbuild stats`` adds the rows robots.txt kept from img2dataset (funnel only) to the download failures."""
    from collections import Counter

    from witbuild.stats.collect import DownloadStats, _download_section

    d = DownloadStats(rows=3, status=Counter({"success": 2, "failed_to_download": 1}),
                      messages=Counter({"opted out: tdm-reservation: 1 on http://h.example/a.jpg": 1}))
    funnel = [{"stage": "download", "rows_in": 10, "rows_out": 2, "rows_dropped": 8,
               "dropped": {"robots_disallowed": 4, "robots_unreachable": 2, "blocked_address": 1, "opted_out": 1}}]
    section = _download_section(d, funnel)
    assert section is not None and (section["rows"], section["success"], section["failed"]) == (10, 2, 8)
    assert [(f["class"], f["count"]) for f in section["failures_by_class"]] == [
        ("robots_disallowed", 4), ("robots_unreachable", 2), ("blocked_address", 1), ("opted_out", 1)]
    why = {f["class"]: f["examples"][0]["message"] for f in section["failures_by_class"]}
    assert "robots.txt" in why["robots_disallowed"] and "tdm-reservation" in why["opted_out"]


# every spelling here must get the answer the URL's own parse gives, whatever the memo already holds
TAG_URLS = [
    "http://127.0.0.1:8080/a.jpg", "http://127.0.0.1:8080/b.jpg?x=1", "HTTP://127.0.0.1:8080/c", "http://127.0.0.1:80/",
    "http://127.0.0.1/", "http://2130706433:8080/a.jpg", "http://0x7f.1/a.jpg", "http://127.1:8080#frag",
    "http://127.0.0.1:8080?q", "http://127.0.0.1:8080", "http://127.0.0.1:/a", "http://127.0.0.1:99999/a",
    "http://user:pw@127.0.0.1:8080/a", "http://127.0.0.1:8080\\@evil.example/a", " http://127.0.0.1:8080/a",
    "http://127.0.0.1:8080/a ", "http://127.0.0.1\t:8080/a", "http://Img.Example.COM./a.jpg", "https://img.example.com/a",
    "https://img.example.com:443/b", "ftp://img.example.com/a", "http://[::1]:8080/a", "http://localhost/a",
    "http://169.254.169.254/latest", "http://10.0.0.1:8080/a", "http:///a.jpg", "http://-bad-.example/a",
    "http://127.0.0.1:8080\n", "http://127.0.0.1:8080\n/a", "", None,
]


def test_url_tags_match_a_whole_parse_of_each_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from witbuild.stages import download
    from witbuild.stages.download import _parsed_tags, url_tags

    memo: dict[str, Any] = {}
    for allow in (ALLOW_LOOPBACK, ()):
        memo.clear()
        for url in TAG_URLS * 2:  # the second time round every plain authority is in the memo
            assert url_tags(url, allow, memo) == _parsed_tags(url, allow), url
    assert len(memo) >= 8  # the plain authorities were memoised, not all parsed whole
    assert url_tags("http://127.0.0.1:8080/a.jpg", ALLOW_LOOPBACK, {}) == (None, "http://127.0.0.1:8080")
    assert url_tags("http://127.0.0.1:8080/a.jpg", (), {}) == ("blocked_address", None)
    monkeypatch.setattr(download, "MEMO_AUTHORITIES", 3)  # a memo at its bound starts afresh, answers unchanged
    memo.clear()
    for url in TAG_URLS * 2:
        assert url_tags(url, ALLOW_LOOPBACK, memo) == _parsed_tags(url, ALLOW_LOOPBACK), url
        assert len(memo) <= 3
