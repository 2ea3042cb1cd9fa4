"""The image hosts' robots.txt (RFC 9309), fetched once per host before the download and applied per URL.

Image URLs point at hosts the crawl never visited, so their robots.txt is fetched here: one request per
distinct origin (scheme, host, port), under the build's network policy (every hop checked at the socket),
with the crawl's timeouts and size cap. The outcome follows RFC 9309 and the crawl's rules:

- 2xx: the rules are parsed with protego (Google's matching: wildcards, ``$``, longest match, ``Allow``);
  a body over the size cap is cut there and what came in is parsed (RFC 9309 asks for at least 500 KiB);
- 4xx (but 429): no rules, everything allowed;
- 5xx, 429, timeouts, refused or failed connections: everything disallowed (``robots_unreachable``).

A URL is allowed only if every product token the image request carries may fetch it: the configured
``download.user_agent_token`` and ``img2dataset`` (its User-Agent names both), so a site that blocks
img2dataset by name is honoured too.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from protego import Protego

from witbuild.layout import ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE
from witbuild.network import Deadline, Policy, guarded_opener, numeric_ipv4, request_deadline
from witbuild.sources.urls import DEFAULT_PORTS, split_origin

log = logging.getLogger(__name__)

#: What a robots.txt fetch came to: rules to apply, none (all allowed), or unreachable (all disallowed).
OK, MISSING, UNREACHABLE = "ok", "missing", "unreachable"
IMG2DATASET_TOKEN = "img2dataset"
CHUNK = 16_384


#: RFC 9309 2.5: a crawler must read at least the first 500 KiB of a robots.txt, whatever its page size cap.
ROBOTS_MIN_BYTES = 500 * 1024


@dataclass(frozen=True)
class RobotsLimits:
    """How long and how much one robots.txt may take (the crawl's settings)."""

    timeout: float = 10.0
    total_timeout: float = 30.0
    max_bytes: int = 5_000_000


@dataclass(frozen=True)
class RobotsAnswer:
    origin: str
    outcome: str  # OK, MISSING or UNREACHABLE
    status: int | None  # the final HTTP status; None when no response came
    body: str  # the robots.txt text (OK only), cut at the size cap
    oversize: bool = False
    error: str = ""


def origin_of(url: str | None) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower case and without the default port; None otherwise.
    robots.txt is per origin (RFC 9309 2.3): ``http://h`` and ``https://h`` and ``h:8080`` each have their own."""
    split = split_origin(url) if url else None
    if split is None:
        return None
    scheme, host, port = split
    if ":" in host:  # IPv6, one spelling per address (::ffff:1.1.1.1 and ::ffff:101:101 are one origin)
        try:
            host = f"[{ipaddress.IPv6Address(host.split('%', 1)[0])}]"
        except ValueError:
            return None
    else:  # one origin for every spelling of a numeric host (2130706433 is 127.0.0.1), as browsers have it
        try:
            v4 = numeric_ipv4(host)
        except ValueError:
            return None
        host = str(v4) if v4 is not None else host
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


def user_agent_string(token: str) -> str:
    """The User-Agent img2dataset sends with ``user_agent_token=token``: robots.txt is fetched as the same agent."""
    ua = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    return f"{ua} (compatible; {token}; +https://github.com/rom1504/img2dataset)" if token else ua


def _read_capped(response: Any, limits: RobotsLimits, deadline: Deadline) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the body, reading as data comes; (body, whether it was cut). The request's
    deadline ends a drip: its socket is shut then, and an end that comes after it is no end of the file."""
    parts: list[bytes] = []
    size = 0
    while size <= limits.max_bytes:
        chunk = b"" if deadline.passed() else response.read1(CHUNK)
        if deadline.passed():
            raise TimeoutError(f"robots.txt body not complete after total_timeout={limits.total_timeout}s")
        if not chunk:
            return b"".join(parts), False
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[: limits.max_bytes], True


def fetch_robots(origin: str, policy: Policy, limits: RobotsLimits, user_agent: str) -> RobotsAnswer:
    """The robots.txt of ``origin`` under the network policy; never raises for what a server does."""
    url = f"{origin}/robots.txt"
    opener = guarded_opener(policy, total_timeout=limits.total_timeout)  # headers, redirects and body
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    try:
        with opener.open(request, timeout=limits.timeout) as response:
            deadline = request_deadline(request)
            assert deadline is not None  # the opener gives every request one
            body, cut = _read_capped(response, limits, deadline)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 429 or exc.code >= 500:
            return RobotsAnswer(origin, UNREACHABLE, exc.code, "", error=f"HTTP {exc.code}")
        return RobotsAnswer(origin, MISSING, exc.code, "")
    except Exception as exc:  # a stranger's server: every other failure means "unreachable"
        reason = getattr(exc, "reason", exc)
        return RobotsAnswer(origin, UNREACHABLE, None, "", error=f"{type(exc).__name__}: {reason}"[:300])
    finally:
        opener.close()  # one file per origin: its kept connection would stay open until garbage collection
    return RobotsAnswer(origin, OK, status, body.decode("utf-8-sig", errors="replace"), oversize=cut)


def fetch_all(origins: Sequence[str], policy: Policy, limits: RobotsLimits, user_agent: str,
              threads: int = 16) -> list[RobotsAnswer]:
    """:func:`fetch_robots` of every origin, ``threads`` at a time, in the order given."""
    if not origins:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(origins)))) as pool:
        return list(pool.map(lambda o: fetch_robots(o, policy, limits, user_agent), origins))


# A group's User-agent value names its product token; a version after it (``witbuild/1.0``, ``witbuild 1.0``)
# is not part of the name (RFC 9309 2.2.1: the name ends at the first character a token cannot hold, ``/``, a space,
# ``;``, ``(``). protego would look for the whole value in the token and never find it, so such a group was
# silently skipped. A digit does not end the name: protego matches a group's name as a prefix of the token, so
# ``W3C-checklink`` cut to ``W`` would be witbuild's group.
_AGENT_LINE = re.compile(r"(?im)^([ \t]*user[ _-]?agent[ \t]*:[ \t]*)([a-z0-9_-]+)[^\r\n#]*")


def parse_rules(body: str) -> Protego:
    """robots.txt text parsed by Google's rules (protego: longest match, ``*`` and ``$``, ``Allow``; blank lines
    and comments do not end a group), each User-agent value read as its product token."""
    return _parsed(body)


@lru_cache(maxsize=4096)
def _parsed(body: str) -> Protego:
    text = _AGENT_LINE.sub(r"\1\2", body.removeprefix("\ufeff"))  # a byte-order mark would hide the first line
    return Protego.parse(text)


def robots_refusal(url: str, outcome: str | None, body: str | None, tokens: Iterable[str]) -> str | None:
    """Why robots.txt forbids ``url`` (a drop reason), or None. ``outcome`` None: robots.txt was not checked
    (the URL had no origin, or robots are off) and nothing is refused here."""
    if outcome is None or outcome == MISSING:
        return None
    if outcome == UNREACHABLE:
        return ROBOTS_UNREACHABLE
    rules = _parsed(body or "")
    if all(rules.can_fetch(url, token) for token in tokens):
        return None
    return ROBOTS_DISALLOWED


def agent_tokens(user_agent_token: str) -> tuple[str, ...]:
    """The product tokens whose robots.txt groups apply to our image requests."""
    token = user_agent_token.strip()
    return tuple(dict.fromkeys(t for t in (token, IMG2DATASET_TOKEN) if t))
