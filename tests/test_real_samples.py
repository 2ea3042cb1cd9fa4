"""Exact counts on real Common Crawl and ClueWeb samples (../shared/data/warc).

Expected numbers were checked against the raw HTML: the only ``<img`` a regular expression
finds that the parser does not are inside scripts (``document.writeln("<img ...")``) and HTML
comments, which a browser does not render either.
"""

from __future__ import annotations

import pytest

from witbuild.config import ExtractConfig
from witbuild.counters import StageCounts
from witbuild.extract import extract_file

WIKI = "cc-main-2024-22-wikipedia-page.warc.gz"


def extract(path, **cfg):
    counts = StageCounts()
    rows = [r for b in extract_file(str(path), ExtractConfig(**cfg), counts) for r in b.to_pylist()]
    return rows, counts


@pytest.mark.parametrize(
    ("name", "records", "html_pages", "imgs", "kept", "dropped"),
    [
        ("cc-main-2020-34-excerpt.warc.gz", 50, 16, 153, 32, {"empty_text": 117, "no_url": 4}),
        (WIKI, 4, 1, 13, 5, {"empty_text": 6, "svg": 2}),
        # ClueWeb09 stores HTTP headers with bare LF line ends; the header block ends at the first
        # blank line. Candidates and pairs match warcio + html5lib on the same file (1,252 images
        # with a usable URL, 556 with text, 29 HTML pages).
        ("clueweb09-quirk.warc.gz", 30, 29, 1252, 556, {"empty_text": 696}),
    ],
)
def test_exact_counts(shared_warc, name, records, html_pages, imgs, kept, dropped):
    rows, counts = extract(shared_warc / name)
    assert counts.events["records_read"] == records
    assert counts.events["html_pages"] == html_pages
    assert counts.rows_in == imgs
    assert counts.rows_out == kept == len(rows)
    assert dict(counts.dropped) == dropped
    assert all(r["url"].startswith(("http://", "https://")) for r in rows)
    assert len({r["uid"] for r in rows}) == len({(r["url"], r["text"]) for r in rows})


def test_wikipedia_page_by_hand(shared_warc):
    """The 7 non-empty alts of the page: 2 are SVG logos (dropped), 5 kept with absolute URLs."""
    rows, _ = extract(shared_warc / WIKI)
    got = [(r["text"], r["url"]) for r in rows]
    thumb = "https://upload.wikimedia.org/wikipedia/commons/thumb"
    assert got == [
        ("Escudo d'armas",
         f"{thumb}/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/140px-Escudo_de_Escopete_%28Guadalajara%29.svg.png"),
        ("Escopete ubicada en Castiella-La Mancha",
         f"{thumb}/9/9c/Castilla-La_Mancha-loc.svg/500px-Castilla-La_Mancha-loc.svg.png"),
        ("Escopete", f"{thumb}/d/d2/Map_pointer.svg/24px-Map_pointer.svg.png"),
        ("Wikimedia Foundation", "https://an.wikipedia.org/static/images/footer/wikimedia-button-2x.png"),
        ("Powered by MediaWiki", "https://an.wikipedia.org/static/images/footer/poweredby_mediawiki_176x62.png"),
    ]
    r = rows[0]
    assert r["page_url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert r["page_lang"] == "an"
    assert r["text_source"] == "alt" and r["url_source"] == "srcset"
    assert r["record_offset"] == 1023
    assert r["crawl_date"].isoformat() == "2024-05-18T01:58:10+00:00"
    # with src preferred, the page's own (protocol-relative) src is kept, resolved to https
    rows_src, _ = extract(shared_warc / WIKI, url_attrs=["src"])
    assert rows_src[0]["url"] == (
        f"{thumb}/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/70px-Escudo_de_Escopete_%28Guadalajara%29.svg.png")


def test_gbk_and_cp1251_pages_decode(shared_warc):
    rows, counts = extract(shared_warc / "cc-main-2020-34-excerpt.warc.gz")
    texts = {r["page_url"]: [] for r in rows}
    for r in rows:
        texts[r["page_url"]].append(r["text"])
    assert "中国新闻网" in texts["http://003338.cn/l41/481397.html"]  # GBK, charset from <meta>
    russian = [t for url, ts in texts.items() if url.startswith("http://01spb.ru/") for t in ts]
    assert russian and all(any("а" <= ch <= "я" for ch in t.lower()) for t in russian)  # cp1251 header
    assert counts.events.get("invalid_bytes_replaced", 0) == 0


def test_clueweb_quirks_dates_and_charsets(shared_warc):
    rows, counts = extract(shared_warc / "clueweb09-quirk.warc.gz")
    # WARC/0.18 with an invalid WARC-Date ("2008-10-294T..."): kept, date null
    assert all(r["crawl_date"] is None for r in rows)
    assert any("ヘッドポーター" in r["text"] for r in rows)  # EUC-JP / Shift_JIS detected
    assert counts.events.get("invalid_bytes_replaced", 0) == 0
    # bare-LF HTTP headers: the page starts right after them, so each page's banner (its first
    # image, a few lines into the HTML) is found, with its text decoded as the header's EUC-JP
    banners = [r for r in rows if r["url"].endswith("/design/porter/index-image/header-1.jpg")]
    assert len(banners) == 29 and all(r["text"].startswith("ヘッドポータ") for r in banners)


def test_real_wat_envelope_without_links(shared_warc):
    rows, counts = extract(shared_warc / "cc-main-2024-22-wikipedia-page.warc.wat.gz")
    assert rows == []
    assert counts.events["records_read"] == 2
    assert counts.events["wat_records_without_images"] == 1  # a request's metadata: not even parsed
