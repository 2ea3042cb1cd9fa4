"""Image references from HTML: URL attributes, resolution, text, language, charsets, drops."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from witbuild.counters import StageCounts
from witbuild.sources.html import PICTURE_SOURCE_TYPES, decode_html, decode_page, is_html, page_images, query_codec
from witbuild.sources.urls import classify, largest_srcset_candidate, parse_srcset, resolve

PAGE = "http://example.org/dir/page.html"


def refs_of(html: str, **kw):
    counts = StageCounts()
    refs, lang = page_images(html, PAGE, counts, **kw)
    return [(r.url, r.text, r.text_source, r.url_source) for r in refs], lang, counts


def test_relative_protocol_relative_and_absolute_urls():
    refs, _, counts = refs_of(
        '<img src="a.jpg" alt="one"><img src="/b.png" alt="two"><img src="//cdn.example.net/c.jpg" alt="three">'
        '<img src="https://x.org/d.jpg" alt="four"><img src="../e.jpg" alt="five">'
    )
    assert [r[0] for r in refs] == [
        "http://example.org/dir/a.jpg",
        "http://example.org/b.png",
        "http://cdn.example.net/c.jpg",
        "https://x.org/d.jpg",
        "http://example.org/e.jpg",
    ]
    assert counts.rows_in == 5 and counts.rows_out == 5 and counts.rows_dropped == 0


def test_base_href_is_used_and_itself_resolved():
    refs, _, _ = refs_of('<head><base href="/static/v2/"></head><body><img src="x.jpg" alt="cap"></body>')
    assert refs[0][0] == "http://example.org/static/v2/x.jpg"


def test_largest_srcset_candidate_wins_by_default():
    html = '<img src="s.jpg" srcset="s.jpg 320w, m.jpg 640w, l.jpg 1280w" alt="big">'
    refs, _, _ = refs_of(html)
    assert refs == [("http://example.org/dir/l.jpg", "big", "alt", "srcset")]
    refs, _, _ = refs_of(html, url_attrs=("src", "srcset"))
    assert refs[0][0] == "http://example.org/dir/s.jpg"


def test_lazy_loading_placeholder_falls_back_to_data_src():
    refs, _, counts = refs_of('<img src="data:image/gif;base64,R0lGOD" data-src="/real.jpg" alt="lazy">')
    assert refs == [("http://example.org/real.jpg", "lazy", "alt", "data-src")]
    assert counts.rows_dropped == 0
    assert "lazy_url_over_src" not in counts.events  # a data: placeholder was never a usable image


# What the common lazy loaders write (their documentation's markup): the image in their attribute, a placeholder
# in src that is often a real URL. Taking src would pair the caption with the site's blank or "loading" picture.
LAZY_LOADERS = {
    "lazysizes": ('<img src="/img/placeholder.png" data-src="/photos/cat.jpg" class="lazyload" alt="a cat">',
                  "http://example.org/photos/cat.jpg", "data-src"),
    "lazysizes srcset": ('<img src="/img/lqip.jpg" srcset="/img/lqip.jpg 20w" data-sizes="auto" class="lazyload" '
                         'data-srcset="/photos/cat-300.jpg 300w, /photos/cat-900.jpg 900w" alt="a cat">',
                         "http://example.org/photos/cat-900.jpg", "data-srcset"),
    "jquery lazy load": ('<img class="lazy" src="/images/grey.gif" data-original="/photos/cat.jpg" width="640" '
                         'height="480" alt="a cat">', "http://example.org/photos/cat.jpg", "data-original"),
    "wp rocket": ('<img width="640" height="480" src="/wp-content/plugins/rocket/blank.gif" '
                  'data-lazy-src="/wp-content/uploads/cat.jpg" data-lazy-srcset="/wp-content/uploads/cat.jpg 640w, '
                  '/wp-content/uploads/cat-1280.jpg 1280w" alt="a cat">',
                  "http://example.org/wp-content/uploads/cat-1280.jpg", "data-lazy-srcset"),
}


@pytest.mark.parametrize("loader", sorted(LAZY_LOADERS))
def test_lazy_loaders_image_wins_over_their_placeholder_src(loader: str) -> None:
    html, url, attr = LAZY_LOADERS[loader]
    refs, _, counts = refs_of(html)
    assert refs == [(url, "a cat", "alt", attr)]
    assert counts.events["lazy_url_over_src"] == 1  # the stage report says how often src was a placeholder
    # a reader of src alone (cc2dataset, a WAT's IMG@/src) pairs the caption with the placeholder
    assert refs_of(html, url_attrs=("srcset", "src"))[0][0][0] != url


def test_lazy_attribute_naming_the_src_image_counts_no_placeholder():
    refs, _, counts = refs_of('<img src="/a.jpg" data-src="http://example.org/a.jpg" alt="one image">')
    assert refs == [("http://example.org/a.jpg", "one image", "alt", "data-src")]
    assert "lazy_url_over_src" not in counts.events


def test_unusable_lazy_attribute_falls_through_to_src():
    refs, _, counts = refs_of('<img src="/a.jpg" data-src="javascript:void(0)" data-original="  " alt="plain">')
    assert refs == [("http://example.org/a.jpg", "plain", "alt", "src")]
    assert counts.rows_dropped == 0


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ('<img src="data:image/png;base64,AAAA" alt="x">', "data_url"),
        ('<img src="javascript:void(0)" alt="x">', "javascript_url"),
        ('<img src="ftp://h/x.jpg" alt="x">', "non_http_scheme"),
        ('<img src="/logo.svg" alt="x">', "svg"),
        ('<img src="/logo.SVGZ?v=1" alt="x">', "svg"),
        ('<img alt="x">', "no_url"),
        ('<img src="   " alt="x">', "no_url"),
        ('<img src="a.jpg">', "empty_text"),
        ('<img src="a.jpg" alt="   ">', "empty_text"),
        # a <picture> without a usable source: the <img>'s own reason
        ('<picture><source type="image/jxl" srcset="a.jxl"><img alt="x"></picture>', "no_url"),
        ('<picture><source srcset="data:image/png;base64,AAAA"><img src="data:image/gif;base64,R0" alt="x">'
         '</picture>', "data_url"),
        ('<picture><source srcset="/logo.svg"><img alt="x"></picture>', "no_url"),
        ('<div><source srcset="a.jpg"><img alt="x"></div>', "no_url"),  # a <source> outside a <picture>
        ('<picture><source srcset="a.jpg"><img></picture>', "empty_text"),
    ],
)
def test_drop_reasons(tag, reason):
    refs, _, counts = refs_of(tag)
    assert refs == []
    assert counts.dropped == {reason: 1}


def test_title_when_alt_missing_and_empty_text_kept_when_configured():
    refs, _, _ = refs_of('<img src="a.jpg" title="From title">')
    assert refs[0][1:3] == ("From title", "title")
    refs, _, counts = refs_of('<img src="a.jpg">', keep_empty_text=True)
    assert refs[0][1:3] == ("", "none") and counts.rows_dropped == 0


def test_entities_whitespace_and_huge_alt():
    refs, _, counts = refs_of(
        f'<img src="a.jpg" alt="  Fish &amp;\n chips &eacute;t&eacute; "><img src="b.jpg" alt="{"word " * 20000}">',
        max_text_chars=1000,
    )
    assert refs[0][1] == "Fish & chips été"
    assert len(refs[1][1]) <= 1000
    assert counts.events["text_truncated"] == 1


def test_page_language_sources():
    assert refs_of('<html lang="en-GB"><img src="a.jpg" alt="x"></html>')[1] == "en-gb"
    assert refs_of('<meta http-equiv="Content-Language" content="de, en"><img src="a.jpg" alt="x">')[1] == "de"
    assert refs_of('<img src="a.jpg" alt="x">', content_language="fr")[1] == "fr"
    assert refs_of('<img src="a.jpg" alt="x">')[1] is None


def test_srcset_parsing():
    assert parse_srcset("a.jpg 1x, b.jpg 2x") == [("a.jpg", 1.0), ("b.jpg", 2.0)]
    assert largest_srcset_candidate("a.jpg 1.5x, b.jpg 2x, c.jpg") == "b.jpg"
    assert (
        largest_srcset_candidate("https://h/img,w_100.jpg 100w, https://h/img,w_900.jpg 900w")
        == "https://h/img,w_900.jpg"
    )
    assert largest_srcset_candidate("  ") is None
    # the standard drops a candidate with invalid descriptors (checked against Chromium in test_browser_reference)
    assert parse_srcset("big.jpg 5q, a.jpg 100w 2x, b.jpg 100.5w, c.jpg 2x 100h, d.jpg 1X, e.jpg 0w, ok.jpg") == [
        ("ok.jpg", 1.0)]
    assert parse_srcset("a.jpg 1x (foo, bar), b.jpg 200w 100h") == [("b.jpg", 200e6)]
    assert parse_srcset("a.jpg 1e1x,b.jpg 0x") == [("a.jpg", 10.0), ("b.jpg", 0.0)]
    assert largest_srcset_candidate("a.jpg 2X") is None  # the <img> then shows its src
    assert refs_of('<img srcset="a.jpg 2X" src="b.jpg" alt="upper-case unit">')[0][0][0] == "http://example.org/dir/b.jpg"


def test_url_helpers():
    assert resolve("//h.org/x.jpg", "https://a.org/p") == "https://h.org/x.jpg"
    assert resolve("http://[bad/x.jpg", "https://a.org/") is None  # no URL: the image is dropped as invalid_url
    assert refs_of('<img src="http://[bad/x.jpg" alt="x">')[2].dropped == {"invalid_url": 1}
    # as a browser forms them (the WHATWG URL standard; checked against Chromium in test_browser_reference)
    assert resolve("\\img\\a b.jpg", "http://a.org/d/p") == "http://a.org/img/a%20b.jpg"
    assert resolve("HTTP://B\u00dcCHER.example:80/./x/../caf\u00e9.jpg", "http://a.org/") == (
        "http://xn--bcher-kva.example/caf%C3%A9.jpg")
    assert resolve("http://0x7f.1/a.jpg", "http://a.org/") == "http://127.0.0.1/a.jpg"
    assert resolve("/x.jpg", "not a url") is None and resolve("https://h.org/x.jpg", "not a url") == (
        "https://h.org/x.jpg")
    assert classify("http://[bad/x.jpg") == "invalid_url"
    assert classify("https://h.org/x.svg.png") is None


def test_a_legacy_page_writes_its_url_queries_in_its_encoding():
    """As browsers do (checked against Chromium in test_browser_reference): only the query, and only its non-ASCII
    characters; a character the encoding lacks as its &#N; reference; UTF-8 and UTF-16 pages write UTF-8."""
    from witbuild.sources.urls import encode_query

    assert encode_query("/路径.jpg?q=中文&x=1#片", "gbk") == "/路径.jpg?q=%D6%D0%CE%C4&x=1#片"
    assert encode_query("a.jpg?q=😀", "gbk") == "a.jpg?q=%26%23128512%3B"
    assert encode_query("a.cgi?q=①", "cp932") == "a.cgi?q=%87@"  # a printable second byte stays
    assert encode_query("a.jpg#x?q=中", "gbk") == "a.jpg#x?q=中"  # a ? in the fragment starts no query
    assert encode_query("a?q=東京 x", "iso2022_jp") == "a?q=%1B$BEl5~%1B(B%20x"  # one escape for the run
    body = '<meta charset="windows-1251"><img src="/фото.jpg?q=мост" alt="мост">'.encode("cp1251")
    html, encoding = decode_page(body, None)
    refs, _ = page_images(html, PAGE, StageCounts(), encoding=encoding)
    assert refs[0].url == "http://example.org/%D1%84%D0%BE%D1%82%D0%BE.jpg?q=%EC%EE%F1%F2"
    assert page_images(html, PAGE, StageCounts())[0][0].url.endswith("?q=%D0%BC%D0%BE%D1%81%D1%82")  # UTF-8
    for utf in ("utf-8", "utf-16-le", None, "x-user-defined", "no-such-codec"):
        assert query_codec(utf) is None
    assert (query_codec("gbk"), query_codec("shift_jis"), query_codec("cp1251")) == ("gbk", "cp932", "cp1251")


