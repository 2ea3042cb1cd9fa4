"""HTTP header blocks as archives really store them, and gzip streams damaged after good records.

Every expected pair count here was checked, when the test was written, against warcio 1.8.1
reading the same bytes (for a damaged stream: the bytes zlib gives before the damage) with the
pages parsed by html5lib. Where the damage cuts a record, warcio also reads the cut record's
first half as a page; this reader drops a cut record whole, so the counts here are warcio's
whole pages.
"""

from __future__ import annotations

import gzip
import io
import random
import uuid
import zlib
from functools import partial

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import extract_file
from witbuild.sources.warc import iter_records

SITE = "http://site.test"


def page(i: int, n_images: int = 2, alts: list[str] | None = None) -> bytes:
    alts = alts or [f"picture {k} of page {i}" for k in range(n_images)]
    imgs = "".join(f'<img src="/img/{i}-{k}.jpg" alt="{a}">' for k, a in enumerate(alts))
    return f"<html><body><p>page {i}</p>{imgs}</body></html>".encode()


def raw_record(uri: str, block: bytes, warc_type: str = "response",
               content_type: str | None = "application/http; msgtype=response") -> bytes:
    """One WARC record written byte by byte: the block exactly as given (warcio's writer would
    rewrite a bare-LF HTTP header block), with its true Content-Length."""
    record_id = uuid.uuid5(uuid.NAMESPACE_URL, uri)
    fields = ["WARC/1.0", f"WARC-Type: {warc_type}", f"WARC-Record-ID: <urn:uuid:{record_id}>",
              "WARC-Date: 2024-01-02T03:04:05Z", f"WARC-Target-URI: {uri}"]
    if content_type is not None:
        fields.append(f"Content-Type: {content_type}")
    fields.append(f"Content-Length: {len(block)}")
    return ("\r\n".join(fields) + "\r\n\r\n").encode() + block + b"\r\n\r\n"


def warcio_record(i: int, body: bytes | None = None) -> bytes:
    """One response record from warcio's writer, uncompressed, the same bytes on every run."""
    url = f"{SITE}/p{i}.html"
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=False)
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
    fixed = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>", "WARC-Date": "2026-01-01T00:00:00Z"}
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body or page(i)),
                                                  http_headers=headers, warc_headers_dict=fixed))
    return buf.getvalue()


def noisy_records(n: int) -> list[bytes]:
    """Pages with random alts: they do not compress away, so a stream of them spans many
    inflate steps and damage lands among whole records."""
    rng = random.Random(7)
    return [warcio_record(i, page(i, alts=[rng.randbytes(32).hex() for _ in range(8)])) for i in range(n)]


def members(records: list[bytes]) -> bytes:
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def one_stream(records: list[bytes]) -> bytes:
    return gzip.compress(b"".join(records), mtime=0)


def extract(path, **cfg) -> tuple[list[dict], StageCounts]:
    counts = StageCounts()
    rows = [r for b in extract_file(str(path), ExtractConfig(**cfg), counts) for r in b.to_pylist()]
    return rows, counts


def records_of(path):
    counts = StageCounts()
    return list(iter_records(partial(open, path, "rb"), counts)), counts


def pages_of(rows) -> set[str]:
    return {r["page_url"] for r in rows}


def damage_counts(counts: StageCounts) -> dict[str, int]:
    names = ("corrupt_gzip_member", "corrupt_record", "truncated_record", "not_a_warc_file",
             "record_length_mismatch", "non_html_responses", "unknown_record_type")
    return {k: counts.events[k] for k in names if counts.events[k]}


# --- HTTP header blocks -------------------------------------------------------------------

LF_HEAD = b"HTTP/1.1 200 OK\nContent-Type: text/html; charset=EUC-JP\nServer: x\n\n"


