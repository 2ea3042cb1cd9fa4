"""Page encodings as the HTML spec sniffs them: BOM, HTTP charset, ``<meta>``, detection.

Expected texts are what html5lib 1.1 (the spec's reference parser in Python) decodes from the
same bytes with the same transport encoding; for Python codec names, which html5lib does not
know, with the WHATWG label they name. One exception is marked where it occurs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import _may_have_img, extract_file
from witbuild.sources.html import charset_encoding, decode_html, is_html, page_images

ALT = "Café crème à Noël — “quoted” €5"


def page(meta: str = "", alt: str = ALT) -> str:
    return f'<html><head>{meta}</head><body><p>Some text here.</p><img src="a.jpg" alt="{alt}"></body></html>'


def alts(body: bytes, http_charset: str | None) -> tuple[list[str], StageCounts]:
    counts = StageCounts()
    refs, _ = page_images(decode_html(body, http_charset, counts), "http://e.org/", counts)
    return [r.text for r in refs], counts


UTF8_BOM, UTF16LE_BOM, UTF16BE_BOM = b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"


@pytest.mark.parametrize(("body", "http_charset"), [
    (UTF8_BOM + page().encode(), "iso-8859-1"),
    (UTF8_BOM + page('<meta charset="iso-8859-1">').encode(), None),
    (UTF16LE_BOM + page().encode("utf-16-le"), "utf-8"),
    (UTF16LE_BOM + page().encode("utf-16-le"), None),
    (UTF16LE_BOM + page().encode("utf-16-le"), "utf-16"),
    (UTF16BE_BOM + page().encode("utf-16-be"), "windows-1251"),
    (UTF16BE_BOM + page().encode("utf-16-be"), None),
], ids=["utf8-bom-over-header", "utf8-bom-over-meta", "utf16le-bom-over-header", "utf16le-bom",
        "utf16le-bom-and-header", "utf16be-bom-over-header", "utf16be-bom"])
def test_a_byte_order_mark_wins_over_header_and_meta(body, http_charset):
    texts, counts = alts(body, http_charset)
    assert texts == [ALT]
    assert "invalid_bytes_replaced" not in counts.events


def test_the_bom_is_not_part_of_the_text():
    assert decode_html(UTF8_BOM + b"<p>x</p>", None) == "<p>x</p>"
    assert decode_html(UTF16BE_BOM + "<p>x</p>".encode("utf-16-be"), "utf-8") == "<p>x</p>"


@pytest.mark.parametrize("meta", [
    '<meta charset="utf-16">',
    '<meta charset="UTF-16LE">',
    '<meta charset="utf-16be">',
    '<meta http-equiv="Content-Type" content="text/html; charset=utf-16">',
])
def test_a_meta_that_says_utf16_means_utf8(meta):
    """A declaration readable as ASCII cannot be in UTF-16: the spec's prescan reads it as UTF-8."""
    texts, counts = alts(page(meta).encode("utf-8"), None)
    assert texts == [ALT]
    assert "invalid_bytes_replaced" not in counts.events


@pytest.mark.parametrize(("http_charset", "codec"), [("utf-16", "utf-16-le"), ("utf-16le", "utf-16-le"),
                                                     ("UTF-16BE", "utf-16-be")])
def test_utf16_declared_by_http_without_bom(http_charset, codec):
    assert alts(page().encode(codec), http_charset)[0] == [ALT]


RU, KO, ZH, JA = "Старый мост через реку", "한국어 설명 문장 사진", "中文图片说明文字", "日本語の写真の説明"


@pytest.mark.parametrize(("label", "codec", "alt"), [
    ("latin-1", "cp1252", ALT),
    ("iso_8859_1", "cp1252", ALT),
    ("latin1", "latin-1", "Café crème à Noël"),
    ("windows_1251", "cp1251", RU),
    ("cp949", "cp949", KO),
    ("ms949", "cp949", KO),
    ("cp936", "gbk", ZH),
    ("euc-cn", "gb2312", ZH),
    ("cp932", "cp932", JA),
    ("big5hkscs", "big5hkscs", "香港的照片"),
    ("utf-8-sig", "utf-8", ALT),
])
def test_python_codec_names_are_read_as_their_whatwg_encoding(label, codec, alt):
    """Labels outside the WHATWG table that Python names (latin-1 is windows-1252 on the web)."""
    texts, counts = alts(page(alt=alt).encode(codec), label)
    assert texts == [alt]
    assert not counts.events


@pytest.mark.parametrize(("label", "codec", "alt"), [
    ("x-gbk", "gbk", ZH),
    ("x-sjis", "cp932", JA),
    ("windows-874", "cp874", "ภาพถ่ายของแม่น้ำ"),
    ("iso-8859-8-i", "iso8859-8", "תמונה של נהר"),
    ("x-mac-roman", "mac-roman", "Café crème à Noël"),
    ("x-mac-cyrillic", "mac-cyrillic", "Старый мост"),  # a label resiliparse's table lacks
    ("X-Mac-Ukrainian", "mac-cyrillic", "Старий міст"),
])
def test_whatwg_labels_python_lacks(label, codec, alt):
    assert alts(page(alt=alt).encode(codec), label)[0] == [alt]