def test_charset_header_then_meta_then_detection():
    russian = "<html><body><img src='a.jpg' alt='Старый мост через реку'></body></html>"
    body = russian.encode("cp1251")
    # header wins over a wrong meta
    meta_wrong = b'<meta charset="utf-8">' + body
    assert "Старый мост" in decode_html(meta_wrong, "windows-1251")
    # meta when there is no header
    assert "Старый мост" in decode_html(b'<meta charset="windows-1251">' + body, None)
    # detection when neither says
    chinese = ("<html><body>" + "<p>这是一个关于山上的老房子的中文网页，内容丰富。</p>" * 20 + "</body></html>").encode(
        "gbk"
    )
    assert "山上的老房子" in decode_html(chinese, None)
    # a bogus header charset is ignored and counted
    counts = StageCounts()
    assert "Старый мост" in decode_html(b'<meta charset="windows-1251">' + body, "no-such-charset", counts)
    assert counts.events["bad_http_charset"] == 1


def test_invalid_utf8_is_replaced_not_fatal():
    counts = StageCounts()
    text = decode_html(b"<p>caf\xc3\xa9 \xff\xfe broken</p>", "utf-8", counts)
    assert "café" in text and "\ufffd" in text
    assert counts.events["invalid_bytes_replaced"] == 1


