"""The extract stage on WARC and WAT files written by the tools users have: GNU Wget, warcio, gzip.

Common Crawl's files and the project's own are not the only WARCs in the wild. Wget writes WARC/1.0 with
``<…>`` around target URIs and stores bodies exactly as received (chunked framing, gzip/deflate/brotli
content encodings); warcio writes WARC/1.1 and revisit records; ``gzip file.warc`` leaves one gzip stream
for the whole file. The oracle is ``tests/helpers/warc_site.py``: a local site whose every ``<img>`` was
written down by hand, crawled for real at the start of the session. The expected (page, image, alt)
triples come from that table alone; nothing here shares code with the reader under test.

The same kinds of files, written once by ``tests/data/warc_writers/make_samples.py``, are committed
with their manifest and must give exactly the expected pairs.
"""

from __future__ import annotations

import gzip
import json
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_job
from tests.helpers.warc_site import FILES, RawRecord, WarcSite, read_records, uncompressed, write_all
from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import extract_file

SAMPLES = Path(__file__).parent / "data" / "warc_writers"
WARC_FILES = [f for f in FILES if not f.endswith(".wat.gz")]
DAMAGE_EVENTS = ("corrupt_record", "corrupt_gzip_member")
Triple = tuple[str, str, str]  # (page URL, image URL, alt text)


