"""Name lookups within a time limit.

``getaddrinfo`` cannot be interrupted, and neither a socket timeout nor the deadline watch reaches it: a resolver
that never answers would hold a download thread (or the crawl) past every timeout of the exchange. Lookups of
names therefore run in a few daemon threads of their own per process, and the caller waits at most its time
limit for the answer; a numeric address needs no lookup and is parsed in place.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from witbuild.per_process import PerProcess

#: Lookups one process runs at once; more wait their turn (within their own time limit).
LOOKUP_THREADS = 8


class LookupTimeoutError(TimeoutError):
    """No answer from the resolver in time; the message says 'timed out' (error class timeout)."""


class _Lookups:
    """Daemon threads that run lookups: one hung in the resolver never keeps the process from exiting."""

    def __init__(self, threads: int) -> None:
        self.queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._run, name=f"witbuild-lookup-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args = self.queue.get()
            if not future.set_running_or_notify_cancel():  # its caller gave up before it started
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the caller's to see, as a direct call would raise it
                future.set_exception(exc)


_lookups = PerProcess(lambda: _Lookups(LOOKUP_THREADS))


def getaddrinfo_within(host: str, port: int | str | None, timeout: float | None,
                       socktype: int = socket.SOCK_STREAM) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port, 0, socktype)``, or :class:`LookupTimeoutError` after ``timeout`` seconds
    (None: no limit). Errors of the lookup itself (``gaierror``, ``UnicodeError``) are raised as they come."""
    try:
        return socket.getaddrinfo(host, port, 0, socktype, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        pass  # a name: the resolver's
    if timeout is None:
        return socket.getaddrinfo(host, port, 0, socktype)
    future = _lookups.get().submit(socket.getaddrinfo, host, port, 0, socktype)
    try:
        return future.result(max(0.0, timeout))
    except FutureTimeout:
        future.cancel()
        raise LookupTimeoutError(f"timed out resolving {host} (no answer within {timeout:.3g} s)") from None
