"""Name lookups within a time limit.

``getaddrinfo`` cannot be interrupted, and neither a socket timeout nor the deadline watch reaches it: a resolver
that never answers would hold a download thread (or the crawl) past every timeout of the exchange. Lookups of
names therefore run in daemon threads of their own per process, and the caller waits at most its time limit for
the answer; a numeric address needs no lookup and is parsed in place.

The threads are shared by every download thread and robots.txt fetch of the process, so a page whose image hosts'
DNS never answers must not hold them all: the pool grows while every thread is busy (up to
:data:`MAX_LOOKUP_THREADS`), and the names under one domain have at most :data:`LOOKUPS_PER_DOMAIN` lookups
running or queued at once; the others wait for one of those, within their own time limit.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from witbuild.per_process import PerProcess

#: Lookup threads one process runs at most: more than its download threads (32 by default) and robots.txt
#: fetches (16) together, so that lookups wait on each other only when that many are hung.
MAX_LOOKUP_THREADS = 64
#: Lookups of names under one domain (see :func:`lookup_domain`) running or queued at once: an eighth of the
#: threads, so that names behind one slow DNS server leave the rest to other domains. Without a public suffix list
#: the hosts of a shared service (``*.cloudfront.net``) count as one domain: with a resolver that answers, a
#: lookup holds its slot for milliseconds, and 8 at once is ample.
LOOKUPS_PER_DOMAIN = 8
#: Second-level labels under which, in a two-letter country domain, names are registered (``example.co.uk``).
_SHARED_SECOND_LEVELS = frozenset({"ac", "co", "com", "edu", "go", "gob", "gov", "ne", "net", "or", "org"})

Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], str]


class LookupTimeoutError(TimeoutError):
    """No answer from the resolver in time; the message says 'timed out' (error class timeout)."""


def lookup_domain(host: str) -> str:
    """The domain whose DNS servers answer for ``host``, roughly its registered domain (no public suffix list):
    the last two labels, three under a shared second level such as ``co.uk``. Every name under it is one
    attacker's to make up, so they share one allowance of lookups."""
    labels = host.lower().rstrip(".").split(".")
    shared = len(labels) > 2 and len(labels[-1]) == 2 and labels[-2] in _SHARED_SECOND_LEVELS
    return ".".join(labels[-3:] if shared else labels[-2:])


class _Lookups:
    """Daemon threads that run lookups (one hung in the resolver never keeps the process from exiting), started
    as they are needed, and a count of the lookups of each domain not finished yet."""

    def __init__(self, max_threads: int, per_domain: int) -> None:
        self.max_threads = max_threads
        self.per_domain = per_domain
        self.queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.cond = threading.Condition(threading.Lock())
        self.threads = 0
        self.idle = 0  # threads waiting for a job
        self.unclaimed = 0  # jobs queued that no thread took yet
        self.by_domain: dict[str, int] = {}

    def submit(self, domain: str, timeout: float, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queues ``fn(*args)`` once ``domain`` has a lookup to spare; LookupTimeoutError if none frees up within
        ``timeout`` seconds."""
        future: Future[Any] = Future()
        with self.cond:
            if not self.cond.wait_for(lambda: self.by_domain.get(domain, 0) < self.per_domain, max(0.0, timeout)):
                raise LookupTimeoutError(f"timed out resolving: {self.per_domain} lookups under {domain} unanswered")
            if self.unclaimed + 1 > self.idle and self.threads < self.max_threads:
                self._start_thread()  # before the job is counted: a thread that cannot start leaves no count behind
            self.by_domain[domain] = self.by_domain.get(domain, 0) + 1
            self.unclaimed += 1
        self.queue.put((future, fn, args, domain))
        return future

    def _start_thread(self) -> None:
        """One more lookup thread (``cond`` held). At the process's thread limit the running ones serve the job."""
        self.threads += 1
        self.idle += 1
        try:
            threading.Thread(target=self._run, name=f"witbuild-lookup-{self.threads}", daemon=True).start()
        except RuntimeError:
            self.threads -= 1
            self.idle -= 1
            if not self.threads:
                raise

    def _run(self) -> None:
        while True:
            future, fn, args, domain = self.queue.get()
            with self.cond:
                self.idle -= 1
                self.unclaimed -= 1
            try:
                if future.set_running_or_notify_cancel():  # else its caller gave up before it started
                    _settle(future, fn, args)
            finally:
                with self.cond:
                    self.idle += 1
                    self.by_domain[domain] -= 1
                    if not self.by_domain[domain]:
                        del self.by_domain[domain]
                    self.cond.notify_all()


def _settle(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # the caller's to see, as a direct call would raise it
        future.set_exception(exc)


_lookups = PerProcess(lambda: _Lookups(MAX_LOOKUP_THREADS, LOOKUPS_PER_DOMAIN))


def getaddrinfo_within(host: str, port: int | str | None, timeout: float | None,
                       socktype: int = socket.SOCK_STREAM) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port, 0, socktype)``, or :class:`LookupTimeoutError` after ``timeout`` seconds
    (None: no limit), waiting for a turn of the host's domain included. Errors of the lookup itself
    (``gaierror``, ``UnicodeError``) are raised as they come."""
    try:
        return socket.getaddrinfo(host, port, 0, socktype, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        pass  # a name: the resolver's
    if timeout is None:
        return socket.getaddrinfo(host, port, 0, socktype)
    until = time.monotonic() + timeout
    future = _lookups.get().submit(lookup_domain(host), timeout, socket.getaddrinfo, host, port, 0, socktype)
    try:
        return future.result(max(0.0, until - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        raise LookupTimeoutError(f"timed out resolving {host} (no answer within {timeout:.3g} s)") from None