@dataclass
class Archive:
    """A folder of written files and the manifest that says what each must yield."""

    folder: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def pairs_by_page(self) -> dict[str, list[Triple]]:
        return {p["url"]: [(p["url"], img, alt) for img, alt in p["pairs"]] for p in self.manifest["pages"]}

    def expected(self, name: str) -> list[Triple]:
        """The triples a correct extractor finds in file ``name``: those of every page it holds a 200 of. A WAT
        holds only each ``<img>``'s ``src`` (``IMG@/src``), so a page's ``wat_pairs``, where given, are its own."""
        key = "wat_pairs" if name.endswith(".wat.gz") else "pairs"
        by_page = {p["url"]: [(p["url"], img, alt) for img, alt in p.get(key, p["pairs"])]
                   for p in self.manifest["pages"]}
        return sorted(t for url in self.manifest["files"][name]["pages"] for t in by_page[url])

    def delivery(self, page_url: str) -> str:
        return next(p["delivery"] for p in self.manifest["pages"] if p["url"] == page_url)


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The site served on 127.0.0.1 and archived by wget, warcio and gzip into a fresh folder."""
    if shutil.which("wget") is None or shutil.which("gzip") is None:
        pytest.skip("GNU Wget and gzip are needed to write the archives")
    folder = tmp_path_factory.mktemp("warc_writers")
    with WarcSite() as site:
        files = write_all(site, folder)
        manifest = {**site.manifest(), "files": {name: w.to_json() for name, w in files.items()}}
    return Archive(folder, manifest)


@pytest.fixture(scope="session")
def committed() -> Archive:
    """The committed samples (tests/data/warc_writers) and their manifest."""
    return Archive(SAMPLES, json.loads((SAMPLES / "manifest.json").read_text()))


def extract(path: Path) -> tuple[list[dict[str, Any]], StageCounts]:
    counts = StageCounts()
    rows = [r for batch in extract_file(str(path), ExtractConfig(), counts) for r in batch.to_pylist()]
    return rows, counts


def triples(rows: list[dict[str, Any]]) -> list[Triple]:
    return sorted((r["page_url"], r["url"], r["text"]) for r in rows)


def describe_missing(archive: Archive, missing: set[Triple]) -> str:
    """Missing triples grouped by page, with how the server delivered the page: what a failure needs."""
    by_page: dict[str, list[str]] = {}
    for page, img, alt in sorted(missing):
        by_page.setdefault(page, []).append(f"{img} {alt!r}")
    return "\n".join(f"  {page} [{archive.delivery(page)}]: {len(v)} missing, e.g. {v[0]}"
                     for page, v in by_page.items())


# --- every kind of file, freshly written ------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_recall_of_the_manifest_pairs(written: Archive, name: str) -> None:
    """At least 99% of the expected (page, image, alt) triples are found, whatever wrote the file."""
    rows, _ = extract(written.path(name))
    expected = set(written.expected(name))
    got = set(triples(rows))
    missing = expected - got
    recall = 1 - len(missing) / len(expected)
    assert recall >= 0.99, (f"{name}: recall {recall:.1%} ({len(got & expected)}/{len(expected)})\n"
                            f"{describe_missing(written, missing)}\nrows found instead: {sorted(got - expected)[:6]}")


@pytest.mark.parametrize("name", FILES)
def test_page_urls_are_the_pages_real_urls(written: Archive, name: str) -> None:
    """Every row's page_url is a URL the file holds a 200 page for, exactly as the site spells it:
    no ``<…>`` left from a WARC/1.0 target URI, no URL of a revisit, redirect or error record."""
    rows, _ = extract(written.path(name))
    pages = set(written.manifest["files"][name]["pages"])
    wrong = Counter(r["page_url"] for r in rows if r["page_url"] not in pages)
    assert not wrong, f"{name}: page_url not among the file's pages: {dict(wrong)}"


@pytest.mark.parametrize("name", FILES)
def test_nothing_from_redirect_and_error_responses(written: Archive, name: str) -> None:
    """The bodies of the 301, 302, 404 and 500 responses have images; none may become a pair."""
    rows, _ = extract(written.path(name))
    not_pages = {p["url"] for p in written.manifest["not_pages"]}
    forbidden = {img for p in written.manifest["not_pages"] for img in p["images"]}
    bad = [(r["page_url"], r["url"]) for r in rows
           if r["page_url"].strip("<>") in not_pages or r["url"] in forbidden]
    assert not bad, f"{name}: pairs from redirect or error records: {bad}"


@pytest.mark.parametrize("name", WARC_FILES)
def test_record_events(written: Archive, name: str) -> None:
    """Each kind of record is counted under its event, as a plain reading of the file counts it:
    revisits counted and not parsed, 3xx as redirects, other non-2xx as errors, 2xx as HTML or not."""
    rows, counts = extract(written.path(name))
    records = read_records(written.path(name).read_bytes())
    pages = set(written.manifest["files"][name]["pages"])
    responses = [r for r in records if r.type == "response"]
    expected = {
        "records_read": len(records),
        "revisit_records": sum(r.type == "revisit" for r in records),
        "redirect_responses": sum(r.status is not None and 300 <= r.status < 400 for r in responses),
        "error_responses": sum(r.status is not None and not 200 <= r.status < 400 for r in responses),
        "html_pages": sum(r.status == 200 and r.uri in pages for r in responses),
        "non_html_responses": sum(r.status is not None and 200 <= r.status < 300 and r.uri not in pages
                                  for r in responses),
    }
    assert expected["revisit_records"] == len(written.manifest["files"][name]["revisits"])
    got = {k: counts.events[k] for k in expected}
    assert got == expected, f"{name}: events {got}, expected {expected}; all events {dict(counts.events)}"
    revisited = set(written.manifest["files"][name]["revisits"])
    assert not {r["page_url"] for r in rows} & revisited, "a revisit record was parsed as a page"


def test_the_writers_stored_what_the_tests_rely_on(written: Archive) -> None:
    """The files hold what the other tests claim to exercise (so a passing test means something):
    wget's bracketed URIs, bodies stored as received, one gzip stream vs one member per record, WAT URIs."""
    wget = read_records(written.path("wget.warc").read_bytes())
    assert {r.version for r in wget} == {"WARC/1.0"}
    assert all(r.fields["warc-target-uri"].startswith("<http://") for r in wget
               if r.type in ("request", "response"))
    stream = uncompressed(written.path("wget.warc").read_bytes())

    def block(records: list[RawRecord], data: bytes, path: str) -> bytes:
        rec = next(r for r in records if r.type == "response" and r.uri.endswith(path))
        return data[rec.block_start:rec.end - 4]

    head, _, body = block(wget, stream, "/chunked.html").partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and body.startswith(b"3d\r\n") and body.endswith(b"0\r\n\r\n")
    for path, magic in (("/gzip.html", b"\x1f\x8b"), ("/deflate.html", b"\x78\x9c")):
        assert block(wget, stream, path).partition(b"\r\n\r\n")[2].startswith(magic)
    assert b"Content-Encoding: br" in block(wget, stream, "/brotli.html")
    http10 = block(wget, stream, "/http10.html")
    assert http10.startswith(b"HTTP/1.0 200 OK") and b"Content-Length" not in http10.partition(b"\r\n\r\n")[0]
    assert b"Content-Type" not in block(wget, stream, "/notype.html").partition(b"\r\n\r\n")[0]

    assert len(gzip_members(written.path("wget.warc.gz").read_bytes())) == len(
        read_records(written.path("wget.warc.gz").read_bytes()))
    assert len(gzip_members(written.path("wget-single-stream.warc.gz").read_bytes())) == 1

    warcio = read_records(written.path("warcio-1.1.warc.gz").read_bytes())
    assert {r.version for r in warcio} == {"WARC/1.1"}
    assert {r.type for r in warcio} >= {"warcinfo", "request", "response", "metadata", "revisit"}
    assert not any(r.fields.get("warc-target-uri", "").startswith("<") for r in warcio)
    dedup = read_records(written.path("wget-dedup.warc.gz").read_bytes())
    assert [r.fields["warc-profile"] for r in dedup if r.type == "revisit"] == [
        "http://netpreserve.org/warc/1.0/revisit/identical-payload-digest"]

    for name, bracketed in (("site.warc.wat.gz", False), ("site-bracketed.warc.wat.gz", True)):
        wat = gzip.decompress(written.path(name).read_bytes())
        assert (b"WARC-Target-URI: <http://" in wat) is bracketed
        assert (b'"WARC-Target-URI":"<http://' in wat) is bracketed
        assert wat.count(b'"path":"IMG@/src"') >= sum(len(p.get("wat_pairs", p["pairs"]))
                                                      for p in written.manifest["pages"])
    # the responsive page was stored with its srcset, lazy and <picture> markup, which the pairs rely on
    responsive = next(r for r in wget if r.type == "response" and r.uri.endswith("/responsive.html"))
    body = stream[responsive.block_start:responsive.end - 4]
    assert all(m in body for m in (b'srcset="img/small.jpg 320w', b'data-src="img/lazy.jpg"',
                                   b'<source type="image/webp"', b'data-srcset="img/art.jpg 800w',
                                   b'data-original="img/original.jpg"', b'data-lazy-src="img/rocket.jpg"'))


