"""Damaged and hostile input: every bad record is counted, every good one before and after kept."""

from __future__ import annotations

import gzip
import io
import os
import random
import uuid

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import extract_file


def response(url: str, body: bytes, content_type: str = "text/html; charset=utf-8", gz: bool = True) -> bytes:
    """One response record, the same bytes on every run (a fixed record id and date: where a test cuts a member
    must not move from run to run)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
    fixed = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>", "WARC-Date": "2026-01-01T00:00:00Z"}
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                  warc_headers_dict=fixed))
    return buf.getvalue()


def page(i: int, n_images: int = 3) -> bytes:
    imgs = "".join(f'<img src="/img/{i}-{k}.jpg" alt="picture {k} of page {i}">' for k in range(n_images))
    return f"<html><body><p>page {i}</p>{imgs}</body></html>".encode()


def good(i: int, gz: bool = True) -> bytes:
    return response(f"http://site.test/p{i}.html", page(i), gz=gz)


def extract(path, **cfg) -> tuple[list[dict], StageCounts]:
    counts = StageCounts()
    rows = []
    for batch in extract_file(str(path), ExtractConfig(**cfg), counts):
        rows.extend(batch.to_pylist())
    return rows, counts


def pages_of(rows) -> set[str]:
    return {r["page_url"] for r in rows}


def test_truncated_gzip_member_in_the_middle(tmp_path):
    bad = good(1)
    data = good(0) + bad[: len(bad) // 2] + good(2) + good(3)
    (p := tmp_path / "t.warc.gz").write_bytes(data)
    rows, counts = extract(p)
    assert pages_of(rows) == {"http://site.test/p0.html", "http://site.test/p2.html", "http://site.test/p3.html"}
    assert len(rows) == 9
    assert counts.events["corrupt_gzip_member"] == 1


def test_truncated_last_member(tmp_path):
    last = good(2)
    (p := tmp_path / "t.warc.gz").write_bytes(good(0) + good(1) + last[: len(last) - 40])
    rows, counts = extract(p)
    assert pages_of(rows) == {"http://site.test/p0.html", "http://site.test/p1.html"}
    assert counts.events["truncated_record"] + counts.events["corrupt_gzip_member"] == 1


def test_corrupt_bytes_inside_a_member(tmp_path):
    bad = bytearray(good(1))
    bad[30:60] = bytes(random.Random(0).randrange(256) for _ in range(30))
    (p := tmp_path / "t.warc.gz").write_bytes(good(0) + bytes(bad) + good(2))
    rows, counts = extract(p)
    assert {"http://site.test/p0.html", "http://site.test/p2.html"} <= pages_of(rows)
    assert "http://site.test/p1.html" not in pages_of(rows)
    assert counts.events["corrupt_gzip_member"] + counts.events["corrupt_record"] >= 1


def test_member_that_is_not_a_warc_record(tmp_path):
    junk = gzip.compress(b"this is not a WARC record at all\r\n\r\n" * 10)
    (p := tmp_path / "t.warc.gz").write_bytes(good(0) + junk + good(1))
    rows, counts = extract(p)
    assert pages_of(rows) == {"http://site.test/p0.html", "http://site.test/p1.html"}
    assert counts.events["corrupt_record"] == 1


def test_uncompressed_warc_with_garbage_between_records(tmp_path):
    data = good(0, gz=False) + b"GARBAGE\r\nWARC/ nonsense\r\n" * 5 + good(1, gz=False) + good(2, gz=False)
    (p := tmp_path / "t.warc").write_bytes(data)
    rows, counts = extract(p)
    assert pages_of(rows) == {f"http://site.test/p{i}.html" for i in range(3)}
    assert counts.events["corrupt_record"] >= 1


def test_non_html_response_is_skipped_and_counted(tmp_path):
    data = good(0) + response("http://site.test/x.jpg", b"\xff\xd8\xff\xe0JFIF<img>", "image/jpeg") + good(1)
    (p := tmp_path / "t.warc.gz").write_bytes(data)
    rows, counts = extract(p)
    assert len(rows) == 6 and counts.events["non_html_responses"] == 1


def test_invalid_utf8_page_is_still_extracted(tmp_path):
    body = b'<html><body>\xff\xfe\xc3<img src="/a.jpg" alt="caf\xc3\xa9 \xe9t\xe9"></body></html>'
    (p := tmp_path / "t.warc.gz").write_bytes(response("http://site.test/u.html", body) + good(1))
    rows, counts = extract(p)
    assert len(rows) == 4
    assert rows[0]["text"].startswith("café")
    assert counts.events["invalid_bytes_replaced"] == 1


def test_50_mb_page_is_cut_not_fatal(tmp_path):
    head = b'<html><body><img src="/first.jpg" alt="before the flood">'
    body = head + b"<p>" + b"x" * (50 * 1024 * 1024) + b'</p><img src="/late.jpg" alt="never parsed"></body></html>'
    (p := tmp_path / "t.warc.gz").write_bytes(good(0) + response("http://site.test/big.html", body) + good(1))
    rows, counts = extract(p, max_page_bytes=5_000_000)
    texts = {r["text"] for r in rows}
    assert "before the flood" in texts and "never parsed" not in texts
    assert pages_of(rows) == {"http://site.test/p0.html", "http://site.test/big.html", "http://site.test/p1.html"}
    assert counts.events["body_cut_at_max_bytes"] == 1


def test_100_kb_alt_is_cut_once_by_the_filter(tmp_path):
    """A huge alt travels whole through extract (the page size cap bounds it) and is cut by the one truncation
    setting, ``filter.max_chars``, counted once as text_truncated."""
    from witbuild.text.filters import FilterConfig, filter_texts

    alt = "a very long caption " * 5000  # 100 kB
    body = f'<html><img src="/a.jpg" alt="{alt}"></html>'.encode()
    (p := tmp_path / "t.warc.gz").write_bytes(response("http://site.test/a.html", body) + good(1))
    rows, counts = extract(p)
    assert len(rows) == 4 and rows[0]["text"] == alt.strip() and "text_truncated" not in counts.events
    result = filter_texts([rows[0]["text"]], FilterConfig())
    assert len(result.texts[0]) <= FilterConfig().max_chars and result.truncated == [True]


def test_file_that_is_not_a_warc(tmp_path):
    for name, data in [("plain.warc.gz", b"hello, I am a text file\n" * 100),
                       ("gzipped.warc.gz", gzip.compress(os.urandom(1000))),
                       ("empty.warc.gz", b"")]:
        (p := tmp_path / name).write_bytes(data)
        rows, counts = extract(p)
        assert rows == []
        if data:
            assert counts.events["not_a_warc_file"] == 1, name


def test_missing_file_is_counted_not_raised(tmp_path):
    rows, counts = extract(tmp_path / "nope.warc.gz")
    assert rows == [] and counts.events["unreadable_file"] == 1


def test_remote_files_over_http_and_a_missing_one(tmp_path, shared_warc):
    """Any fsspec URL is read; here http:// from a server on 127.0.0.1. A 404 is counted, not raised."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shared_warc)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        name = "cc-main-2024-22-wikipedia-page.warc.gz"
        remote, counts = extract(f"{base}/{name}")
        local, _ = extract(shared_warc / name)
        assert [r["uid"] for r in remote] == [r["uid"] for r in local] and len(remote) == 5
        assert remote[0]["source_file"] == f"{base}/{name}"
        rows, counts = extract(f"{base}/missing.warc.gz")
        assert rows == [] and counts.events["unreadable_file"] == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