@pytest.mark.parametrize(("label", "codec", "alt"), [
    ("euc-kr", "cp949", "똠방각하 사진"),  # UHC hangul outside KS X 1001
    ("shift_jis", "cp932", "①番の写真"),  # NEC special characters
    ("big5", "big5hkscs", "香港嘅相"),  # HKSCS
    # GB18030's euro sign: the Encoding Standard decodes gbk with the gb18030 decoder; html5lib
    # uses Python's gbk codec, which lacks it, and gives U+FFFD here
    ("gbk", "gb18030", "中文€图片"),
])
def test_legacy_cjk_labels_decode_with_the_vendor_supersets(label, codec, alt):
    """The WHATWG decoders of these labels are the Microsoft/HKSCS/GB18030 supersets."""
    texts, counts = alts(page(alt=alt).encode(codec), label)
    assert texts == [alt]
    assert "invalid_bytes_replaced" not in counts.events


def test_an_unknown_label_is_absent_not_utf8():
    """The page's ``<meta>`` decides, then detection; the label is counted."""
    body = page('<meta charset="windows-1251">', alt=RU).encode("cp1251")
    for label in ("no-such-charset", "cp850", "base64"):
        texts, counts = alts(body, label)
        assert texts == [RU], label
        assert counts.events["bad_http_charset"] == 1


@pytest.mark.parametrize(("label", "expected"), [
    (None, None), ("", None), ("  ", None), ('"utf-8"', "utf-8"), ("UTF8", "utf-8"), ("latin-1", "cp1252"),
    ("cp949", "euc_kr"), ("windows_1251", "cp1251"), ("unicode", "utf-16-le"), ("nonsense", None),
])
def test_charset_encoding(label, expected):
    assert charset_encoding(label) == expected


def test_utf16_pages_pass_the_image_precheck():
    """UTF-16 has no ASCII ``<img`` bytes: a BOM or a declared charset lets the page be parsed."""
    utf16 = page().encode("utf-16-le")
    assert _may_have_img(UTF16LE_BOM + utf16, None)
    assert _may_have_img(UTF16BE_BOM + page().encode("utf-16-be"), None)
    assert _may_have_img(utf16, "utf-16")
    assert _may_have_img(utf16, "UTF-16LE")
    assert not _may_have_img(utf16, None)
    assert not _may_have_img(b"<html><p>no images</p></html>", "utf-8")


@pytest.mark.parametrize("tag", [b"<img", b"<IMG", b"<iMg", b"<image", b"<IMAGE"])
def test_precheck_and_parser_agree_on_image_tags(tag):
    """Tag names are case-insensitive and ``<image>`` is parsed as ``<img>``."""
    body = b'<html><body>' + tag + b' src="a.jpg" alt="cap"></body></html>'
    assert _may_have_img(body, None)
    assert alts(body, None)[0] == ["cap"]


def test_is_html_sniffs_utf16_with_bom():
    assert is_html(None, (UTF16LE_BOM + "<!DOCTYPE html><html>".encode("utf-16-le"))[:1024])
    assert is_html(None, (UTF16BE_BOM + "<html><body>".encode("utf-16-be"))[:1024])


def warc_response(url: str, content_type: str, payload: bytes) -> bytes:
    """One uncompressed WARC/1.1 response record."""
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
    block = http + payload
    head = (f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\n"
            f"WARC-Date: 2024-05-01T00:00:00Z\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def test_extract_file_finds_the_images_of_utf16_and_image_tag_pages(tmp_path: Path):
    pages = {
        "http://e.org/bom.html": ("text/html", UTF16LE_BOM + page(alt="utf-16 with bom").encode("utf-16-le")),
        "http://e.org/declared.html": ("text/html; charset=utf-16",
                                       page(alt="utf-16 declared").encode("utf-16-le")),
        "http://e.org/be.html": ("text/html", UTF16BE_BOM + page(alt="utf-16be").encode("utf-16-be")),
        "http://e.org/mixed.html": ("text/html", page(alt="mixed case").replace("<img", "<iMg").encode()),
        "http://e.org/image.html": ("text/html", page(alt="image tag").replace("<img", "<image").encode()),
    }
    path = tmp_path / "charsets.warc"
    path.write_bytes(b"".join(warc_response(url, ct, body) for url, (ct, body) in pages.items()))
    counts = StageCounts()
    rows = [r for batch in extract_file(str(path), ExtractConfig(), counts) for r in batch.to_pylist()]
    assert sorted((r["page_url"], r["text"]) for r in rows) == sorted([
        ("http://e.org/bom.html", "utf-16 with bom"), ("http://e.org/declared.html", "utf-16 declared"),
        ("http://e.org/be.html", "utf-16be"), ("http://e.org/mixed.html", "mixed case"),
        ("http://e.org/image.html", "image tag"),
    ])
    assert {r["url"] for r in rows} == {"http://e.org/a.jpg"}


@pytest.mark.parametrize(("label", "codec"), [("x-gbk", "gbk"), ("x-sjis", "shift_jis"), ("windows-874", "cp874"),
                                              ("latin1", "cp1252")])
def test_a_warc_header_charset_reaches_the_decoder_whatever_its_spelling(tmp_path: Path, label: str, codec: str):
    """WHATWG labels Python lacks (x-gbk, x-sjis) and Python names the table lacks (latin1) name the page's
    encoding from the WARC's HTTP header too: decoded as UTF-8, every non-ASCII alt would come out as U+FFFD."""
    text = {"gbk": "中文图片", "shift_jis": "日本語の画像", "cp874": "ภาพ", "cp1252": "Café crème"}[codec]
    path = tmp_path / "label.warc"
    path.write_bytes(warc_response("http://e.org/p.html", f"text/html; charset={label}",
                                   page(alt=text).encode(codec)))
    rows = [r for batch in extract_file(str(path), ExtractConfig(), StageCounts()) for r in batch.to_pylist()]
    assert [r["text"] for r in rows] == [text]