def test_is_html_by_type_and_sniffing():
    assert is_html("text/html; charset=utf-8", b"")
    assert not is_html("image/jpeg", b"<html>")
    assert not is_html("application/pdf", b"%PDF-1.4")
    assert is_html(None, b"  <!DOCTYPE html><html>")
    assert is_html(None, b'<div class="navi"><img src=x>')
    assert not is_html(None, b"\x89PNG\r\n")
    # as the MIME Sniffing standard sniffs: a pattern at the start, then a space or ">"
    assert is_html(None, b"\r\n\t<P>text") and is_html("unknown/unknown", b"<!-- c --><html>")
    assert is_html(None, b"\xef\xbb\xbf<html lang=en>") and is_html("*/*", b"<a href=x>")
    assert not is_html(None, b"<pre>x") and not is_html(None, b"<img src=x alt=y>")
    assert not is_html(None, b"Our guide: wrap paragraphs in <p> and images in <img src=x alt=y>.")
    # a README quoting markup, a binary blob: text to show or a file to save in a browser, never a page
    assert not is_html("text/plain; charset=utf-8", b'<p>Build <img src="docs/logo.png" alt="Build Status"></p>')
    assert not is_html("application/octet-stream", b"<html><body><img src=bin.jpg alt='from a binary blob'>")


