"""HTTP bodies stored as received: chunked and gzip/deflate/br payloads decoded, headers not trusted blindly."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from witbuild.counters import StageCounts
from witbuild.sources.http_body import ContentDecodeError, dechunk, http_payload
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
    ("gzip, chunked", None, chunked(gzip.compress(PAGE)), "decoded_gzip_bodies"),
    ("deflate", None, zlib.compress(PAGE), "decoded_deflate_bodies"),
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
    utf16 = b"\xff\xfe" + PAGE.decode().encode("utf-16-le")
    assert http_payload(utf16, None, "gzip", 10_000_000, counts) == utf16
    assert counts.events["coding_header_on_plain_body"] == 3


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


@pytest.mark.parametrize("stored", [
    chunked(PAGE).replace(b"\r\n", b"\n"),
    chunked(PAGE, 7).replace(b"\r\n", b"\n"),
    chunked(PAGE).replace(b"ext=1\r\n", b"ext=1\n"),  # bare LF after size lines only
])
def test_chunk_lines_ending_in_bare_lf_are_dechunked(stored):
    """Browsers accept LF for CRLF in chunk framing; those bodies are not lost."""
    counts = StageCounts()
    assert http_payload(stored, "chunked", None, 10_000_000, counts) == PAGE
    assert counts.events["dechunked_bodies"] == 1


@pytest.mark.parametrize(("stored", "expected"), [
    (b"5\r\nhello\r\n6\r\n world\r\n", b"hello world"),  # no last chunk
    (b"5\r\nhello\r\n10\r\n world", b"hello world"),  # cut inside a chunk
    (b"5\r\nhello\r\nzz\r\n world\r\n0\r\n\r\n", b"hello"),  # malformed size line
    (b"5\r\nhelloX6\r\n world\r\n0\r\n\r\n", b"hello"),  # size that does not fit the data
    (b"5\r\nhello\r\n" + b"f" * 16 + b"\r\nabc", b"helloabc"),  # size beyond the body
    (b"5 ;a=b\r\nhello\r\n6\t\r\n world\r\n0\r\nX-T: 1\r\n\r\n", b"hello world"),
    (b"0\r\n\r\n", b""),  # an empty payload
])
def test_damaged_chunked_bodies_keep_the_chunks_before_the_damage(stored, expected):
    assert dechunk(stored) == expected


@pytest.mark.parametrize("stored", [b"5\r\n", b"5\n", b"1f;x=y\r\n"])
def test_a_chunked_body_without_data_is_an_error_not_empty(stored):
    with pytest.raises(ContentDecodeError):
        dechunk(stored)
    counts = StageCounts()
    assert http_payload(stored, "chunked", None, 10_000_000, counts) is None
    assert counts.events["undecodable_body"] == 1


def test_every_gzip_member_is_inflated():
    """A gzip body may hold several members (RFC 1952 2.2); trailing padding after them is ignored."""
    counts = StageCounts()
    stored = gzip.compress(PAGE[:60]) + gzip.compress(PAGE[60:500]) + gzip.compress(PAGE[500:])
    assert http_payload(stored, None, "gzip", 10_000_000, counts) == PAGE
    assert http_payload(stored + b"\x00" * 8, None, "gzip", 10_000_000, counts) == PAGE
    assert counts.events["decoded_gzip_bodies"] == 2


def test_the_size_cap_holds_across_gzip_members():
    counts = StageCounts()
    stored = gzip.compress(PAGE) * 10
    assert http_payload(stored, None, "gzip", len(PAGE) * 3 + 5, counts) == (PAGE * 4)[:len(PAGE) * 3 + 5]
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