@pytest.mark.parametrize("gz", [True, False])
def test_bare_lf_http_headers_end_at_the_first_blank_line(tmp_path, gz):
    """ClueWeb09 stores HTTP headers with bare LF. The page starts after the first blank line:
    its first image is found and the header's charset decodes it (warcio: the same 2 pairs)."""
    body = '<html><body><img src="/a.jpg" alt="ヘッドポーター"><p>\r\n\r\n</p><img src="/b.jpg" alt="二"></body></html>'
    recs = [raw_record(f"{SITE}/jp.html", LF_HEAD + body.encode("euc-jp"))]
    (p := tmp_path / ("lf.warc.gz" if gz else "lf.warc")).write_bytes(members(recs) if gz else b"".join(recs))
    (rec,), _ = records_of(p)
    assert (rec.http_status, rec.content_type, rec.charset) == (200, "text/html; charset=EUC-JP", "euc-jp")
    assert rec.body.startswith(b"<html><body><img")
    rows, counts = extract(p)
    assert [(r["url"], r["text"]) for r in rows] == [(f"{SITE}/a.jpg", "ヘッドポーター"), (f"{SITE}/b.jpg", "二")]
    assert counts.events["html_pages"] == 1 and not damage_counts(counts)


def test_bare_lf_headers_with_no_crlf_blank_line_anywhere(tmp_path):
    """Without a CRLF blank line in the whole block the page used to count as non-HTML."""
    recs = [raw_record(f"{SITE}/p.html", b"HTTP/1.1 200 OK\nContent-Type: text/html\n\n" + page(0))]
    (p := tmp_path / "t.warc.gz").write_bytes(members(recs))
    rows, counts = extract(p)
    assert [r["text"] for r in rows] == ["picture 0 of page 0", "picture 1 of page 0"]
    assert "non_html_responses" not in counts.events


def test_header_fields_any_line_ending_folded_and_coded(tmp_path):
    """A header block mixing LF and CRLF, with a folded field and a gzip body."""
    head = b"HTTP/1.0 200\nContent-Type: text/html;\r\n charset=\"UTF-8\"\nContent-Encoding: gzip\r\n\r\n"
    recs = [raw_record(f"{SITE}/g.html", head + gzip.compress(page(1), mtime=0))]
    (p := tmp_path / "t.warc").write_bytes(b"".join(recs))
    (rec,), _ = records_of(p)
    assert (rec.http_status, rec.charset, rec.content_encoding) == (200, "utf-8", "gzip")
    rows, counts = extract(p)
    assert len(rows) == 2 and counts.events["decoded_gzip_bodies"] == 1


def test_response_without_warc_content_type_is_still_http(tmp_path):
    """A writer that leaves out the WARC Content-Type still stores the HTTP message: a redirect is
    a redirect (its body's images are not the page's), a gzip body is decoded."""
    redirect = b"HTTP/1.1 302 Found\r\nLocation: /p.html\r\nContent-Type: text/html\r\n\r\n" + page(9)
    coded = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n"
             + gzip.compress(page(1), mtime=0))
    recs = [raw_record(f"{SITE}/r.html", redirect, content_type=None),
            raw_record(f"{SITE}/p.html", coded, content_type=None),
            raw_record(f"{SITE}/u.html", b"HTTP/1.1 200 OK\r\n\r\n" + page(2), content_type="Application/HTTP")]
    (p := tmp_path / "t.warc.gz").write_bytes(members(recs))
    rows, counts = extract(p)
    assert pages_of(rows) == {f"{SITE}/p.html", f"{SITE}/u.html"}
    assert len(rows) == 4
    assert counts.events["redirect_responses"] == 1 and counts.events["decoded_gzip_bodies"] == 1


def test_record_declared_as_html_is_not_read_as_http(tmp_path):
    """A block whose WARC Content-Type names the page's own type holds no HTTP message."""
    recs = [raw_record(f"{SITE}/res.html", page(3), content_type="text/html")]
    (p := tmp_path / "t.warc.gz").write_bytes(members(recs))
    (rec,), _ = records_of(p)
    assert rec.http_status is None and rec.body == page(3)


# --- damaged gzip streams -----------------------------------------------------------------

def test_single_stream_with_a_flipped_crc_keeps_every_record(tmp_path):
    """Only the gzip trailer's CRC is wrong: all 200 records inflate before the check fails
    (warcio on the inflated bytes: 200 pages, 400 pairs)."""
    data = bytearray(one_stream([warcio_record(i) for i in range(200)]))
    data[-5] ^= 0xFF
    (p := tmp_path / "t.warc.gz").write_bytes(bytes(data))
    rows, counts = extract(p)
    assert len(rows) == 400 and len(pages_of(rows)) == 200
    assert counts.events["single_stream_gzip_files"] == 1
    assert damage_counts(counts) == {"corrupt_gzip_member": 1}