def test_typeless_and_text_plain_records_of_a_warcio_file(tmp_path):
    """End to end through a file warcio writes: only the page a browser would render gives its pair."""
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from witbuild.config import ExtractConfig
    from witbuild.extract import extract_file

    bodies = {"http://s.test/readme.md": ("text/plain", b'<p><img src="logo.png" alt="Build Status"></p>'),
              "http://s.test/blob": ("application/octet-stream", b'<html><img src="b.jpg" alt="a blob"></html>'),
              "http://s.test/notype": (None, b'%PDF-1.4 <img src="pdf.jpg" alt="from the pdf">'),
              "http://s.test/page": (None, b'<!DOCTYPE html>\n<html><img src="cat.jpg" alt="a grey cat"></html>')}
    path = tmp_path / "mixed.warc.gz"
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, (ctype, body) in bodies.items():
            headers = [("Content-Length", str(len(body)))] + ([("Content-Type", ctype)] if ctype else [])
            writer.write_record(writer.create_warc_record(
                url, "response", payload=BytesIO(body),
                http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")))
    counts = StageCounts()
    rows = [r for batch in extract_file(str(path), ExtractConfig(), counts) for r in batch.to_pylist()]
    assert [(r["url"], r["text"]) for r in rows] == [("http://s.test/cat.jpg", "a grey cat")]
    assert counts.events["non_html_responses"] == 3


def test_revisits_of_another_url_are_counted_apart(tmp_path):
    """A deduplicating crawler (warcprox, Heritrix) stores a page whose bytes it saw at another URL as a revisit:
    its own pairs (relative URLs resolved against it) are not read, and the count says how many such pages."""
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from witbuild.config import ExtractConfig
    from witbuild.extract import extract_file

    body = b'<!DOCTYPE html><html><img src="pic.jpg" alt="the same page"></html>'
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))],
                               protocol="HTTP/1.1")
    path = tmp_path / "dedup.warc.gz"
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        original = writer.create_warc_record("http://s.test/a/same.html", "response", payload=BytesIO(body),
                                             http_headers=headers)
        writer.write_record(original)
        digest = original.rec_headers.get_header("WARC-Payload-Digest")
        date = original.rec_headers.get_header("WARC-Date")
        for url, refers in (("http://s.test/a/same.html", "http://s.test/a/same.html"),
                            ("http://s.test/b/same.html", "http://s.test/a/same.html")):
            writer.write_record(writer.create_revisit_record(url, digest, refers, date, http_headers=headers))
    counts = StageCounts()
    rows = [r for batch in extract_file(str(path), ExtractConfig(), counts) for r in batch.to_pylist()]
    assert [r["url"] for r in rows] == ["http://s.test/a/pic.jpg"]
    assert counts.events["revisit_records"] == 2 and counts.events["revisit_records_of_other_urls"] == 1


