"""A polite, SSRF-safe live crawler: one host at a time, every fetch written to a gzip WARC.

The crawl's output is an ordinary WARC, so the extract stage reads crawled pages exactly like
Common Crawl files. Politeness (robots.txt per RFC 9309, a minimum gap between requests, an
identifying User-Agent) and safety (the build's network policy of witbuild/network.py: no
private/loopback/link-local targets unless ``network.allow_addresses`` names them, the checked address
pinned for the connection, byte and wall-clock caps per response) are enforced here, on every
request including redirect hops and robots.txt itself.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from io import BytesIO
from typing import Any
from urllib.parse import urldefrag, urlsplit, urlunsplit

import requests
import urllib3
from protego import Protego
from requests.adapters import HTTPAdapter
from selectolax.lexbor import LexborHTMLParser
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.warcwriter import WARCWriter

from witbuild import __version__
from witbuild.config import CrawlConfig
from witbuild.counters import StageCounts
from witbuild.network import (
    REDIRECT_BODY_BYTES,
    NetworkConfig,
    address_allowed,
    allow_networks,
    host_refusal,
    numeric_ipv4,
)
from witbuild.resolver import LookupTimeoutError, getaddrinfo_within
from witbuild.robots import ROBOTS_MIN_BYTES, parse_rules
from witbuild.sources.html import decode_page, is_html, query_codec
from witbuild.sources.urls import DEFAULT_PORTS, resolve, split_origin

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
# Response headers that describe the wire form of the body; the stored body is decoded, so they
# are kept under another name (as Common Crawl does) and a true Content-Length is added.
_RENAMED_HEADERS = ("content-encoding", "transfer-encoding", "content-length")
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_FRONTIER_FACTOR = 4  # queue at most this many URLs per page of budget, against link-farm pages
#: The longest a host may make the crawl wait between two of its requests (robots.txt ``Crawl-delay``, a 429 or
#: 503 ``Retry-After``). A host asking for more is left alone, counted, rather than crawled faster than it asked
#: or waited on for days: ``Crawl-delay: 86400`` would hold a 1,000-page crawl for three years.
MAX_WAIT_SECONDS = 60.0
_BUSY_STATUSES = (429, 503)  # "come back later": Retry-After says when
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


# --------------------------------------------------------------------------------------------
# Addresses and URLs


def _origin_key(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _host_key(url: str) -> str | None:
    origin = split_origin(url)
    return _origin_key(*origin) if origin else None


def _escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def _normalize_escapes(text: str) -> str:
    """RFC 3986 6.2.2: percent-escapes of unreserved characters decoded (``%7E`` is ``~``), the others in upper
    case (``%2f`` is ``%2F``). requests sends a URL so on the wire, so ``/%7Ejoe`` and ``/~joe`` are one page."""
    return _ESCAPE.sub(_escape, text) if "%" in text else text


def _normalize(url: str) -> str | None:
    """A canonical form for dedup and fetching: no fragment, lower-case scheme and host, an IPv4 host in dotted
    decimal (``2130706433`` is ``127.0.0.1``, one host with one politeness clock), no default port, '/' for an
    empty path, percent-escapes normalised. None for anything but a usable http(s) URL."""
    origin = split_origin(url)
    if origin is None:
        return None
    scheme, host, port = origin
    if ":" not in host:
        try:
            v4 = numeric_ipv4(host)
        except ValueError:  # numeric, but no address: no host a request could reach
            return None
        host = str(v4) if v4 is not None else host
    parts = urlsplit(urldefrag(url.strip())[0])
    netloc = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = _normalize_escapes(parts.path) or "/"
    return urlunsplit((scheme, netloc, path, _normalize_escapes(parts.query), ""))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 10.2.3: delay-seconds or an HTTP-date), at least 0;
    None when there is none or it is unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def group_seeds_by_host(seeds: list[str]) -> dict[str, list[str]]:
    """Seeds grouped by ``scheme://host:port`` (lower-cased), order kept, duplicates dropped,
    so that each host is crawled by one worker with one politeness clock. Raises ValueError
    naming every seed that is not an http(s) URL with a host."""
    groups: dict[str, list[str]] = {}
    bad: list[str] = []
    for seed in seeds:
        norm = _normalize(seed) if isinstance(seed, str) else None
        key = _host_key(norm) if norm else None
        if norm is None or key is None:
            bad.append(repr(seed))
            continue
        group = groups.setdefault(key, [])
        if norm not in group:
            group.append(norm)
    if bad:
        raise ValueError(f"invalid seed URL(s) (need http:// or https:// with a host): {', '.join(bad)}")
    return groups


# --------------------------------------------------------------------------------------------
# Connections pinned to the address that was checked (no DNS rebinding between check and connect)


class _Watchdog:
    """Cuts one exchange off at a wall-clock deadline by shutting its socket down.

    A server that drips a byte at a time never trips a read timeout, and ``requests`` has no
    total timeout, so a timer thread shuts the socket down, which wakes the blocked reader.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            fired = self.fired
        if fired:
            self._shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        if sock is not None:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class _PinnedMixin:
    """Connects to a pre-checked IP while keeping the URL's host for Host, SNI and certificates."""

    _dns_host: str

    def __init__(self, *args: Any, pinned_ip: str, on_socket: Callable[[socket.socket], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._pinned_ip = pinned_ip
        self._on_socket = on_socket

    def _new_conn(self) -> socket.socket:
        real_host = self._dns_host
        self._dns_host = self._pinned_ip  # urllib3 resolves _dns_host; an IP literal needs no DNS
        try:
            sock = super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = real_host
        self._on_socket(sock)
        return sock


class _PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class _PinnedAdapter(HTTPAdapter):
    """A transport adapter whose connections all go to ``pinned_ip`` (one adapter per fetch)."""

    def __init__(self, pinned_ip: str, on_socket: Callable[[socket.socket], None]) -> None:
        self._pin_kw = {"pinned_ip": pinned_ip, "on_socket": on_socket}
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        # Extra pool kwargs become connection kwargs (HTTPConnectionPool's **conn_kw).
        self.poolmanager.pool_classes_by_scheme = {
            "http": partial(_PinnedHTTPPool, **self._pin_kw),
            "https": partial(_PinnedHTTPSPool, **self._pin_kw),
        }


class _NoRedirectSession(requests.Session):
    """A session that never looks at a response's redirect: requests' ``Session.send`` reads a 3xx response's
    whole body (``resp.content``, to prepare ``Response.next``) even with ``allow_redirects=False`` and
    ``stream=True``, before any cap of ours applies. Redirects are followed by hand, hop by hop, in
    :meth:`_HostCrawl.fetch_chain`."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def _pinned_session(ip: str, on_socket: Callable[[socket.socket], None]) -> requests.Session:
    session = _NoRedirectSession()
    session.trust_env = False  # no proxies or .netrc from the environment: we connect where we checked
    adapter = _PinnedAdapter(ip, on_socket)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --------------------------------------------------------------------------------------------
# One host's crawl


class _WarcWriteFailed(Exception):
    """Writing the WARC failed: the file may hold half a record, so the whole crawl must stop."""


class _Refused(Exception):
    """A URL we will not fetch; ``event`` names the counter."""

    def __init__(self, event: str, message: str) -> None:
        super().__init__(message)
        self.event = event


@dataclass
class _Exchange:
    """One HTTP request and its (possibly truncated) response, ready to be written."""

    url: str
    ip: str
    date: datetime
    request: requests.PreparedRequest
    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    truncated: str | None = None
    next_hop_failed: bool = False  # a redirect whose target was refused or could not be fetched

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def _robots_unreachable(ex: _Exchange | None) -> str | None:
    """Why a robots.txt answer means "unreachable" (RFC 9309 2.3.1.4: disallow all), or None. A file cut off
    by the total timeout or a disconnect is not the whole file (its last rules may be the ones that matter), and a
    redirect whose next hop failed or was refused never reached a file; one cut at the size cap is parsed."""
    if ex is None:
        return "no response"
    if ex.status == 429 or ex.status >= 500:
        return f"HTTP {ex.status}"
    if ex.truncated in ("time", "disconnect"):
        return f"cut off ({ex.truncated})"
    if ex.status in _REDIRECT_STATUSES and ex.next_hop_failed:
        return "redirect target unreachable"
    return None


def _hop_failed(last: _Exchange | None) -> _Exchange | None:
    """The chain's last answer (a redirect, or None at the first URL), marked: its target was never fetched."""
    if last is not None:
        last.next_hop_failed = True
    return last


@dataclass
class _Robots:
    parser: Protego | None = None  # None: allow all
    disallow_all: bool = False


@dataclass
class _HostCrawl:
    cfg: CrawlConfig
    counts: StageCounts
    writer: WARCWriter
    key: str
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ua_token: str = field(init=False)
    robots: _Robots = field(default_factory=_Robots)
    delay: float = 0.0
    last_start: float | None = None
    not_before: float = 0.0  # monotonic time before which the host asked (Retry-After) not to be asked again
    visited: set[str] = field(default_factory=set)
    offsite: dict[str, _HostCrawl] = field(default_factory=dict)  # other hosts a redirect led to: their robots.txt

    def __post_init__(self) -> None:
        self.ua_token = self.cfg.robots_token
        self.delay = self.cfg.delay_seconds

    # -- politeness ------------------------------------------------------------------------

    def _wait_turn(self) -> None:
        """Sleep until ``delay`` has passed since the start of the previous request, and any Retry-After with it."""
        due = self.not_before if self.last_start is None else max(self.not_before, self.last_start + self.delay)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last_start = time.monotonic()

    def _note_busy(self, ex: _Exchange) -> float | None:
        """A 429 or 503 with ``Retry-After``: the host's next request waits that long (at most MAX_WAIT_SECONDS).
        The wait asked for, or None when the answer asks for none."""
        if ex.status not in _BUSY_STATUSES:
            return None
        wait = retry_after_seconds(ex.header("Retry-After"))
        if wait is not None:
            self.not_before = max(self.not_before, time.monotonic() + min(wait, MAX_WAIT_SECONDS))
        return wait

    def _robots_allows(self, url: str) -> bool:
        if not self.cfg.respect_robots:
            return True
        if self.robots.disallow_all:
            return False
        parser = self.robots.parser
        return parser is None or parser.can_fetch(url, self.ua_token)

    def _host_of(self, url: str) -> _HostCrawl:
        """Who fetches ``url``: this host, or another one a redirect leads to, with its own robots.txt (fetched
        once, the first time) and its own gap between requests. A redirect is a new request to its target's
        host, which has its own say (as a browser's or a polite crawler's)."""
        key = _host_key(url)
        if key == self.key:
            return self
        other = self.offsite.get(key)
        if other is None:
            other = _HostCrawl(cfg=self.cfg, counts=self.counts, writer=self.writer, key=key, network=self.network)
            self.offsite[key] = other
            other.load_robots()
        return other

    def load_robots(self) -> None:
        """Fetch and parse /robots.txt (RFC 9309): 4xx allows all, 5xx/429/unreachable disallows all."""
        if not self.cfg.respect_robots:
            return
        url = f"{self.key}/robots.txt"
        ex = self.fetch_chain(_normalize(url) or url, robots=True)  # fetch errors are counted there: None
        why = _robots_unreachable(ex)
        if why is not None:
            self.robots = _Robots(disallow_all=True)
            self.counts.event("robots_unreachable")
            log.warning("robots.txt of %s unreachable (%s): not crawling the host", self.key, why)
            return
        assert ex is not None
        if ex.status in _REDIRECT_STATUSES or ex.status >= 400:
            self.counts.event("robots_missing")
            log.info("robots.txt of %s unavailable (HTTP %d): all allowed", self.key, ex.status)
            return
        rules = parse_rules(ex.body.decode("utf-8", errors="replace"))
        delay = rules.crawl_delay(self.ua_token)
        if delay is not None and delay > MAX_WAIT_SECONDS:
            self.robots = _Robots(disallow_all=True)
            self.counts.event("crawl_delay_too_long")
            log.warning("robots.txt of %s asks for Crawl-delay %s s, over %s s: not crawling the host",
                        self.key, delay, MAX_WAIT_SECONDS)
            return
        self.robots = _Robots(parser=rules)
        if delay is not None and float(delay) > self.delay:
            log.info("%s: robots.txt Crawl-delay %s s replaces delay_seconds %s s", self.key, delay, self.delay)
            self.delay = float(delay)

    # -- fetching --------------------------------------------------------------------------

    def _checked_ip(self, url: str) -> str:
        """Resolve the URL's host and return the address to pin, refusing if ANY resolved
        address is not allowed (a host that also resolves to 10.x is treated as hostile)."""
        origin = split_origin(url)
        if origin is None:
            raise _Refused("non_http_url", f"not an http(s) URL: {url}")
        _, host, port = origin
        literal = host_refusal(host, self.network)
        if literal is not None:
            raise _Refused("address_refused", f"{host} is a refused address ({literal})")
        try:
            infos = getaddrinfo_within(host, port, self.cfg.connect_timeout)
        except LookupTimeoutError as exc:
            raise _Refused("dns_timeout", f"cannot resolve {host}: {exc}") from exc
        except (socket.gaierror, UnicodeError) as exc:
            raise _Refused("dns_error", f"cannot resolve {host}: {exc}") from exc
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips:
            raise _Refused("dns_error", f"no address for {host}")
        bad = [ip for ip in ips if not address_allowed(ip, self.network)]
        if bad:
            raise _Refused("address_refused", f"{host} resolves to a refused address {bad[0]}")
        return ips[0]

    def _fetch_one(self, url: str, ip: str, *, robots: bool = False) -> _Exchange | None:
        """One GET to ``ip`` for ``url``: no redirects followed, body decoded and capped (a robots.txt at
        max_page_bytes or ROBOTS_MIN_BYTES, whichever is larger)."""
        cfg = self.cfg
        self._wait_turn()
        date = datetime.now(timezone.utc)
        headers = {
            "User-Agent": cfg.user_agent_header,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "Connection": "close",  # every fetch has its own pinned connection; don't hold the server's
        }
        with _Watchdog(cfg.total_timeout) as dog, _pinned_session(ip, dog.register) as session:
            try:
                resp = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(cfg.connect_timeout, cfg.read_timeout))
            except requests.Timeout:
                self.counts.event("fetch_timeout")
                log.info("timeout before response headers: %s", url)
                return None
            except requests.RequestException as exc:
                self.counts.event("fetch_timeout" if dog.fired else "fetch_error")
                log.info("fetch failed%s: %s (%s)", " (total_timeout)" if dog.fired else "", url, exc)
                return None
            if dog.fired:  # headers cut off mid-way would be stored as if complete
                resp.close()
                self.counts.event("fetch_timeout")
                log.info("total_timeout=%ss passed before the response headers were in: %s", cfg.total_timeout, url)
                return None
            try:
                body, truncated = self._read_body(resp, dog, redirect=resp.status_code in _REDIRECT_STATUSES,
                                                  robots=robots)
            finally:
                resp.close()
        raw = resp.raw
        version = {9: "HTTP/0.9", 10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}.get(getattr(raw, "version", 11),
                                                                                      "HTTP/1.1")
        return _Exchange(url=url, ip=ip, date=date, request=resp.request, status=resp.status_code,
                         reason=resp.reason or "", http_version=version, headers=list(raw.headers.items()),
                         body=body, truncated=truncated)

    def _read_body(self, resp: requests.Response, dog: _Watchdog, *, redirect: bool = False, robots: bool = False
                   ) -> tuple[bytes, str | None]:
        """The decoded body up to max_page_bytes (a redirect's up to REDIRECT_BODY_BYTES: nobody needs it, and a
        hostile one can be endless); the reason it was cut short, if it was."""
        limit = self.cfg.max_page_bytes
        if redirect:
            limit = REDIRECT_BODY_BYTES
        elif robots:
            limit = max(limit, ROBOTS_MIN_BYTES)
        chunks: list[bytes] = []
        size = 0
        truncated: str | None = None
        try:
            while True:
                chunk = resp.raw.read1(min(_READ_CHUNK, limit - size + 1), decode_content=True)
                if not chunk:
                    if dog.fired:
                        truncated = "time"
                    break
                if size + len(chunk) > limit:
                    chunks.append(chunk[: limit - size])
                    size = limit
                    truncated = "length"
                    break
                chunks.append(chunk)
                size += len(chunk)
                if dog.fired:
                    truncated = "time"
                    break
        except urllib3.exceptions.DecodeError:
            raise  # a broken gzip/br body is not a short body: nothing trustworthy to store
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            timed_out = dog.fired or isinstance(exc, urllib3.exceptions.ReadTimeoutError)
            truncated = "time" if timed_out else "disconnect"
            log.info("body of %s cut short (%s): %s", resp.url, truncated, exc)
        if truncated == "length":
            self.counts.event("redirect_body_truncated" if redirect else "body_truncated")
            log.info("body of %s cut at %d bytes", resp.url, limit)
        elif truncated == "time":
            self.counts.event("fetch_timeout")
            log.info("body of %s cut at total_timeout=%ss after %d bytes", resp.url, self.cfg.total_timeout, size)
        elif truncated == "disconnect":
            self.counts.event("body_disconnected")
        return b"".join(chunks), truncated

    def fetch_chain(self, url: str, *, robots: bool = False) -> _Exchange | None:
        """Fetch ``url`` following at most max_redirects redirects by hand, re-checking every
        hop (scheme, address, the robots.txt of the hop's host) and writing every response. Returns the last
        exchange (a 3xx when the chain was stopped), or None when nothing was fetched."""
        chain: list[str] = []
        last: _Exchange | None = None
        current = url
        while True:
            hop = bool(chain)
            try:
                ip = self._checked_ip(current)
                host = self if robots or not hop else self._host_of(current)
                if not host._robots_allows(current):
                    raise _Refused("robots_disallowed", f"robots.txt disallows redirect target {current}")
            except _Refused as exc:
                self.counts.event(exc.event)
                if hop:
                    self.counts.event("redirect_refused")
                log.warning("refused %s%s: %s", "redirect " if hop else "", current, exc)
                return _hop_failed(last)
            if hop and _host_key(current) != self.key:
                self.counts.event("redirect_offsite")  # followed (address-checked), its links are not
            chain.append(current)
            self.visited.add(current)
            try:
                ex = host._fetch_one(current, ip, robots=robots)
            except Exception as exc:  # e.g. a body that fails to decompress: this URL is lost, the crawl is not
                self.counts.event("fetch_error")
                log.warning("error fetching %s: %s: %s", current, type(exc).__name__, exc,
                            exc_info=log.isEnabledFor(logging.DEBUG))
                return _hop_failed(last)
            if ex is None:
                return _hop_failed(last)
            try:
                self._write(ex)
            except OSError as exc:
                raise _WarcWriteFailed(f"cannot write the WARC record of {current}: {exc}") from exc
            self.counts.event("robots_fetched" if robots else "pages_fetched")
            self.counts.event(f"http_status_{ex.status // 100}xx")
            host._note_busy(ex)
            last = ex
            if ex.status not in _REDIRECT_STATUSES:
                return ex
            location = ex.header("Location")
            if not location:
                self.counts.event("redirect_without_location")
                return ex
            target = _normalize(resolve(location, current) or "")
            if target is None:
                self.counts.event("redirect_refused")
                log.warning("refused redirect from %s to non-http(s) %r", current, location)
                return ex
            if target in chain:
                self.counts.event("redirect_loop")
                log.info("redirect loop at %s -> %s", current, target)
                return ex
            if len(chain) > self.cfg.max_redirects:
                self.counts.event("too_many_redirects")
                log.info("more than %d redirects from %s", self.cfg.max_redirects, url)
                return ex
            if not robots and target in self.visited:
                self.counts.event("redirect_to_visited")
                return ex
            self.counts.event("redirects_followed")
            current = target

    # -- WARC ------------------------------------------------------------------------------

    def _write(self, ex: _Exchange) -> None:
        """Request and response records of one exchange; the response keeps the real status
        line and headers, but wire-level headers are renamed since the body is stored decoded."""
        resp_headers: list[tuple[str, str]] = []
        for name, value in ex.headers:
            if name.lower() in _RENAMED_HEADERS:
                name = "X-Crawler-" + "-".join(p.capitalize() for p in name.split("-"))
            resp_headers.append((name, value))
        resp_headers.append(("Content-Length", str(len(ex.body))))
        statusline = f"{ex.status} {ex.reason}".strip()
        http_headers = StatusAndHeaders(statusline, resp_headers, protocol=ex.http_version)
        warc_date = datetime_to_iso_date(ex.date)
        warc_headers = {"WARC-Date": warc_date, "WARC-IP-Address": ex.ip}
        if ex.truncated:
            warc_headers["WARC-Truncated"] = ex.truncated
        response = self.writer.create_warc_record(ex.url, "response", payload=BytesIO(ex.body), length=len(ex.body),
                                                  http_headers=http_headers, warc_headers_dict=warc_headers)

        req = ex.request
        parts = urlsplit(ex.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        req_headers = [("Host", parts.netloc)] + [(k, v) for k, v in req.headers.items()]
        req_http = StatusAndHeaders(f"{req.method or 'GET'} {path} HTTP/1.1", req_headers, is_http_request=True)
        request = self.writer.create_warc_record(
            ex.url, "request", payload=BytesIO(b""), length=0, http_headers=req_http,
            warc_headers_dict={"WARC-Date": warc_date, "WARC-IP-Address": ex.ip,
                               "WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID")},
        )
        self.writer.write_record(request)
        self.writer.write_record(response)

    # -- links -----------------------------------------------------------------------------

    def links(self, ex: _Exchange) -> list[str]:
        """Same-host ``<a href>`` targets of an HTML page, resolved against ``<base href>``,
        fragments dropped (parsed with Lexbor: regexes miss comments, scripts and odd quoting)."""
        ctype = ex.header("Content-Type")
        charset = None
        if ctype and "charset=" in ctype.lower():
            charset = ctype.lower().split("charset=", 1)[1].split(";", 1)[0].strip().strip("\"'") or None
        html, encoding = decode_page(ex.body, charset, self.counts)
        tree = LexborHTMLParser(html)
        codec = query_codec(encoding)  # a legacy page's links write their queries in its encoding
        base = ex.url
        base_node = tree.css_first("base[href]")
        if base_node is not None:
            base = resolve(base_node.attributes.get("href") or "", ex.url, codec) or ex.url
        out: list[str] = []
        for node in tree.css("a[href]"):
            href = (node.attributes.get("href") or "").strip()
            if not href or href.startswith("#"):
                continue
            target = _normalize(resolve(href, base, codec) or "")
            if target is None:
                continue
            if _host_key(target) != self.key:
                self.counts.event("links_offsite")
                continue
            out.append(target)
        return out

    # -- the crawl -------------------------------------------------------------------------

    def _after_busy(self, ex: _Exchange, url: str, retried: set[str]) -> str:
        """What a 429 or 503 answer to ``url`` leads to: "retry" (once, after its Retry-After, which
        :meth:`_wait_turn` keeps), "stop" (it asks for more than MAX_WAIT_SECONDS: the host is left) or "next"
        (no Retry-After: the page is lost, counted by its status). A page still busy when asked again leaves
        the host too (``retry_failed``): waiting once per page, a busy host of 1,000 pages would hold the crawl
        for 1,000 Retry-Afters."""
        wait = retry_after_seconds(ex.header("Retry-After"))
        if url in retried:  # asked again after its wait, and busy still
            self.counts.event("retry_failed")
            if _host_key(ex.url) != self.key:  # a redirect's target host is busy, not this one
                return "next"
            log.warning("%s is still busy after waiting out its Retry-After: leaving the host", self.key)
            return "stop"
        if wait is None:
            return "next"
        if wait > MAX_WAIT_SECONDS:
            self.counts.event("retry_after_too_long")
            if _host_key(ex.url) != self.key:  # a redirect's target host is busy, not this one
                return "next"
            log.warning("%s asks to wait %.0f s (Retry-After), over %s s: leaving the host", self.key, wait,
                        MAX_WAIT_SECONDS)
            return "stop"
        retried.add(url)
        self.visited.discard(url)
        self.visited.discard(ex.url)
        self.counts.event("retry_after_waits")
        log.info("%s answered %d: asking again in %.1f s", url, ex.status, wait)
        return "retry"

    def run(self, seeds: list[str]) -> None:
        """Breadth-first crawl from the seeds within depth and page budget."""
        self.load_robots()
        if self.cfg.respect_robots and self.robots.disallow_all:
            return
        budget = self.cfg.max_pages_per_host
        frontier_cap = max(budget * _FRONTIER_FACTOR, budget + 100)
        queue: deque[tuple[str, int]] = deque((s, 0) for s in seeds)
        queued: set[str] = set(seeds)
        retried: set[str] = set()
        pages = 0
        while queue:
            if pages >= budget:
                self.counts.event("page_budget_reached")
                log.info("%s: page budget %d reached, %d URLs left", self.key, budget, len(queue))
                break
            url, depth = queue.popleft()
            if url in self.visited:
                continue
            if not self._robots_allows(url):
                self.counts.event("robots_disallowed")
                log.info("robots.txt disallows %s", url)
                continue
            pages += 1
            try:
                ex = self.fetch_chain(url)
                if ex is not None and ex.status in _BUSY_STATUSES:
                    action = self._after_busy(ex, url, retried)
                    if action == "stop":
                        break
                    if action == "retry":
                        pages -= 1  # the same page, asked again once the host is ready
                        queue.appendleft((url, depth))
                        continue
                if ex is None or ex.status != 200:
                    continue
                if not is_html(ex.header("Content-Type"), ex.body[:1024]):
                    self.counts.event("non_html_pages")  # stored, but no links to follow
                    continue
                if depth >= self.cfg.max_depth:
                    continue
                for link in self.links(ex):
                    if link in queued or link in self.visited:
                        continue
                    if len(queued) >= frontier_cap:
                        self.counts.event("frontier_full")
                        break
                    queued.add(link)
                    queue.append((link, depth + 1))
                    self.counts.event("links_queued")
            except _WarcWriteFailed:
                raise
            except Exception:  # one bad page must not end the host's crawl
                self.counts.event("fetch_error")
                log.exception("error crawling %s", url)


def crawl_host(seeds: list[str], cfg: CrawlConfig, warc_path: str, counts: StageCounts,
               network: NetworkConfig | None = None) -> None:
    """Crawl one host starting from seeds (all on that host), same-host links up to cfg.max_depth hops and
    cfg.max_pages_per_host pages, writing a gzip WARC (warcinfo, then request+response records per fetch) to
    warc_path (written to warc_path + '.tmp' then os.replace, so a killed crawl never leaves a half file under
    the final name). ``network`` is the build's address policy (default: public addresses only)."""
    network = network if network is not None else NetworkConfig()
    groups = group_seeds_by_host(seeds)
    if len(groups) != 1:
        raise ValueError(f"crawl_host needs seeds of exactly one host, got {sorted(groups) or 'none'}")
    (key, host_seeds), = groups.items()
    allow_networks(tuple(network.allow_addresses))  # a bad allow entry fails here, before any file is opened
    parent = os.path.dirname(warc_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = warc_path + ".tmp"
    started = time.monotonic()
    try:
        with open(tmp, "wb") as f:
            writer = WARCWriter(f, gzip=True)
            writer.write_record(writer.create_warcinfo_record(os.path.basename(warc_path), {
                "software": f"witbuild/{__version__} (requests {requests.__version__})",
                "format": "WARC File Format 1.0",
                "http-header-user-agent": cfg.user_agent_header,
                "robots": "classic" if cfg.respect_robots else "ignore",
                "description": f"live crawl of {key}",
            }))
            _HostCrawl(cfg=cfg, counts=counts, writer=writer, key=key, network=network).run(host_seeds)
        os.replace(tmp, warc_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    counts.event("hosts_crawled")
    log.info("crawled %s in %.1fs -> %s", key, time.monotonic() - started, warc_path)
