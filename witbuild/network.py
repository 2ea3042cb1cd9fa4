"""One network policy for the whole build: which addresses the crawl and the download stage may reach.

Every URL we fetch was written by a stranger, so a page can name ``http://169.254.169.254/`` (cloud
metadata), ``http://10.0.0.5/admin`` or ``http://2130706433/`` (127.0.0.1 spelled as one number). The
policy refuses loopback, private, link-local, carrier-grade NAT, multicast, unspecified/broadcast,
reserved and unique-local addresses, and IPv6 forms that embed a refused IPv4 address, unless an entry of
``network.allow_addresses`` names them. It is enforced twice:

- before any request, on the URL's literal host (:func:`host_refusal`, no DNS): numeric hosts are parsed
  the way resolvers (``inet_aton``) and browsers read them, so no spelling of a refused address slips by;
- at connect time, on the addresses a name really resolves to (:func:`guarded_create_connection`): a
  public-looking name that resolves to 10.x (DNS rebinding), or a redirect to a refused address, is
  stopped at the socket, and the connection goes to the address that was checked, never to a second
  resolution.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import io
import ipaddress
import re
import socket
import threading
import time
import unicodedata
import urllib.error
import urllib.request
import urllib.response
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from itertools import zip_longest
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from witbuild import layout
from witbuild.keepalive import KeptConnections, stale
from witbuild.per_process import PerProcess
from witbuild.resolver import getaddrinfo_within

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The drop reason (funnel) and error class (img2dataset's error_message) of a refused address.
BLOCKED_ADDRESS = layout.BLOCKED_ADDRESS
#: Names every resolver maps to loopback: judged as 127.0.0.1 whatever DNS says.
LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
#: The most of a redirect's body that is read (only a body declared that short; any other is not read at all).
REDIRECT_BODY_BYTES = 4096
#: The most addresses of one name a connection is tried on, one after another (each within the read timeout and
#: the exchange's deadline): a name can list dozens of addresses that never answer.
MAX_CONNECT_ADDRESSES = 4

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Dots that IDNA (and so the resolver) reads as '.': ideographic, fullwidth and halfwidth full stops.
_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_HEX_PART = re.compile(r"0x[0-9a-f]*\Z")


class NetworkConfig(BaseModel):
    """The ``network:`` section: addresses the build may reach although they are not public."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    allow_addresses: list[str] = Field(
        default_factory=list,
        description="IPs or CIDRs that the crawl and the download stage may reach although loopback, private, "
        "link-local, CGNAT, multicast or reserved (e.g. ['127.0.0.1'] for a local test site, ['10.1.2.0/24'] "
        "for an on-premise image mirror). Empty: only public addresses.",
    )

    @field_validator("allow_addresses")
    @classmethod
    def _valid_entries(cls, v: list[str]) -> list[str]:
        allow_networks(tuple(v))  # a bad entry is a config error here, not a silent no-op later
        return v


Policy = NetworkConfig | Sequence[str]


def allow_tuple(policy: Policy) -> tuple[str, ...]:
    if isinstance(policy, NetworkConfig):
        return tuple(policy.allow_addresses)
    if isinstance(policy, str):
        raise TypeError("policy: a NetworkConfig or a list of IPs/CIDRs, not one string")
    return tuple(policy)


@lru_cache(maxsize=64)
def allow_networks(allow: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The allow list parsed once; a bad entry is a configuration error, not a silent no-op."""
    nets = []
    for entry in allow:
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"allow_addresses: {entry!r} is not an IP address or CIDR") from exc
    return tuple(nets)


def effective_addresses(addr: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``addr`` really reaches, all of which must be acceptable.

    IPv4-mapped, IPv4-compatible and NAT64 addresses are judged by the IPv4 address they stand for
    (Python's flags call every ``::ffff:a.b.c.d`` reserved); 6to4 and Teredo by both the outer and the
    embedded address, so ``2002:0a00:0001::`` cannot smuggle in 10.0.0.1 (the embedded one first, so that
    a refusal names it).
    """
    if isinstance(addr, ipaddress.IPv4Address):
        return [addr]
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr in _NAT64:
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    if addr in _IPV4_COMPATIBLE and int(addr) > 1:  # ::a.b.c.d (deprecated); :: and ::1 are themselves
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), addr]
    if addr.sixtofour is not None:
        return [addr.sixtofour, addr]
    if addr.teredo is not None:
        return [addr.teredo[1], addr]
    return [addr]