def test_fast_classifier_agrees_with_urlsplit():
    """classify's fast path gives exactly the full parse's answer on URLs as the resolver forms them."""
    import random

    from witbuild.sources.urls import Resolver, _classify_slow

    rng = random.Random(0)
    bases = ["http://h.org/a/b/page.html", "https://h.org", "https://h.org/dir/", "http://h.org:8080/a/b?q=1#f",
             "https://user@h.org/x/y/", "http://h.org/a/b/c/d.php;p=1"]
    parts = ["img", "a", "..", ".", "b c", "x.jpg", "y.SVG", "z.png?w=1", "#frag", "?q=2", "%20", "é.jpg", "a:b",
             "", "~u", "x.svg#a", "index", "a\tb", "x\n.jpg", ".\r\n.", "\t", "sv\ng", "x.svgz", "a\\b"]
    prefixes = ["", "/", "//cdn.org/", "./", "../", "http://o.org/", "https://o.org:443/", "HTTP://O.org/",
                "ftp://f/", "mailto:", "  ", "\t", "\n//cdn.org/", "ht\ttp://o.org/", "https:/\n/o.org/",
                "/\t/cdn.org/", ".\n./", "java\tscript:", " \r\nhttp://o.org/", "\\\\cdn.org\\"]
    suffixes = ["", "", "", "\n", " \t", "\r\n"]
    resolved = 0
    for _ in range(30000):
        base = rng.choice(bases)
        url = (rng.choice(prefixes) + "/".join(rng.choice(parts) for _ in range(rng.randint(0, 4)))
               + rng.choice(suffixes))
        got = resolve(url, base)
        assert Resolver(base).image_url(url)[0] in (got, None), (base, url)
        if got is not None:
            resolved += 1
            assert classify(got) == _classify_slow(got), got
    assert resolved > 25000