# --- the committed samples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_committed_sample_gives_exactly_the_manifest_pairs(committed: Archive, name: str) -> None:
    """Each committed file yields exactly its expected triples: nothing missing, nothing extra, no duplicate."""
    rows, _ = extract(committed.path(name))
    got = triples(rows)
    expected = committed.expected(name)
    missing = set(expected) - set(got)
    assert got == expected, (f"{name}: {len(got)} rows, {len(expected)} expected\nmissing:\n"
                             f"{describe_missing(committed, missing)}\nextra: {sorted(set(got) - set(expected))[:8]}"
                             f"\nduplicated: {[t for t, n in Counter(got).items() if n > 1][:4]}")


def test_committed_manifest_matches_the_site_table(committed: Archive) -> None:
    """The committed manifest is the site table's, at the port the samples were written with."""
    site = WarcSite()
    site.port = int(committed.manifest["origin"].rsplit(":", 1)[1])
    assert {k: v for k, v in committed.manifest.items() if k not in ("files", "written_with")} == site.manifest()
    assert sorted(committed.manifest["files"]) == sorted(FILES)
    for name in FILES:
        assert committed.path(name).stat().st_size < 100_000, name


# --- damage inside a record header, in every layout --------------------------------------------------------


def gzip_members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each gzip member of ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        if not d.eof:
            raise ValueError(f"truncated gzip member at {pos}")
        end = len(data) - len(d.unused_data)
        out.append((pos, end))
        pos = end
    return out


def break_content_length(header: bytes) -> bytes:
    """One digit of the WARC header's Content-Length replaced by a letter: the record's length is unknown."""
    i = header.index(b"\r\nContent-Length: ") + len(b"\r\nContent-Length: ")
    return header[:i] + b"x" + header[i + 1:]


def break_version_line(header: bytes) -> bytes:
    """``WARC/1.0`` becomes ``WARX/1.0``: the record no longer starts like one."""
    assert header.startswith(b"WARC/")
    return b"WARX" + header[4:]


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "content_length": break_content_length,
    "version_line": break_version_line,
}
LAYOUTS = ("warc", "per_record_gzip", "single_stream_gzip")
SUFFIX = {"warc": ".warc", "per_record_gzip": ".warc.gz", "single_stream_gzip": ".warc.gz"}