def _range_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` (one address, no embedding) is not public; None when it is."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"):
        return "unique_local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:  # fec0::/10: deprecated, still routed inside
        return "site_local"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # documentation, benchmarking and other special-purpose ranges
        return "not_global"
    return None


def address_refusal(ip: str | IPAddress, policy: Policy = ()) -> str | None:
    """Why the build may not connect to ``ip`` (e.g. ``'loopback'``), or None when it may: public addresses
    yes; the others only inside an entry of the policy's allow list. Unparseable input is refused."""
    try:
        addr = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else \
            ipaddress.ip_address(str(ip).strip().split("%", 1)[0])  # an IPv6 zone id does not change the address
    except ValueError:
        return "not_an_address"
    effective = effective_addresses(addr)
    nets = allow_networks(allow_tuple(policy))
    if any(a.version == net.version and a in net for a in (addr, *effective) for net in nets):
        return None
    for a in effective:
        reason = _range_refusal(a)
        if reason is not None:
            return reason
    return None


def address_allowed(ip: str | IPAddress, policy: Policy = ()) -> bool:
    """Whether the build may connect to ``ip`` under ``policy`` (a NetworkConfig or an allow list)."""
    return address_refusal(ip, policy) is None


def _ipv4_part(part: str) -> int | None:
    """One dotted part as ``inet_aton`` reads it: 0x.. hex, 0.. octal, else decimal; None if invalid."""
    if _HEX_PART.match(part):
        return int(part[2:], 16) if len(part) > 2 else 0
    if not part.isascii() or not part.isdigit():
        return None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host stands for, in every spelling resolvers accept: ``2130706433``,
    ``0177.0.0.1``, ``0x7f.0.0.1``, ``127.1``. None when the host is a name (its last label is not a
    number). A host whose last label is a number but that is no valid address raises ValueError (the
    WHATWG URL rule: such a host is never a name)."""
    parts = host.split(".")
    last = parts[-1]
    if not (_HEX_PART.match(last) or (last.isascii() and last.isdigit())):
        return None
    values = [_ipv4_part(p) for p in parts]
    if len(parts) > 4 or any(v is None for v in values):
        raise ValueError(f"{host!r} is numeric but not an IPv4 address")
    nums = [v for v in values if v is not None]
    if any(v > 255 for v in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise ValueError(f"{host!r} is out of the IPv4 range")
    value = nums[-1]
    for i, v in enumerate(nums[:-1]):
        value += v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def normalize_host(host: str) -> str:
    """The host as the resolver will see it: IDNA's full stops and fullwidth digits folded (NFKC), lower
    case, no brackets, no trailing dots."""
    h = unicodedata.normalize("NFKC", host.translate(_IDNA_DOTS)).strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    return h.rstrip(".")


@lru_cache(maxsize=65536)
def _host_refusal(host: str, allow: tuple[str, ...]) -> str | None:
    h = normalize_host(host)
    if not h:
        return "no_host"
    if h in LOCALHOST_NAMES or h.endswith(".localhost"):
        return None if address_allowed("127.0.0.1", allow) else "localhost_name"
    if ":" in h:
        try:
            addr: IPAddress = ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            return "invalid_ipv6_host"
        return address_refusal(addr, allow)
    try:
        v4 = numeric_ipv4(h)
    except ValueError:
        return "invalid_numeric_host"
    return None if v4 is None else address_refusal(v4, allow)


def host_refusal(host: str, policy: Policy = ()) -> str | None:
    """Why a URL host may not be fetched, from the host alone (no DNS): a literal address outside the
    policy in any spelling, ``localhost`` names, a numeric host that is no valid address. None for names
    (they are checked again on the resolved addresses at connect time) and allowed addresses."""
    return _host_refusal(host, allow_tuple(policy))


def url_refusal(url: str | None, policy: Policy = ()) -> str | None:
    """:func:`host_refusal` of a URL's host; a URL without a host (or unparseable) is refused, and so is one whose
    authority parsers read differently: a backslash (a path separator to browsers and many proxies, so
    ``http://10.0.0.1\\@a.example/``) or a percent-escape in the host (urllib decodes ``169.254.169.%32%35%34``
    before it connects, or hands it to a proxy, while ``urlsplit`` sees a name). Without a proxy the
    connect-time check covers whatever host urllib finally connects to; with one this is the only check."""
    if not url:
        return "no_host"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return "unparseable_url"
    if not host:
        return "no_host"
    if "\\" in parts.netloc:
        return "backslash_in_authority"
    if "%" in host:
        return "escaped_host"
    if (reason := host_refusal(host, policy)) is not None:
        return reason
    if "@" in parts.netloc:  # credentials in an image URL: browsers refuse such subresource requests too
        return "userinfo_in_url"
    return None


# ------------------------------------------------------------------------------------------- connect time


class BlockedAddressError(ConnectionError):
    """A connection the network policy refuses; its message starts with 'blocked address' so that the
    download stage's error classes count it as ``blocked_address``."""


def checked_addresses(host: str, port: int, policy: Policy = (), timeout: float | None = None
                      ) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` results for (host, port), all of them allowed; BlockedAddressError if the host is
    refused literally or ANY resolved address is refused (a host that also resolves to 10.x is hostile).
    ``timeout``: seconds the lookup may take (:func:`witbuild.resolver.getaddrinfo_within`)."""
    allow = allow_tuple(policy)
    reason = host_refusal(host, allow)
    if reason is not None:
        raise BlockedAddressError(f"blocked address: host {host} refused ({reason}); see network.allow_addresses")
    infos = getaddrinfo_within(host, port, timeout)
    for info in infos:
        ip = str(info[4][0])
        reason = address_refusal(ip, allow)
        if reason is not None:
            raise BlockedAddressError(f"blocked address: {host} resolves to {ip} ({reason}); "
                                      "see network.allow_addresses")
    return infos


def guarded_create_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                              source_address: tuple[str, int] | None = None, *, allow: tuple[str, ...] = (),
                              deadline: Deadline | None = None, **_: Any) -> socket.socket:
    """``socket.create_connection`` that connects only to addresses the policy allows: it resolves once,
    checks every address, and connects to a checked sockaddr (no second lookup a rebinding DNS could
    answer differently). The lookup, and each connect, takes at most ``timeout`` seconds and never runs past
    ``deadline``; at most :data:`MAX_CONNECT_ADDRESSES` addresses are tried, so a name with many addresses that
    never answer costs no more than that many timeouts."""
    host, port = address
    limit = None if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout  # type: ignore[attr-defined]
    infos = checked_addresses(host, port, allow, _time_left(limit, deadline))
    error: OSError | None = None
    for af, socktype, proto, _canon, sa in _interleaved(infos)[:MAX_CONNECT_ADDRESSES]:
        left = _time_left(limit, deadline)
        if left is not None and left <= 0:
            raise TimeoutError(f"timed out connecting to {host} (total timeout)") from error
        sock = None
        try:
            sock = socket.socket(af, socktype, proto)
            if source_address:
                sock.bind(source_address)
            sock.settimeout(left if left is not None else socket.getdefaulttimeout())
            sock.connect(sa)
            sock.settimeout(limit if limit is not None else socket.getdefaulttimeout())  # reads: the read timeout
            return sock
        except OSError as exc:
            error = exc
            if sock is not None:
                sock.close()
    raise error if error is not None else OSError(f"getaddrinfo returned no address for {host}")


def _interleaved(infos: list) -> list:
    """Addresses in the resolver's order, families taking turns (as RFC 8305 orders them): with IPv6 unroutable
    here, a name's first IPv4 address is still among the few tried."""
    by_family: dict[int, list] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    return [info for turn in zip_longest(*lists) for info in turn if info is not None]