@pytest.mark.parametrize(("raw", "expected"), [
    ("http://h.org/a\n.jpg", ("http://h.org/a.jpg", None)),
    ("/a\t.jpg", ("http://example.org/a.jpg", None)),
    ("\x00 /a.jpg\x1f", ("http://example.org/a.jpg", None)),
    ("\u00a0img/b.jpg\u3000", ("http://example.org/dir/img/b.jpg", None)),
    ("https://h.org/long/\r\n  path.jpg", ("https://h.org/long/%20%20path.jpg", None)),
    ("//cdn.org/\nlogo.sv\ng", (None, "svg")),
    ("java\nscript:alert(1)", (None, "javascript_url")),
    ("\tdata:image/gif;base64,R0lGOD", (None, "data_url")),
    ("\x01\t\n", (None, "no_url")),
])
def test_image_urls_lose_tab_newlines_and_edge_controls(raw, expected):
    """As a browser's URL parser reads them: tab/CR/LF anywhere, C0 controls and spaces at the ends."""
    from witbuild.sources.urls import Resolver

    assert Resolver(PAGE).image_url(raw) == expected


def test_page_images_with_newlines_in_urls():
    refs, _, counts = refs_of('<img src="http://h.org/a\n.jpg" alt="nl"><img src="/a\t.jpg" alt="tab">'
                              '<img src="java\nscript:alert(1)" alt="js">')
    assert [r[0] for r in refs] == ["http://h.org/a.jpg", "http://example.org/a.jpg"]
    assert counts.dropped == {"javascript_url": 1}


# ------------------------------------------------------------------------------------------------ <picture>
# The markup below follows what sites write (MDN's <picture> examples; WordPress's WebP plugins and lazysizes'
# data-srcset on <source>): the <img> inside is the fallback, and names the image itself in nearly every page.


def test_picture_img_with_its_own_src_keeps_it():
    refs, _, _ = refs_of('<picture><source type="image/webp" srcset="a.webp"><img src="a.jpg" alt="cat"></picture>')
    assert refs == [("http://example.org/dir/a.jpg", "cat", "alt", "src")]


def test_picture_img_without_a_url_takes_the_first_decodable_source():
    html = ('<picture><source type="image/jxl" srcset="a.jxl 1x, a2.jxl 2x">'
            '<source type="image/webp" srcset="b.webp 640w, b-large.webp 1280w" media="(min-width: 800px)">'
            '<source srcset="c.jpg"><img alt="a red boat"></picture>')
    refs, _, counts = refs_of(html)
    assert refs == [("http://example.org/dir/b-large.webp", "a red boat", "alt", "source_srcset")]
    assert counts.rows_in == 1 and counts.rows_out == 1 and counts.rows_dropped == 0
    refs, _, _ = refs_of('<picture><source type="Image/AVIF" srcset="a.avif"><img alt="boat"></picture>')
    assert refs == [("http://example.org/dir/a.avif", "boat", "alt", "source_srcset")]


@pytest.mark.parametrize("mime", PICTURE_SOURCE_TYPES)
def test_the_download_decodes_every_picture_source_type_taken(mime):
    """img2dataset decodes what it fetches with OpenCV's imdecode: an image of each type taken from a <source>,
    written by Pillow, must decode to its pixels there, or the pair would be taken only to fail in the download."""
    image = Image.new("RGB", (48, 32), (200, 30, 40))
    buf = io.BytesIO()
    image.save(buf, {"jpg": "JPEG"}.get(mime.split("/")[1], mime.split("/")[1].upper()))
    decoded = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape[:2] == (32, 48)
    assert abs(int(decoded[16, 24, 2]) - 200) < 16 and abs(int(decoded[16, 24, 0]) - 40) < 16  # BGR


def test_picture_lazy_placeholder_takes_the_source_data_srcset():
    html = ('<picture><source type="image/webp" data-srcset="/img/boat.webp">'
            '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="boat" class="lazyload"></picture>')
    refs, _, _ = refs_of(html)
    assert refs == [("http://example.org/img/boat.webp", "boat", "alt", "source_data-srcset")]
    # extract.url_attrs decides for the sources too: without data-srcset the placeholder is all there is
    refs, _, counts = refs_of(html, url_attrs=("srcset", "src", "data-src"))
    assert refs == [] and counts.dropped == {"data_url": 1}