def test_big_single_stream_with_a_flipped_crc(tmp_path):
    """Many inflate steps: none of the output before the failing check is lost."""
    data = bytearray(one_stream(noisy_records(800)))
    assert len(data) > 4 * 65536
    data[-6] ^= 0xFF
    (p := tmp_path / "t.warc.gz").write_bytes(bytes(data))
    rows, counts = extract(p)
    assert len(pages_of(rows)) == 800 and len(rows) == 6400
    assert damage_counts(counts) == {"corrupt_gzip_member": 1}


def damaged_stream(records: list[bytes], n_whole: int) -> bytes:
    """One gzip stream of ``records[:n_whole]`` and half of the next record, then a deflate block
    of the reserved type: zlib fails right there, whatever its version compressed the rest to."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    cut = records[n_whole][: len(records[n_whole]) // 2]
    return c.compress(b"".join(records[:n_whole]) + cut) + c.flush(zlib.Z_FULL_FLUSH) + b"\x07" + bytes(64)


def test_single_stream_damaged_midway_keeps_the_records_before(tmp_path):
    """Damage 480 records into a stream (past several inflate steps): those 480 are read (warcio on
    zlib's output up to the damage: the same 480 whole pages, 3,840 pairs), the cut one is dropped."""
    (p := tmp_path / "t.warc.gz").write_bytes(damaged_stream(noisy_records(800), 480))
    assert p.stat().st_size > 3 * 65536  # several inflate steps before the damage
    rows, counts = extract(p)
    assert pages_of(rows) == {f"{SITE}/p{i}.html" for i in range(480)}
    assert len(rows) == 8 * 480
    assert damage_counts(counts) == {"corrupt_gzip_member": 1}


def test_damaged_stream_then_a_good_one(tmp_path):
    """Two whole-file streams one after the other, the first damaged: its records before the
    damage and all of the second are read; the record the damage cut does not hide the next
    (warcio on each stream: 200 whole pages, 1,600 pairs; 5 pages, 10 pairs)."""
    second = [warcio_record(1000 + i) for i in range(5)]
    (p := tmp_path / "t.warc.gz").write_bytes(damaged_stream(noisy_records(300), 200) + one_stream(second))
    rows, counts = extract(p)
    assert pages_of(rows) == {f"{SITE}/p{i}.html" for i in [*range(200), *range(1000, 1005)]}
    assert len(rows) == 8 * 200 + 2 * 5
    assert damage_counts(counts) == {"corrupt_gzip_member": 1}


# --- cut and padded files -----------------------------------------------------------------

@pytest.mark.parametrize("layout", ["members", "stream", "plain"])
@pytest.mark.parametrize("cut_after", [b"WARC/1.0\r\n", b"WARC-Type: response\r\n"])
def test_final_record_cut_inside_its_header_counts_as_truncated(tmp_path, layout, cut_after):
    """The file ends inside the last record's WARC header (warcio: the two whole pages, 4 pairs)."""
    recs = [warcio_record(i) for i in range(3)]
    last = recs[-1][: recs[-1].index(cut_after) + len(cut_after)]
    if layout == "members":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        data = members(recs[:-1]) + c.compress(last) + c.flush(zlib.Z_SYNC_FLUSH)
    elif layout == "stream":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        data = c.compress(b"".join(recs[:-1]) + last) + c.flush(zlib.Z_SYNC_FLUSH)
    else:
        data = b"".join(recs[:-1]) + last
    (p := tmp_path / ("t.warc" if layout == "plain" else "t.warc.gz")).write_bytes(data)
    rows, counts = extract(p)
    assert pages_of(rows) == {f"{SITE}/p0.html", f"{SITE}/p1.html"}
    assert damage_counts(counts) == {"truncated_record": 1}


def test_nul_padding_after_the_last_member_is_no_damage(tmp_path):
    (p := tmp_path / "t.warc.gz").write_bytes(members([warcio_record(i) for i in range(3)]) + bytes(4096))
    rows, counts = extract(p)
    assert len(rows) == 6 and not damage_counts(counts)


def test_garbage_after_the_last_member_is_still_counted(tmp_path):
    (p := tmp_path / "t.warc.gz").write_bytes(members([warcio_record(i) for i in range(3)]) + b"\x1f\x8bjunk")
    rows, counts = extract(p)
    assert len(rows) == 6 and counts.events["corrupt_gzip_member"] == 1