def intact_layout(written: Archive, source: str, layout: str) -> bytes:
    """The bytes of one crawl in one layout. wget wrote all three (the single stream by gzip); of warcio's
    per-record file the other two are its stream as is and gzipped whole."""
    if source == "wget":
        name = {"warc": "wget.warc", "per_record_gzip": "wget.warc.gz",
                "single_stream_gzip": "wget-single-stream.warc.gz"}[layout]
        return written.path(name).read_bytes()
    data = written.path("warcio-1.1.warc.gz").read_bytes()
    if layout == "per_record_gzip":
        return data
    stream = gzip.decompress(data)
    return stream if layout == "warc" else gzip.compress(stream, mtime=0)


def damaged_copy(data: bytes, layout: str, victim: RawRecord, damage: str) -> bytes:
    """``data`` with one byte of ``victim``'s header changed, in the same layout. Per-record gzip: only the
    victim's member is recompressed; every other member stays byte for byte as it was."""
    stream = uncompressed(data)
    header = stream[victim.start:victim.block_start]
    hurt = stream[:victim.start] + DAMAGES[damage](header) + stream[victim.block_start:]
    assert len(hurt) == len(stream) and sum(a != b for a, b in zip(hurt, stream, strict=True)) == 1
    if layout == "warc":
        return hurt
    if layout == "single_stream_gzip":
        return gzip.compress(hurt, mtime=0)
    ustart = 0
    for start, end in gzip_members(data):
        member = gzip.decompress(data[start:end])
        if ustart == victim.start:
            assert len(member) == victim.end - victim.start, "not one record per gzip member"
            return data[:start] + gzip.compress(hurt[victim.start:victim.end], mtime=0) + data[end:]
        ustart += len(member)
    raise AssertionError("no gzip member starts at the damaged record")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("source", ["wget", "warcio"])
def test_header_damage_loses_only_the_damaged_record(written: Archive, tmp_path: Path, source: str, layout: str,
                                                     damage: str) -> None:
    """One byte broken in the header of the middle page response of a crawl's WARC: only that
    record's pairs are lost, every intact record after it is still read, and the damage is counted.

    Judged against the intact file in the same layout, so that only damage handling is tested here; the
    intact file must yield pages after the damaged record, or there is nothing to judge.
    """
    data = intact_layout(written, source, layout)
    records = read_records(data)
    pairs = written.pairs_by_page
    pages = [(i, r) for i, r in enumerate(records) if r.type == "response" and pairs.get(r.uri)]
    index, victim = pages[len(pages) // 2]  # the middle page: pages before it and after it
    (intact := tmp_path / f"intact{SUFFIX[layout]}").write_bytes(data)
    (hurt := tmp_path / f"damaged{SUFFIX[layout]}").write_bytes(damaged_copy(data, layout, victim, damage))

    before, _ = extract(intact)
    rows, counts = extract(hurt)
    where = f"{source}/{layout}/{damage}, damaged record {index} of {len(records)} ({victim.uri})"
    after = {r.uri for i, r in pages if i > index} & {row["page_url"] for row in before}
    assert len(after) >= 3, f"{where}: the intact file yields only {sorted(after)} after the damaged record"
    lost = set(triples(before)) - set(triples(rows))
    assert {page for page, _, _ in lost} <= {victim.uri}, (
        f"{where}: pairs of intact pages lost: {sorted({p for p, _, _ in lost} - {victim.uri})}")
    assert not set(triples(rows)) - set(triples(before)), f"{where}: pairs the intact file does not have"
    assert sum(counts.events[e] for e in DAMAGE_EVENTS) >= 1, f"{where}: damage not counted: {dict(counts.events)}"


# --- the real job ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spark
def test_spark_job_extracts_a_wget_warc(written: Archive, tmp_path: Path) -> None:
    """spark-submit of the build on a wget WARC, through the extract stage: the manifest's pairs, real URLs."""
    out = tmp_path / "build"
    proc = run_job("--input", str(written.path("wget.warc.gz")), "--output", str(out), "--until-stage", "extract")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = pq.read_table(out / "stages" / "extract").to_pylist()
    expected = set(written.expected("wget.warc.gz"))
    missing = expected - set(triples(rows))
    assert 1 - len(missing) / len(expected) >= 0.99, (
        f"spark job on wget.warc.gz: {len(missing)}/{len(expected)} missing\n{describe_missing(written, missing)}")
    assert {r["page_url"] for r in rows} <= set(written.manifest["files"]["wget.warc.gz"]["pages"])
