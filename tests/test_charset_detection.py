"""Pages that name no encoding decode to the text that was written: 396 generated pages in 44 (language, encoding)
cases (``tests/helpers/undeclared_pages.py``), whose captions are known because the test encoded them.

Before, resiliparse's own name mapping turned detected names it lacks into UTF-8: every undeclared EUC-KR page
(uchardet says ``cp949``) and x-mac-cyrillic page lost its text to U+FFFD, as did pages uchardet could not place;
KOI8-U was read as KOI8-R, and valid UTF-8 that uchardet took for a legacy encoding was garbled. 360 of the 396
captions came out right then, 388 now (``benchmarks/bench_charset.py`` prints the table, with Chromium's 249 beside
it: browsers deliberately never detect UTF-8). The corpus and the detector are deterministic, so the counts are
exact on every run; they can move only with the detector's version (resiliparse's uchardet) or wordfreq's lists.
"""

from __future__ import annotations

from collections import Counter

import pytest
from resiliparse.parse.encoding import detect_encoding

from tests.helpers.undeclared_pages import SIZES, UndeclaredPage, undeclared_pages
from witbuild.counters import StageCounts
from witbuild.sources.html import decode_page, page_images

PAGES = undeclared_pages()


def caption_read(page: UndeclaredPage) -> tuple[bool, str]:
    """(whether extract gives the caption as written, the encoding it decoded with)."""
    text, encoding = decode_page(page.body, None)
    refs, _ = page_images(text, "http://example.org/", StageCounts())
    return [r.text for r in refs] == [" ".join(page.caption.split())], encoding


def test_the_corpus_names_no_encoding_and_covers_every_case() -> None:
    assert len(PAGES) == 44 * len(SIZES) * 3
    assert not any(b"charset" in p.body.lower() for p in PAGES)
    assert len({p.body for p in PAGES}) == len(PAGES)
    assert all(not p.caption.isascii() for p in PAGES)


def test_every_page_with_a_paragraph_decodes_to_the_text_written() -> None:
    wrong = [(p.language, p.codec, p.size, p.seed, caption_read(p)[1]) for p in PAGES
             if p.size != "caption" and not caption_read(p)[0]]
    assert not wrong


def test_every_utf8_page_reads_as_utf8_even_where_detection_says_otherwise() -> None:
    """Three of these 72 pages uchardet takes for windows-1258, windows-1250 or windows-1252."""
    utf8 = [p for p in PAGES if p.codec == "utf-8"]
    assert Counter(caption_read(p) for p in utf8) == {(True, "utf-8"): 72}


def test_captions_alone_decode_right_on_nearly_every_page() -> None:
    """Six words in a page of ASCII markup. The eight misses (measured): cp866, cp1251 and three KOI8-U captions
    taken for windows-1252, a cp1257 one too, a Persian windows-1256 one for ISO-8859-6, a Turkish one for
    windows-1258."""
    captions = [p for p in PAGES if p.size == "caption"]
    assert sum(caption_read(p)[0] for p in captions) >= 124  # of 132


@pytest.mark.parametrize(("language", "codec", "encoding"), [
    ("ko", "cp949", "euc_kr"),  # uchardet says cp949: was UTF-8, every hangul U+FFFD
    ("ru", "mac_cyrillic", "mac-cyrillic"),  # was UTF-8
    ("uk", "koi8_u", "koi8-u"),  # uchardet says KOI8-R: і ї є ґ were box drawing
    ("ru", "koi8_r", "koi8-r"),  # no KOI8-U letter: stays KOI8-R
    ("ja", "iso2022_jp", "iso2022_jp"),  # all ASCII bytes, yet not UTF-8
])
def test_detected_encodings_outside_resiliparses_table(language: str, codec: str, encoding: str) -> None:
    pages = [p for p in PAGES if (p.language, p.codec, p.size) == (language, codec, "long")]
    assert [caption_read(p) for p in pages] == [(True, encoding)] * 3


def test_bytes_nothing_places_are_windows_1252_unless_valid_utf8() -> None:
    """Pages uchardet gives no answer for (measured: a Czech, a Lithuanian and a Portuguese caption) read as
    windows-1252, the browsers' default, where they read as UTF-8 before: U+FFFD for every letter not ASCII."""
    unplaced = [p for p in PAGES if detect_encoding(p.body, max_len=65536, html5_compatible=False) is None]
    assert unplaced
    assert {caption_read(p)[1] for p in unplaced} == {"cp1252"}
    assert all(caption_read(p)[0] for p in unplaced if p.codec == "cp1252")
    assert decode_page(b"<p>\xff\xfe\xfd\xfc</p>", None) == ("<p>\xff\xfe\xfd\xfc</p>", "cp1252")


@pytest.mark.parametrize(("meta", "codec", "mojibake"), [
    ("windows-1252", "cp1252", "CafÃ© Ã Paris"),  # à is C3 A0: Ã and a no-break space
    ("windows-1251", "cp1251", "CafГ© Г Paris"),
])
def test_a_meta_charset_wins_over_valid_utf8_bytes(meta: str, codec: str, mojibake: str) -> None:
    """The HTML spec's order: a ``<meta>`` names the encoding before any detection, as a browser reads it."""
    body = f'<html><head><meta charset="{meta}"></head><body><img src="a.jpg" alt="Café à Paris"></body></html>'
    text, encoding = decode_page(body.encode(), None)
    assert encoding == codec
    assert [r.text for r in page_images(text, "http://example.org/", StageCounts())[0]] == [mojibake]


def test_the_benchmark_runs_and_prints_the_same_count(tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_charset.py"), "--no-browser", "--repeat",
                          "1"], capture_output=True, text=True, timeout=300, check=True).stdout
    right = sum(caption_read(p)[0] for p in PAGES)
    all_row = next(line for line in out.splitlines() if line.startswith("all "))
    assert all_row.split()[1:4] == [str(right), "/", "396"]