def _time_left(limit: float | None, deadline: Deadline | None) -> float | None:
    """Seconds one step (a lookup, a connect) may take: its own ``limit``, cut to what is left before ``deadline``;
    None: no limit."""
    if deadline is None:
        return limit
    left = deadline.at - time.monotonic()
    return left if limit is None else min(limit, left)


class Deadline:
    """When one exchange (a request and its redirect hops) must be over; ``fired`` once its socket was shut
    down for it. ``span``: the total timeout it was given, which files it in the watch's queue for that span."""

    __slots__ = ("at", "fired", "queued", "sock", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self.at = time.monotonic() + span
        self.fired = False
        self.queued = False
        self.sock: weakref.ref[socket.socket] | None = None

    def passed(self) -> bool:
        """Whether the exchange ran into its deadline: a reader woken by the shut socket may look before the watch
        has said so, so the clock counts too."""
        return self.fired or time.monotonic() >= self.at


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _DeadlineWatch:
    """One thread per process that shuts an exchange's current socket down at its deadline, which wakes a reader
    blocked on it: a server that drips a byte per read timeout never trips the read timeout itself.

    Images come hundreds a second from dozens of threads, so registering must cost next to nothing: deadlines
    of one span arrive in the order they end, so each span has a FIFO (appending is O(1), and wakes the thread
    only when that FIFO was empty), and the thread wakes at most every ``GRAIN`` seconds, taking everything due
    by then at once. A deadline may so fire up to ``GRAIN`` late."""

    GRAIN = 0.02

    def __init__(self) -> None:
        self._queues: dict[float, collections.deque[Deadline]] = {}
        self._cond = threading.Condition(threading.Lock())
        threading.Thread(target=self._run, name="witbuild-deadlines", daemon=True).start()

    def watch(self, sock: socket.socket, deadline: Deadline) -> None:
        """Puts ``sock`` under ``deadline``; a redirect hop's socket replaces the previous hop's, under the same
        deadline, queued once."""
        deadline.sock = weakref.ref(sock)
        if deadline.queued:
            if deadline.passed():  # the hop connected after the deadline fired for the previous one
                _shut(sock)
            return
        deadline.queued = True
        with self._cond:
            queue = self._queues.get(deadline.span)
            if queue is None:
                queue = self._queues[deadline.span] = collections.deque()
            queue.append(deadline)
            if len(queue) == 1:
                self._cond.notify()

    def _due(self) -> list[Deadline]:
        """Waits until some deadline is due, then takes every one due by now from the front of each FIFO."""
        with self._cond:
            while True:
                now = time.monotonic()
                heads = [queue[0].at for queue in self._queues.values() if queue]
                if heads and min(heads) <= now:
                    due = []
                    for queue in self._queues.values():
                        while queue and queue[0].at <= now:
                            due.append(queue.popleft())
                    return due
                self._cond.wait(min(heads) - now if heads else None)

    def _run(self) -> None:
        while True:
            for deadline in self._due():
                deadline.fired = True  # before the shutdown wakes the reader
                sock = deadline.sock() if deadline.sock is not None else None
                if sock is not None and sock.fileno() >= 0:  # else the exchange ended and its socket is closed
                    _shut(sock)
            time.sleep(self.GRAIN)


_watch = PerProcess(_DeadlineWatch)  # a forked child starts its own: the parent's thread is not in it


class _GuardedConnectionMixin:
    """Connects through :func:`guarded_create_connection` and puts the socket (the TLS one for https) under
    the request's deadline, if it has one."""

    sock: socket.socket | None

    def _guard(self, allow: tuple[str, ...], deadline: Deadline | None) -> None:
        self._create_connection = self._guarded_create_connection
        self.allow = allow
        self.deadline = deadline

    def _guarded_create_connection(self, address: tuple[str, int], *args: Any, **kw: Any) -> socket.socket:
        return guarded_create_connection(address, *args, allow=self.allow, deadline=self.deadline, **kw)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.deadline is not None and self.sock is not None:
            _watch.get().watch(self.sock, self.deadline)


class _GuardedHTTPConnection(_GuardedConnectionMixin, http.client.HTTPConnection):
    def __init__(self, *args: Any, allow: tuple[str, ...] = (), deadline: Deadline | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._guard(allow, deadline)


class _GuardedHTTPSConnection(_GuardedConnectionMixin, http.client.HTTPSConnection):
    def __init__(self, *args: Any, allow: tuple[str, ...] = (), deadline: Deadline | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._guard(allow, deadline)


class TotalTimeoutError(TimeoutError):
    """An exchange cut off at its deadline; the message says 'timed out' (error class timeout)."""


def request_deadline(request: urllib.request.Request) -> Deadline | None:
    """The deadline :class:`_RequestCheck` gave the request (and its redirect hops), if any."""
    return getattr(request, "witbuild_deadline", None)


def _through_proxy(request: urllib.request.Request) -> bool:
    """Whether ``request`` goes through a proxy: http as an absolute URL (``has_proxy``), https through a CONNECT
    tunnel, which ``has_proxy`` does not report and only urllib's own ``do_open`` sets up."""
    return request.has_proxy() or getattr(request, "_tunnel_host", None) is not None


def _open_guarded(handler: _KeepAliveMixin, connection: type, request: urllib.request.Request,
                  allow: tuple[str, ...], **kw: Any) -> http.client.HTTPResponse:
    deadline = request_deadline(request)
    try:
        if request.get_method() in ("GET", "HEAD") and not _through_proxy(request):
            response = handler.open_kept(partial(connection, allow=allow, deadline=deadline), request, **kw)
        else:
            response = handler.do_open(partial(connection, allow=allow, deadline=deadline), request, **kw)  # type: ignore[attr-defined]
    except OSError as exc:  # urllib's URLError too: a cut-off exchange says so, not "connection reset"
        if deadline is not None and deadline.passed():
            raise TotalTimeoutError(f"timed out: no answer from {request.host} within the total timeout") from exc
        raise
    if deadline is not None and deadline.passed():  # headers cut off mid-way read as if they had ended there
        response.close()
        raise TotalTimeoutError(f"timed out: headers from {request.host} not complete within the total timeout")
    return response


def _released(conn: Any) -> bool:
    """Frees a kept connection from its last exchange's deadline (that exchange is over); False if the deadline has
    fired, when the watch may be shutting the socket. The watch marks a deadline fired before it looks up the
    socket, so once the socket is unset here, a deadline not yet fired can never shut it."""
    last = conn.deadline
    if last is None:
        return True
    last.sock = None
    return not last.fired


def _rearm(conn: Any, deadline: Deadline | None, timeout: Any) -> None:
    """Puts a kept connection under the next exchange's deadline and read timeout."""
    conn.deadline = deadline
    if deadline is not None:
        _watch.get().watch(conn.sock, deadline)
    if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT and conn.timeout != timeout:  # type: ignore[attr-defined]
        conn.timeout = timeout
        conn.sock.settimeout(timeout)


class _KeepAliveMixin:
    """urllib's ``do_open`` for GETs, with the connection kept for the thread's next request to the same host
    (:mod:`witbuild.keepalive`); with a proxy, or for other methods, urllib's own ``do_open``."""

    kept: KeptConnections

    def open_kept(self, make: Callable[..., Any], request: urllib.request.Request, **kw: Any
                  ) -> http.client.HTTPResponse:
        if not request.host:
            raise urllib.error.URLError("no host given")
        headers = dict(request.unredirected_hdrs)
        headers.update({k: v for k, v in request.headers.items() if k not in headers})
        headers = {name.title(): value for name, value in headers.items()}
        conn = self.kept.take(request.host, _released)
        if conn is not None:
            _rearm(conn, request_deadline(request), request.timeout)
            try:
                response = _send(conn, request, headers)
            except (OSError, http.client.HTTPException) as exc:
                if not stale(exc) or (conn.deadline is not None and conn.deadline.passed()):
                    raise
                conn = None  # the server closed it while it was kept: once more on a new connection
        if conn is None:
            conn = make(request.host, timeout=request.timeout, **kw)
            response = _send(conn, request, headers)
        self.kept.keep(request.host, conn, response)
        response.witbuild_close_connection = conn.close  # type: ignore[attr-defined]  # a body left unread
        response.url = request.get_full_url()  # type: ignore[attr-defined]
        response.msg = response.reason  # type: ignore[assignment]  # as urllib's do_open: clients read the reason there
        return response

    def close(self) -> None:
        self.kept.close()
        super().close()  # type: ignore[misc]


def _send(conn: http.client.HTTPConnection, request: urllib.request.Request, headers: dict[str, str]
          ) -> http.client.HTTPResponse:
    """One request on ``conn``, as urllib's ``do_open`` sends it (an error sending it is a URLError); the
    connection is closed if it fails."""
    try:
        try:
            conn.request(request.get_method(), request.selector, request.data, headers,
                         encode_chunked=request.has_header("Transfer-encoding"))
        except OSError as err:
            raise urllib.error.URLError(err) from err
        return conn.getresponse()
    except BaseException:
        conn.close()
        raise


class _GuardedHTTPHandler(_KeepAliveMixin, urllib.request.HTTPHandler):
    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__()
        self.allow = allow
        self.kept = KeptConnections()

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return _open_guarded(self, _GuardedHTTPConnection, req, self.allow)


class _GuardedHTTPSHandler(_KeepAliveMixin, urllib.request.HTTPSHandler):
    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__()
        self.allow = allow
        self.kept = KeptConnections()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return _open_guarded(self, _GuardedHTTPSConnection, req, self.allow,
                             context=self._context)  # type: ignore[attr-defined]


class _RequestCheck(urllib.request.BaseHandler):
    """Runs on every request, redirect hops included, before any handler opens a socket: the literal check of
    the URL's host (with a proxy from the environment, the socket goes to the proxy, and this is the only check
    of the host), and the deadline of the whole exchange, which a redirect hop inherits."""

    handler_order = 50  # before every other pre-processor and opener

    def __init__(self, allow: tuple[str, ...], total_timeout: float | None) -> None:
        self.allow = allow
        self.total_timeout = total_timeout

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        reason = url_refusal(request.full_url, self.allow)
        if reason is not None:  # as urllib reports a refusal at the socket
            raise urllib.error.URLError(BlockedAddressError(f"blocked address: {request.host} refused ({reason}); "
                                                            "see network.allow_addresses"))
        if self.total_timeout is not None and request_deadline(request) is None:
            request.witbuild_deadline = Deadline(self.total_timeout)  # type: ignore[attr-defined]
        return request

    https_request = http_request


def discard_redirect_body(response: Any) -> None:
    """Ends a redirect's response without holding its body: one declared within :data:`REDIRECT_BODY_BYTES` is
    read (its connection can carry the next hop), any other is left unread and its connection closed. urllib
    itself would read the whole body, however large, before it follows the redirect."""
    length = getattr(response, "length", None)
    if isinstance(length, int) and length <= REDIRECT_BODY_BYTES and not getattr(response, "chunked", False):
        with contextlib.suppress(OSError, http.client.HTTPException):
            response.read(length)
    response.close()
    if getattr(response, "length", None) != 0:  # not read to its end: the connection is in mid-body
        _drop_connection(response)


def _drop_connection(response: Any) -> None:
    """Closes the connection a response came on, when that connection is kept open for another request."""
    close = getattr(response, "witbuild_close_connection", None)
    if close is not None:
        close()


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, the next hop keeping the first request's deadline; a redirect's body is never read
    beyond a few KiB (:func:`discard_redirect_body`)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        discard_redirect_body(fp)  # before urllib's own fp.read(), which then finds the body ended
        if request_deadline(req) is not None:
            new.witbuild_deadline = request_deadline(req)  # type: ignore[attr-defined]
        return new


class _GuardedOpener(urllib.request.OpenerDirector):
    """An opener whose ``close()`` closes the connections its handlers keep for the calling thread (urllib's
    ``close`` does nothing)."""

    def close(self) -> None:
        for handler in self.handlers:
            handler.close()


def guarded_opener(policy: Policy = (), extra: Sequence[urllib.request.BaseHandler] = (),
                   total_timeout: float | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener whose every request, redirect hops included, goes through the policy: the URL's host
    literally, then every address it resolves to at the socket. Only http and https: ftp, file and data URLs
    (reachable by redirect in urllib's default opener) are not handled at all. ``total_timeout``: seconds the
    whole exchange (connection, headers, redirects; a body read through :class:`BodyLimit`) may take, however
    the server drips its bytes. ``extra`` handlers (e.g. a response processor for opt-out headers) are added
    last."""
    allow = allow_tuple(policy)
    allow_networks(allow)
    opener = _GuardedOpener()
    for handler in (_RequestCheck(allow, total_timeout), urllib.request.ProxyHandler(),
                    urllib.request.UnknownHandler(), _GuardedHTTPHandler(allow), _GuardedHTTPSHandler(allow),
                    urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(), urllib.request.HTTPErrorProcessor(),
                    *extra):
        opener.add_handler(handler)
    return opener


class BodyTooLargeError(OSError):
    """A body over the byte cap; the message says 'body too large' (error class body_too_large)."""


class _DeclaredBody:
    """A response whose body is read as it comes: its Content-Length (checked against the cap) bounds it and the
    deadline's watch cuts it off in time, so no copy is needed. A read cut off at the deadline says so;
    http.client would only say IncompleteRead, or (``read(amt)``) return short without a word."""

    def __init__(self, request: urllib.request.Request, response: http.client.HTTPResponse,
                 deadline: Deadline) -> None:
        self._request = request
        self._response = response
        self._deadline = deadline

    def read(self, amt: int | None = None) -> bytes:
        try:
            data = self._response.read(amt)
        except (OSError, http.client.HTTPException) as exc:
            if self._deadline.passed():
                raise _body_timeout(self._request) from exc
            raise
        if amt and not data and self._response.length:  # read(amt) ends quietly where read() would complain
            if self._deadline.passed():
                raise _body_timeout(self._request)
            raise http.client.IncompleteRead(b"", self._response.length)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def __enter__(self) -> _DeclaredBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self._response.close()


def _body_timeout(request: urllib.request.Request) -> TotalTimeoutError:
    return TotalTimeoutError(f"timed out: body of {request.full_url} not complete within the total timeout")


class BodyLimit(urllib.request.BaseHandler):
    """Keeps a successful response's body within ``max_bytes`` and the request's deadline, refusing a larger or
    slower one, so the handlers after it (and img2dataset's ``r.read()``) never hold more than the cap. A declared
    Content-Length over the cap is refused before any byte is read; one within it is read as it comes
    (:class:`_DeclaredBody`). A body of unknown length is read here, through the cap, and handed on as a replay."""

    handler_order = 600  # after the opt-out check (500): an opted-out body is never read

    def __init__(self, max_bytes: int, chunk: int = 1 << 16) -> None:
        self.max_bytes = max_bytes
        self.chunk = chunk

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        status = getattr(response, "status", None) or response.getcode()
        if getattr(response, "from_cache", False) or not 200 <= status < 300:
            return response
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()
            raise BodyTooLargeError(f"body too large: Content-Length {declared} > {self.max_bytes} bytes")
        if isinstance(response, http.client.HTTPResponse) and not response.chunked and response.length is not None:
            deadline = request_deadline(request)
            return response if deadline is None else _DeclaredBody(request, response, deadline)
        with contextlib.closing(response):
            body = self._read(request, response)
        replay = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, status)
        replay.msg = getattr(response, "reason", "OK")
        return replay

    https_response = http_response

    def _read(self, request: urllib.request.Request, response: Any) -> bytes:
        deadline = request_deadline(request)
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                part = response.read1(self.chunk)
            except (OSError, http.client.HTTPException) as exc:
                if deadline is not None and deadline.passed():
                    raise _body_timeout(request) from exc
                raise
            if not part:  # read1 ends quietly where read() would complain: a short body is no body
                if deadline is not None and deadline.passed():
                    raise _body_timeout(request)
                missing = getattr(response, "length", None)
                if missing:
                    raise http.client.IncompleteRead(b"".join(parts), missing)
                return b"".join(parts)
            size += len(part)
            if size > self.max_bytes:
                raise BodyTooLargeError(f"body too large: over {self.max_bytes} bytes")
            if deadline is not None and time.monotonic() > deadline.at:
                raise _body_timeout(request)
            parts.append(part)


@contextmanager
def guarded_urlopen(policy: Policy = (), extra: Sequence[urllib.request.BaseHandler] = (),
                    total_timeout: float | None = None) -> Iterator[urllib.request.OpenerDirector]:
    """Within the block, ``urllib.request.urlopen`` (what img2dataset's downloader calls from its threads)
    uses :func:`guarded_opener`; the process's previous opener comes back afterwards."""
    previous = urllib.request._opener  # type: ignore[attr-defined]
    opener = guarded_opener(policy, extra, total_timeout)
    urllib.request.install_opener(opener)
    try:
        yield opener
    finally:
        urllib.request.install_opener(previous)
        opener.close()  # this thread's kept connections; the download threads' closed as they ended
