"""HTTP bodies stored as received: chunked and gzip/deflate/br payloads decoded, headers not trusted blindly."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from witbuild.counters import StageCounts
from witbuild.sources.http_body import http_payload
from witbuild.sources.urls import target_uri

PAGE = b'<html><body><img src="a.jpg" alt="a red star"></body></html>' * 20


def chunked(body: bytes, size: int = 100) -> bytes:
    """Chunked transfer coding written by hand from RFC 9112 7.1, with an extension and a trailer."""
    parts = [b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nX-Trailer: 1\r\n\r\n"


def raw_deflate(body: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(body) + c.flush()


@pytest.mark.parametrize(("te", "ce", "stored", "event"), [
    ("chunked", None, chunked(PAGE), "dechunked_bodies"),
    ("Chunked", None, chunked(PAGE, 7), "dechunked_bodies"),
    (None, "gzip", gzip.compress(PAGE), "decoded_gzip_bodies"),
    (None, "x-gzip", gzip.compress(PAGE), "decoded_gzip_bodies"),
    (None, "deflate", zlib.compress(PAGE), "decoded_deflate_bodies"),
    (None, "deflate", raw_deflate(PAGE), "decoded_deflate_bodies"),
    (None, "br", brotli.compress(PAGE), "decoded_br_bodies"),
    (None, "BR", brotli.compress(PAGE), "decoded_br_bodies"),
    ("chunked", "gzip", chunked(gzip.compress(PAGE)), "decoded_gzip_bodies"),
    (None, "identity", PAGE, None),
])
def test_stored_codings_are_undone(te, ce, stored, event):
    counts = StageCounts()
    assert http_payload(stored, te, ce, 10_000_000, counts) == PAGE
    if event:
        assert counts.events[event] == 1


def test_two_content_codings_are_undone_last_applied_first():
    counts = StageCounts()
    stored = brotli.compress(gzip.compress(PAGE))
    assert http_payload(stored, None, "gzip, br", 10_000_000, counts) == PAGE
    assert counts.events["decoded_gzip_bodies"] == counts.events["decoded_br_bodies"] == 1


def test_a_coding_header_on_a_decoded_body_keeps_the_body():
    """Some writers decode the payload but keep the header; the markup is used as stored."""
    counts = StageCounts()
    assert http_payload(PAGE, "chunked", "gzip", 10_000_000, counts) == PAGE
    assert counts.events["coding_header_on_plain_body"] == 2


def test_an_undecodable_body_is_counted_and_skipped():
    counts = StageCounts()
    assert http_payload(b"\x00\x01 not gzip at all", None, "gzip", 10_000_000, counts) is None
    assert http_payload(b"\x00\x01 not chunked", "chunked", None, 10_000_000, counts) is None
    assert http_payload(b"\x00\x01", None, "compress", 10_000_000, counts) is None
    assert counts.events["undecodable_body"] == 3


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_decoded_size_is_capped(coding):
    """A 20 MB page of zeros compressed to a few kB does not become 20 MB in memory."""
    big = b"<html>" + b"0" * 20_000_000
    stored = {"gzip": gzip.compress, "deflate": zlib.compress,
              "br": lambda b: brotli.compress(b, quality=1)}[coding](big)
    counts = StageCounts()
    out = http_payload(stored, None, coding, 1_000_000, counts)
    assert out == big[:1_000_000]
    assert counts.events["body_cut_at_max_bytes"] == 1


@pytest.mark.parametrize(("value", "expected"), [
    ("<https://example.org/a?b=1>", "https://example.org/a?b=1"),
    ("  <http://127.0.0.1:8080/>  ", "http://127.0.0.1:8080/"),
    ("https://example.org/", "https://example.org/"),
    ("<>", None),
    ("", None),
    (None, None),
    ("<https://example.org/", "<https://example.org/"),  # unbalanced: left as written
])
def test_target_uri_drops_warc_1_0_angle_brackets(value, expected):
    assert target_uri(value) == expected
