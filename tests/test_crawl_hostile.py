"""The live crawler against awkward and hostile sites on 127.0.0.1: robots.txt as Google reads it, hosts that ask
the crawl to slow down or come back later, and URLs that are one page under several spellings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.test_crawl import Route, Site, _gaps, _serving, crawl, links, page, responses, send, text
from witbuild.counters import StageCounts
from witbuild.layout import ROBOTS_DISALLOWED
from witbuild.robots import OK, agent_tokens, parse_rules, robots_refusal
from witbuild.sources.crawl import MAX_WAIT_SECONDS, group_seeds_by_host, retry_after_seconds

# The server stamps a request when its handler thread runs, up to ~0.2 s late on a loaded machine; a request sent
# without its wait comes within a few milliseconds, so every wait below is well over this slack.
SLACK_S = 0.4


@pytest.fixture
def site() -> Iterator[Site]:
    with _serving() as served:
        yield served


# --------------------------------------------------------------------------------------------
# robots.txt by RFC 9309 and Google's parser

_GOOGLE_ROBOTS = """\
User-agent: *
Disallow: /
# the groups below are for other crawlers

User-agent: otherbot
Allow: /

User-agent: witbuild/2.0
User-agent: thirdbot

Disallow: /shop
Allow: /shop/catalog
Disallow: /*.php$
Disallow: /*?sessionid=
# a comment and a blank line do not end a group

Disallow: /late
"""


def _paths_site(site: Site, *paths: str) -> None:
    site.routes["/"] = links(*paths)
    for path in paths:
        site.routes[path] = page(f"<p>{path}</p>")


def test_robots_longest_match_wildcards_and_groups_as_google_reads_them(site: Site, tmp_path: Path) -> None:
    """The group is ours though it names a version and spans blank lines and comments; the longest rule wins,
    ``*`` and ``$`` match as wildcards and end of URL."""
    site.routes["/robots.txt"] = text(_GOOGLE_ROBOTS)
    allowed = ["/shop/catalog/a", "/index.php?x=1", "/news"]
    refused = ["/shop/basket", "/index.php", "/a/b.php", "/list?sessionid=42", "/late/page"]
    _paths_site(site, *allowed, *refused)
    counts, _ = crawl(site, tmp_path)
    assert sorted(site.paths()) == sorted(["/robots.txt", "/", *allowed])
    assert counts.events["robots_disallowed"] == len(refused)


@pytest.mark.parametrize(
    ("body", "path", "allowed"),
    [
        ("User-agent: *\nDisallow: /\nAllow: /public\n", "/public/x", True),
        ("User-agent: *\nAllow: /\nDisallow: /private\n", "/private/x", False),
        ("User-agent: *\n\nDisallow: /x\n", "/x", False),
        ("User-agent: WITBUILD\nDisallow: /x\n", "/x", False),
        ("User-agent: witbuild 1.0\nDisallow: /x\n", "/x", False),
        ("User agent: witbuild/1.0\nDisallow: /x\n", "/x", False),
        ("User-agent: builder\nDisallow: /x\n", "/x", True),
        ("User-agent: img2dataset/1.2\nDisallow: /x\n", "/x", True),
        ("\ufeffUser-agent: witbuild/1\nDisallow: /x\n", "/x", False),
        ("User-agent: *\nDisallow: /~joe\n", "/%7Ejoe/a", False),
        # another crawler's name with a digit in it is not cut there into a prefix of ours
        ("User-agent: W3C-checklink\nDisallow: /\n\nUser-agent: *\nAllow: /\n", "/x", True),
        ("User-agent: w3c/2.0\nDisallow: /\n\nUser-agent: *\nAllow: /\n", "/x", True),
        ("User-agent: witbuild;\nDisallow: /x\n", "/x", False),
        ("User-agent: witbuild(compatible)\nDisallow: /x\n", "/x", False),
    ],
)
def test_parse_rules(body: str, path: str, allowed: bool) -> None:
    assert parse_rules(body).can_fetch(f"http://h.example{path}", "witbuild") is allowed


def test_the_download_stage_reads_a_versioned_user_agent_line_as_its_token() -> None:
    """The image requests carry ``img2dataset``: its group applies though the line names a version."""
    body = "User-agent: *\nAllow: /\n\nUser-agent: img2dataset/1.45\nDisallow: /img/\n"
    tokens = agent_tokens("witbuild")
    assert robots_refusal("http://h.example/img/a.jpg", OK, body, tokens) == ROBOTS_DISALLOWED
    assert robots_refusal("http://h.example/pub/a.jpg", OK, body, tokens) is None


def test_robots_txt_is_read_to_500_kib_whatever_the_page_cap(site: Site, tmp_path: Path) -> None:
    """RFC 9309 2.5: the first 500 KiB at least; a small max_page_bytes must not cut off the rules after it."""
    body = "User-agent: *\n" + "# padding\n" * 45_000 + "Disallow: /late\n"
    assert 400_000 < len(body) < 500 * 1024
    site.routes["/robots.txt"] = text(body)
    _paths_site(site, "/late", "/early")
    counts, _ = crawl(site, tmp_path, max_page_bytes=100_000)
    assert sorted(site.paths()) == ["/", "/early", "/robots.txt"]
    assert counts.events["robots_disallowed"] == 1 and counts.events["body_truncated"] == 0


def test_a_fractional_crawl_delay_is_kept(site: Site, tmp_path: Path) -> None:
    site.routes["/robots.txt"] = text("User-agent: *\nCrawl-delay: 0.9\n")
    _paths_site(site, "/1", "/2")
    crawl(site, tmp_path, delay_seconds=0.0)
    assert len(site.hits) == 4
    assert min(_gaps(site)) >= 0.9 - SLACK_S, _gaps(site)


def test_a_crawl_delay_over_the_cap_leaves_the_host_instead_of_hanging(site: Site, tmp_path: Path) -> None:
    site.routes["/robots.txt"] = text(f"User-agent: *\nCrawl-delay: {MAX_WAIT_SECONDS * 1000:.0f}\n")
    _paths_site(site, "/1")
    result: list[StageCounts] = []
    worker = threading.Thread(target=lambda: result.append(crawl(site, tmp_path)[0]), daemon=True)
    worker.start()
    worker.join(timeout=15)
    assert not worker.is_alive(), "the crawl waits out the Crawl-delay"
    assert site.paths() == ["/robots.txt"]
    assert result[0].events["crawl_delay_too_long"] == 1


# --------------------------------------------------------------------------------------------
# 429 and 503 with Retry-After


def _busy_once(retry_after: str, status: int = 503) -> Route:
    """A page that answers ``status`` with ``Retry-After`` the first time, and is there the next."""
    seen = {"n": 0}

    def route(h: BaseHTTPRequestHandler) -> None:
        seen["n"] += 1
        if seen["n"] == 1:
            send(h, status, b"come back later", "text/plain", {"Retry-After": retry_after})
        else:
            send(h, 200, b"<p>here</p>")

    return route


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_waited_out_and_the_page_asked_again(site: Site, tmp_path: Path, status: int) -> None:
    route = _busy_once("1", status)
    site.routes["/"] = links("/busy", "/next")
    site.routes["/busy"] = route
    site.routes["/next"] = page("next")
    counts, out = crawl(site, tmp_path)
    assert site.paths() == ["/robots.txt", "/", "/busy", "/busy", "/next"]
    busy_at = [h.t for h in site.hits if h.path == "/busy"]
    assert busy_at[1] - busy_at[0] >= 1.0 - SLACK_S
    assert counts.events["retry_after_waits"] == 1 and counts.events["pages_fetched"] == 4
    assert responses(out)[site.url("/busy")][1] == 200  # the later answer is the page's last record


def test_retry_after_as_an_http_date(site: Site, tmp_path: Path) -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)  # ≥ 2 s once cut
    route = _busy_once(when)
    site.routes["/"] = links("/busy")
    site.routes["/busy"] = route
    crawl(site, tmp_path)
    busy_at = [h.t for h in site.hits if h.path == "/busy"]
    assert len(busy_at) == 2 and busy_at[1] - busy_at[0] >= 1.0 - SLACK_S  # whole seconds in the date


def test_a_page_still_busy_after_its_wait_leaves_the_host(site: Site, tmp_path: Path) -> None:
    """One wait per host, not per page: a host busy for good would otherwise hold the crawl for a Retry-After per
    page it links to."""
    site.routes["/"] = links(*(f"/busy{i}" for i in range(5)))
    for i in range(5):
        site.routes[f"/busy{i}"] = lambda h: send(h, 503, b"busy", "text/plain", {"Retry-After": "1"})
    counts, _ = crawl(site, tmp_path)
    assert site.paths() == ["/robots.txt", "/", "/busy0", "/busy0"]
    assert counts.events["retry_after_waits"] == 1 and counts.events["retry_failed"] == 1


def test_a_retry_answered_busy_without_retry_after_leaves_the_host(site: Site, tmp_path: Path) -> None:
    seen = {"n": 0}

    def busy(h: BaseHTTPRequestHandler) -> None:
        seen["n"] += 1
        send(h, 503, b"busy", "text/plain", {"Retry-After": "1"} if seen["n"] == 1 else {})

    site.routes["/"] = links("/busy", "/next")
    site.routes["/busy"] = busy
    site.routes["/next"] = page("next")
    counts, _ = crawl(site, tmp_path)
    assert site.paths() == ["/robots.txt", "/", "/busy", "/busy"]
    assert counts.events["retry_failed"] == 1


def test_a_retry_after_over_the_cap_leaves_the_host(site: Site, tmp_path: Path) -> None:
    site.routes["/"] = lambda h: send(h, 429, b"slow down", "text/plain", {"Retry-After": "86400"})
    counts, _ = crawl(site, tmp_path, seeds=[site.url("/"), site.url("/other")])
    assert site.paths() == ["/robots.txt", "/"]
    assert counts.events["retry_after_too_long"] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), ("", None), (None, None), ("soon", None), ("-5", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("\u00b2", None), ("1.5", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value) == expected


# --------------------------------------------------------------------------------------------
# One page, many spellings


def test_escapes_of_unreserved_characters_are_one_url(site: Site, tmp_path: Path) -> None:
    """requests sends ``/%7Ejoe`` as ``/~joe``: fetched once, stored under the URL that was asked for."""
    site.routes["/"] = links("/%7Ejoe", "/~joe", "/%7ejoe", f"HTTP://127.0.0.1:{site.port}/~joe#top", "/a%2fb")
    site.routes["/~joe"] = page("joe")
    counts, out = crawl(site, tmp_path)
    assert sorted(site.paths()) == ["/", "/a%2Fb", "/robots.txt", "/~joe"]
    assert set(responses(out)) >= {site.url("/~joe"), site.url("/a%2Fb")}
    assert counts.events["pages_fetched"] == 3


def test_seed_spellings_are_one_seed() -> None:
    assert group_seeds_by_host(["http://h.example/%7Ea?q=%7e%2f", "http://H.example:80/~a?q=~%2F#x"]) == {
        "http://h.example:80": ["http://h.example/~a?q=~%2F"]}


def test_spellings_of_one_address_are_one_host() -> None:
    """One server, one worker and one gap between requests, however its seeds spell its address."""
    groups = group_seeds_by_host(["http://127.0.0.1:8000/a", "http://2130706433:8000/b", "http://0x7f.1:8000/c"])
    assert groups == {"http://127.0.0.1:8000": ["http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b",
                                                "http://127.0.0.1:8000/c"]}
    with pytest.raises(ValueError, match=r"1\.2\.3\.999"):
        group_seeds_by_host(["http://1.2.3.999/"])

