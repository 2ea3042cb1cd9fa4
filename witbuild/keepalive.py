"""Persistent HTTP connections for urllib's handlers: each thread keeps the connection of its last exchange with a
host and sends its next request to that host over it.

urllib closes every connection after one exchange (it sends ``Connection: close``), so every image costs a new
TCP connection (and TLS handshake), on the client, on the server and in round trips. A thread fetches one image
at a time, so one kept connection per host and thread is all it can use: no locks, and a thread's connections
close when it ends. A connection is sent a new request only when the last exchange on it ended cleanly (the whole
body read, no ``Connection: close``) and the server has not closed it since.
"""

from __future__ import annotations

import http.client
import select
import threading
from collections.abc import Callable
from typing import Any

Entry = tuple[http.client.HTTPConnection, http.client.HTTPResponse]


def exchange_complete(response: http.client.HTTPResponse) -> bool:
    """Whether ``response`` left its connection ready for another request: its body read to the end of a declared
    length (a body cut short, chunked or ended by the close is not known to have ended where the next response
    starts) and no ``Connection: close``."""
    return response.isclosed() and not response.will_close and not response.chunked and response.length == 0


def idle_and_open(sock: Any) -> bool:
    """Whether a kept socket is still open with nothing to read: a server that closed an idle connection (its
    keep-alive timeout) makes it readable (end of file)."""
    if sock is None or sock.fileno() < 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class _ThreadConnections:
    """One thread's kept connections by key; closed when the thread (or the store) goes away."""

    def __init__(self) -> None:
        self.by_key: dict[Any, Entry] = {}

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        entries, self.by_key = list(self.by_key.values()), {}
        for conn, _ in entries:
            conn.close()


class KeptConnections(threading.local):
    """Connections kept per thread and key (a handler's host), for :func:`take` and :func:`keep`."""

    def __init__(self) -> None:
        self.entries = _ThreadConnections()

    def take(self, key: Any, usable: Callable[[http.client.HTTPConnection], bool] = lambda _: True
             ) -> http.client.HTTPConnection | None:
        """The connection this thread kept for ``key``, if it can carry another request (``usable`` may add its
        own condition); a connection that cannot is closed."""
        entry = self.entries.by_key.pop(key, None)
        if entry is None:
            return None
        conn, response = entry
        if exchange_complete(response) and idle_and_open(conn.sock) and usable(conn):
            return conn
        conn.close()
        return None

    def keep(self, key: Any, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """Keeps ``conn`` for this thread's next request to ``key``; whether it can carry one is judged then, once
        ``response`` has been read (or not)."""
        previous = self.entries.by_key.get(key)
        if previous is not None and previous[0] is not conn:
            previous[0].close()
        self.entries.by_key[key] = (conn, response)

    def close(self) -> None:
        """Closes this thread's kept connections (other threads' close when they end)."""
        self.entries.close()


def stale(exc: BaseException) -> bool:
    """Whether a request failed the way a kept connection the server had closed fails: before any answer (the
    request can go again on a new connection: only idempotent GETs are kept alive here)."""
    reason = getattr(exc, "reason", exc)  # urllib wraps errors of sending the request in URLError
    return isinstance(reason, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected))