def test_a_source_of_another_picture_is_never_taken():
    html = ('<picture><source srcset="one.jpg"><img src="one-fallback.jpg" alt="first"></picture>'
            '<picture><img alt="second"></picture>')
    refs, _, counts = refs_of(html)
    assert refs == [("http://example.org/dir/one-fallback.jpg", "first", "alt", "src")]
    assert counts.dropped == {"no_url": 1}


def test_markup_that_would_take_the_parser_quadratic_time_is_skipped_and_counted():
    """300,000 nested <div>s (1.5 MB) took lexbor minutes, one <img> with 100,000 attributes 24 s: such pages are
    counted and skipped before parsing; pages at the limits, and big ordinary pages, are parsed as before."""
    from witbuild.sources.html import MAX_ATTRIBUTES, MAX_OPEN_ELEMENTS

    img = '<img src="a.jpg" alt="a red kite">'
    deep = "markup_too_deep"
    crafted = [(deep, "<body>" + "<div>" * 300_000 + img),
               (deep, "<body>" + "<div>" * 8_000 + "<p>x</p>" * 300_000 + img),  # each </p> walks the 8,000
               # end tags the parser ignores close nothing: an end tag past a special element, one never opened,
               # <x/> outside SVG and MathML
               (deep, "<body>" + "<span><div></span>" * 50_000 + img), (deep, "<body>" + "<div></b>" * 50_000 + img),
               (deep, "<body>" + "<div/>" * 50_000 + img), (deep, "<body>" + "<svg><g>" * 50_000 + img),
               ("markup_too_many_attributes",
                "<body><img " + " ".join(f"a{i}=1" for i in range(100_000)) + ">" + img)]
    for reason, html in crafted:
        counts = StageCounts()
        assert page_images(html, "http://s.test/", counts) == ([], None)
        assert counts.events == {reason: 1} and counts.rows_in == 0
    fine = {"at the depth limit": "<body>" + "<div>" * MAX_OPEN_ELEMENTS + "<span>x</span>" * 10_000 + img,
            "deep but closed": "<body>" + "<div><span>x</span></div>" * 50_000 + img,
            "optional end tags": "<body><table>" + "<tr><td><p>x<li>y" * 20_000 + "</table>" + img,
            # ends the parser implies, on pages real sites write (each 5-8 levels deep to lexbor and Chromium)
            "links without </a>": "<body><div>" + '<a href="/p">page</a> <a href="/q">next' * 5_000 + img,
            "an old table of <font>s": "<body><table>" + "<tr><td><font size=2>text</td>" * 2_100 + "</table>"
            + img,
            "a list of links": "<body><ul>" + '<li><a href="/x">x' * 5_000 + "</ul>" + img,
            "paragraphs of open spans": "<body>" + "<p><span>a <b>b</b> c</p>" * 3_000 + img,
            # an XHTML <iframe/> is the start of text to the parser: the rest of the page, read once
            "self-closed iframes": "<body>" + img + '<p><iframe src="/x"/></p>' * 3_000,
            # what is not a tag, or closes at once: SVG's <path/>, a script's i<n, comments
            "inline SVG": "<body><svg>" + '<path d="M0 0"/><rect/>' * 6_000 + "</svg>" + img,
            "a script": "<body><script>" + "for(var i=0;i<n;i++){a<b}" * 9_000 + "</script>" + img,
            "comments": "<body>" + "<!-- x <a -->" * 9_000 + img,
            "at the attribute limit": "<body><img " + " ".join(f"a{i}=1" for i in range(MAX_ATTRIBUTES)) + ">" + img,
            "a long data URI": f'<body><img src="data:image/png;base64,{"A" * 500_000}">' + img}
    for what, html in fine.items():
        counts = StageCounts()
        refs, _ = page_images(html, "http://s.test/", counts)
        assert [(r.url, r.text) for r in refs] == [("http://s.test/a.jpg", "a red kite")], what
        assert not any(k.startswith("markup_") for k in counts.events), what
