"""WAT extraction on fixtures built from the documented layout around the real WAT envelope."""

from __future__ import annotations

import copy
import io
import json

import pytest
from fastwarc.warc import ArchiveIterator
from warcio.warcwriter import WARCWriter

from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import extract_file


@pytest.fixture(scope="module")
def real_envelope(shared_warc) -> dict:
    """The JSON of the real WAT's metadata record (CC-MAIN-2024-22)."""
    with open(shared_warc / "cc-main-2024-22-wikipedia-page.warc.wat.gz", "rb") as fh:
        for rec in ArchiveIterator(fh, parse_http=False):
            if str(rec.record_type) == "metadata":
                return json.loads(rec.reader.read())
    raise AssertionError("no metadata record in the real WAT")


def response_doc(real: dict, page_url: str, links: list, base: str | None = None) -> dict:
    doc = copy.deepcopy(real)
    env = doc["Envelope"]
    env["WARC-Header-Metadata"].update({"WARC-Type": "response", "WARC-Target-URI": page_url})
    head = {"Title": "t"}
    if base is not None:
        head["Base"] = base
    env["Payload-Metadata"] = {
        "Actual-Content-Type": "application/http; msgtype=response",
        "HTTP-Response-Metadata": {
            "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
            "Headers": {"Content-Type": "text/html; charset=UTF-8", "Content-Language": "es"},
            "HTML-Metadata": {"Head": head, "Links": links},
        },
    }
    return doc


def write_wat(path, payloads: list[bytes]) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, body in enumerate(payloads):
            rec = writer.create_warc_record(f"http://p{i}.test/", "metadata", payload=io.BytesIO(body),
                                            warc_content_type="application/json")
            writer.write_record(rec)


def extract(path):
    counts = StageCounts()
    rows = [r for b in extract_file(str(path), ExtractConfig(), counts) for r in b.to_pylist()]
    return rows, counts


def test_image_links_resolution_and_drops(tmp_path, real_envelope):
    page = "https://an.wikipedia.org/wiki/Escopete"
    links = [
        {"path": "A@/href", "url": "/wiki/Other", "text": "a link, not an image"},
        {"path": "IMG@/src", "url": "//upload.wikimedia.org/a.jpg", "alt": "protocol relative"},
        {"path": "IMG@/src", "url": "b.jpg", "alt": "relative to base"},
        {"path": "IMG@/src", "url": "https://x.org/c.png", "title": "title only"},
        {"path": "IMG@/src", "url": "data:image/gif;base64,AA", "alt": "data"},
        {"path": "IMG@/src", "url": "/d.svg", "alt": "svg"},
        {"path": "IMG@/src", "url": "/e.jpg", "alt": ""},
        {"path": "IMG@/src", "alt": "no url"},
        {"path": "IMG@/src", "url": "mailto:x@y.z", "alt": "scheme"},
    ]
    doc = response_doc(real_envelope, page, links, base="/static/")
    write_wat(p := tmp_path / "x.warc.wat.gz", [json.dumps(doc).encode()])
    rows, counts = extract(p)
    assert [(r["url"], r["text"], r["text_source"]) for r in rows] == [
        ("https://upload.wikimedia.org/a.jpg", "protocol relative", "alt"),
        ("https://an.wikipedia.org/static/b.jpg", "relative to base", "alt"),
        ("https://x.org/c.png", "title only", "title"),
    ]
    assert counts.rows_in == 8
    assert dict(counts.dropped) == {"data_url": 1, "svg": 1, "empty_text": 1, "no_url": 1, "non_http_scheme": 1}
    r = rows[0]
    assert r["page_url"] == page and r["page_lang"] == "es" and r["source_format"] == "wat"
    assert r["url_source"] == "wat"


def test_header_names_in_lower_case_give_the_page_language(tmp_path, real_envelope):
    """HTTP/2 captures keep header names in lower case (the real WARC of this page has ``content-language: an``):
    the WAT's page language is read as the WARC's is."""
    doc = response_doc(real_envelope, "http://h.test/", [{"path": "IMG@/src", "url": "c.jpg", "alt": "x"}])
    doc["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["Headers"] = {"content-language": "an"}
    write_wat(p := tmp_path / "x.warc.wat.gz", [json.dumps(doc).encode()])
    rows, _ = extract(p)
    assert rows[0]["page_lang"] == "an"


def test_without_base_links_resolve_against_the_page(tmp_path, real_envelope):
    doc = response_doc(real_envelope, "http://h.test/a/b.html", [{"path": "IMG@/src", "url": "c.jpg", "alt": "x"}])
    write_wat(p := tmp_path / "x.warc.wat.gz", [json.dumps(doc).encode()])
    rows, _ = extract(p)
    assert rows[0]["url"] == "http://h.test/a/c.jpg"


def test_bad_wat_records_are_counted_and_the_rest_kept(tmp_path, real_envelope):
    good = json.dumps(response_doc(real_envelope, "http://h.test/", [
        {"path": "IMG@/src", "url": "/ok.jpg", "alt": "fine"}])).encode()
    bad_links = response_doc(real_envelope, "http://h.test/", [])
    bad_links["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"] = "oops \"IMG@/src\""
    no_html = json.dumps({"Envelope": {"Payload-Metadata": {}}, "note": '"IMG@/src"'}).encode()
    not_object = json.dumps(response_doc(real_envelope, "http://h.test/", [
        "IMG@/src", {"path": "IMG@/src", "url": "/ok2.jpg", "alt": "also fine"}])).encode()
    write_wat(p := tmp_path / "x.warc.wat.gz", [
        good, b'{not json "IMG@/src"', json.dumps(bad_links).encode(), b"[1, 2, 3]", no_html,
        json.dumps(real_envelope).encode(), not_object, good])
    rows, counts = extract(p)
    assert [r["text"] for r in rows] == ["fine", "also fine", "fine"]
    assert counts.events["wat_invalid_json"] == 1
    assert counts.events["wat_malformed_links"] == 2
    assert counts.events["wat_records_without_html"] == 1
    assert counts.events["wat_records_without_images"] == 2


def test_demo_web_wat_matches_generator(tmp_path):
    from witbuild.demo.web import generate_pages
    from witbuild.demo.web import write_wat as demo_wat

    pages = list(generate_pages(40, seed=3))
    demo_wat(pages, p := tmp_path / "d.warc.wat.gz")
    rows, counts = extract(p)
    # a WAT holds only the src attribute: lazy images show their data: placeholder there
    expected = sorted(img.text for pg in pages for img in pg.images
                      if img.text and img.kind != "svg" and not img.src.startswith("data:"))
    assert sorted(r["text"] for r in rows) == expected
    assert counts.rows_out == len(expected)
    assert all(r["url"].startswith("http://demo.witbuild.test/") for r in rows)
