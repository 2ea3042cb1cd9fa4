"""Name lookups within a time limit (witbuild/resolver.py): a resolver that does not answer costs a request its
timeout, never its thread. The slow resolver is a stand-in for ``socket.getaddrinfo`` that answers names of
``.slow.test`` late; everything else goes to the real one."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from witbuild.demo.images import ImageServer
from witbuild.download import error_class
from witbuild.network import guarded_opener
from witbuild.resolver import LookupTimeoutError, getaddrinfo_within

LOOPBACK = ["127.0.0.1"]
REAL_GETADDRINFO = socket.getaddrinfo


def _slow_resolver(delay: float):  # type: ignore[no-untyped-def]
    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host.endswith(".test"):
            flags = args[3] if len(args) > 3 else kw.get("flags", 0)
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            if host.endswith(".slow.test"):
                time.sleep(delay)
            return REAL_GETADDRINFO("127.0.0.1", port, *args[:2])
        return REAL_GETADDRINFO(host, port, *args, **kw)
    return getaddrinfo


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


def test_a_lookup_that_does_not_answer_ends_at_the_total_timeout(server: ImageServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _slow_resolver(5.0))
    opener = guarded_opener(LOOPBACK, total_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(OSError, match="timed out") as caught:
        opener.open(f"http://img.slow.test:{server.port}/img/shapes-0.jpg", timeout=10)
    assert time.monotonic() - started < 2.0
    assert error_class(str(caught.value)) == "timeout"


def test_a_lookup_that_does_not_answer_ends_at_the_read_timeout(server: ImageServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _slow_resolver(5.0))
    started = time.monotonic()
    with pytest.raises(OSError, match=r"timed out resolving img\.slow\.test"):
        guarded_opener(LOOPBACK).open(f"http://img.slow.test:{server.port}/img/shapes-0.jpg", timeout=0.5)
    assert time.monotonic() - started < 2.0


def test_a_name_that_resolves_in_time_is_fetched_and_still_checked(server: ImageServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _slow_resolver(0.2))
    with guarded_opener(LOOPBACK, total_timeout=10).open(
            f"http://img.slow.test:{server.port}/img/shapes-0.jpg", timeout=10) as r:
        assert r.status == 200 and r.read()[:2] == b"\xff\xd8"
    with pytest.raises(OSError, match="blocked address"):  # the policy still sees what the name resolved to
        guarded_opener((), total_timeout=10).open(f"http://img.slow.test:{server.port}/img/shapes-0.jpg",
                                                 timeout=10)


def test_numeric_addresses_need_no_lookup_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _slow_resolver(5.0))
    started = time.monotonic()
    assert getaddrinfo_within("127.0.0.1", 80, 0.0)[0][4] == ("127.0.0.1", 80)
    with pytest.raises(LookupTimeoutError):
        getaddrinfo_within("a.slow.test", 80, 0.1)
    assert time.monotonic() - started < 1.0


def test_a_hung_lookup_never_keeps_the_process_from_exiting() -> None:
    script = textwrap.dedent("""
        import socket, time
        def hung(host, port, family=0, type=0, proto=0, flags=0):
            if flags & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            time.sleep(60)
        socket.getaddrinfo = hung
        from witbuild.resolver import LookupTimeoutError, getaddrinfo_within
        try:
            getaddrinfo_within("hung.example", 80, 0.2)
        except LookupTimeoutError:
            print("timed out")
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "timed out", done.stderr
    assert time.monotonic() - started < 10
