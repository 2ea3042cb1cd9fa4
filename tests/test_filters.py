"""Caption normalisation and filters: each reason with captions that must and must not trigger it."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from witbuild.text import filters as F
from witbuild.text.filters import FilterConfig, filter_texts, reason_counts
from witbuild.text.normalize import normalize_batch, normalize_text

# ------------------------------------------------------------------------------------------------ normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("caf&eacute; &lt;b&gt; &#8364;5 &#x1F600;", "café <b> €5 😀"),
        ("&amp;amp;", "&amp;"),  # unescaped once, not to a fixed point
        ("  a\tb\n\nc\r\nd  ", "a b c d"),
        ("no\u00a0break\u3000ideographic\u2028line", "no break ideographic line"),
        ("bell\x07 and nul\x00 and del\x7f and c1\x9b", "bell and nul and del and c1"),
        ("zero\u200bwidth soft\u00adhyphen \ufeffbom", "zerowidth softhyphen bom"),
        ("cafe\u0301", "café"),  # NFD -> NFC
        ("e\x00\u0301", "é"),  # control char between letter and mark removed before NFC
        ("👩\u200d👩\u200d👧 family", "👩\u200d👩\u200d👧 family"),  # ZWJ kept
        ("東京タワー　夜景", "東京タワー 夜景"),
        ("Москва\u00a0— столица", "Москва — столица"),
        ("lone \ud800 surrogate", "lone surrogate"),
        ("pair \ud83d\ude00 joined", "pair 😀 joined"),
        ("&#xD800; entity", "\ufffd entity"),
        (None, ""),
        (b"bytes \xff ok", "bytes \ufffd ok"),
        (12345, "12345"),
        ("", ""),
        ("   \t\n ", ""),
    ],
)
def test_normalize_text(raw: object, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_never_raises_on_random_garbage() -> None:
    rng = random.Random(1)
    pools = [range(0, 0x80), range(0x80, 0x250), range(0xD800, 0xE000), range(0x1F300, 0x1F700), range(0x3000, 0x3100)]
    texts: list[object] = []
    for _ in range(2000):
        n = rng.randint(0, 40)
        chars = [chr(rng.choice(rng.choice(pools))) for _ in range(n)]
        if rng.random() < 0.3:
            chars.insert(rng.randint(0, n), rng.choice(["&amp;", "&#0;", "&#x110000;", "&bogus;", "&#55296;", "&"]))
        texts.append("".join(chars))
    texts += [None, b"\x80\x81", 3.5, object()]
    out = normalize_batch(texts)
    for text in out:
        assert isinstance(text, str)
        text.encode("utf-8")  # always valid UTF-8: no lone surrogates left
        assert text == text.strip() and "  " not in text
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text)


# -------------------------------------------------------------------------------------------- single checks


@pytest.mark.parametrize(
    "text",
    [
        "IMG_1234.JPG",
        "IMG_1234",
        "IMG 1234",
        "DSC00012",
        "DSC_0012-2",
        "DSCN0001",
        "P1010001",
        "20160716_113957",
        "20160716_113957.jpg",
        "IMG_20190412_153012",
        "PXL_20230105_101112345",
        "2016-07-16 11.39.57",
        "Screen Shot 2019-04-12 at 15.30.12",
        "IMG_1234 (1)",
        "image.png",
        "my holiday photo final.JPEG",
        "d41d8cd98f00b204e9800998ecf8427e",
        "550e8400-e29b-41d4-a716-446655440000",
        "a8Fj3kLmN0pQ9rS2tUvWx",
    ],
)
def test_filename_like_positive(text: str) -> None:
    assert F.is_filename_like(text)


@pytest.mark.parametrize(
    "text",
    [
        "Windows 2000",
        "Boeing 747 at the gate",
        "A380 landing at Heathrow",
        "My holiday in Spain 2019",
        "Route 66 road trip",
        "iPhone 15 Pro in blue",
        "Twenty-first-century art",
        "Donaudampfschifffahrtsgesellschaft",
        "Photo of image.png files on a screen",
        "2019",
    ],
)
def test_filename_like_negative(text: str) -> None:
    assert not F.is_filename_like(text)


@pytest.mark.parametrize(
    "text",
    [
        "f/2.8 1/250s ISO 100",
        "Canon EOS 5D Mark III, 24-70mm f/2.8, 1/200s, ISO 800",
        "Nikon D750 | 50mm | f/1.8 | 1/500 | ISO 200",
        "1/125 sec at f/5.6, ISO 400, 50mm",
        "ISO-3200 f4.0 30s +0.7 EV",
        "Sunset. f/8 1/125 ISO 100",
    ],
)
def test_camera_settings_positive(text: str) -> None:
    assert F.is_camera_settings(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sunset in Paris, f/2.8 1/250s ISO 100",
        "Add 1/2 cup of sugar and bake for 30 s",
        "A 50mm lens on a wooden table",
        "ISO 9001 certified factory",
        "ISO 9001 certified 50mm",  # a standard, not a film speed
        "90s 35mm film",  # a decade, not 90 seconds
        "F1 car at 300 km/h",
    ],
)
def test_camera_settings_negative(text: str) -> None:
    assert not F.is_camera_settings(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://example.com/a/b.jpg", True),
        ("https://cdn.example.org/img?id=3", True),
        ("www.example.com", True),
        ("example.co.uk/shop", True),
        ("Visit www.example.com", True),
        ("(https://example.com)", True),
        ("Photo by John Smith on example.com", False),
        ("ASP.NET tutorial for beginners", False),
        ("U.S. army soldiers", False),
        ("e.g. a red car", False),
        ("Node.js logo on a laptop", False),
        ("Intro to ASP.NET", False),  # a bare domain's TLD is written in lower case
        ("My dog.It runs", False),  # a missing space
        ("Fans at Yahoo.com HQ", True),
        ("HTTP://Example.COM/x", True),
    ],
)
def test_url_like(text: str, expected: bool) -> None:
    assert F.is_url_like(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Image", True),
        ("image", True),
        ("LOGO", True),
        ("Click here!", True),
        ("Click here to enlarge.", True),
        ("Image 3 of 12", True),
        ("The logo", True),
        ("thumbnail", True),
        ("N/A", True),
        ("A logo of a red fox", False),
        ("Red fox in the snow, image by John", False),
        ("Banner of the 1999 parade", False),
        ("1234", False),
    ],
)
def test_boilerplate(text: str, expected: bool) -> None:
    keys = F.boilerplate_keys(F.DEFAULT_BOILERPLATE)
    assert F.is_boilerplate(text, keys) is expected


def test_boilerplate_list_is_configurable() -> None:
    cfg = FilterConfig(boilerplate=["Stock Photo"])
    assert F.check_text("stock photo", cfg) == F.BOILERPLATE
    assert F.check_text("Image of a cat in a box", cfg) is None
    # "images" alone is no longer boilerplate, only too short
    assert F.check_text("images", cfg) == F.TOO_FEW_WORDS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aaaaaaa", True),
        ("!!!!!!!", True),
        ("Sooooooo cute kitten", True),
        ("a beautiful view -------- of the sea", True),
        ("Wow!!!!!! what a view", False),
        ("$1000000 prize money", False),
        ("Mississippi river boat", False),
        ("東東東東東東東", True),
        ("مسجد كبيـــــــر في مدينة اسطنبول", False),  # tatweel stretches a word: Arabic typography, not junk
        ("مسجد كبيررررررر", True),
    ],
)
def test_repeated_chars(text: str, expected: bool) -> None:
    assert F.has_repeated_chars(text) is expected


def test_word_and_char_counts() -> None:
    cfg = FilterConfig()
    assert F.check_text("a cat", cfg) == F.TOO_FEW_CHARS  # too_few_chars is checked before too_few_words
    assert F.check_text("ab cd", cfg) == F.TOO_FEW_CHARS
    assert F.check_text("big red", cfg) == F.TOO_FEW_WORDS  # 7 chars, 2 words
    assert F.check_text("big red car", cfg) is None
    assert F.check_text("a b c", cfg) == F.TOO_FEW_CHARS  # 3 words but 5 chars
    assert F.check_text("a b c d", cfg) is None


# ------------------------------------------------------------------------------------------------ pipeline


def test_filter_texts_reasons_and_order() -> None:
    rows = [
        "A red fox in the snow",  # kept
        None,  # empty
        "   ",  # empty
        "http://example.com/fox.jpg",  # url_like before filename_like
        "IMG_1234.JPG",  # filename_like before too_few_words
        "f/2.8 1/250s ISO 100",
        "Click here to enlarge",  # boilerplate (4 words, long enough)
        "Wooooooow what a nice fox",
        "foxes",
        "red fox",
        "Tom &amp; Jerry &amp; friends",  # kept, normalised
    ]
    res = filter_texts(rows)
    assert res.reasons == [
        None,
        F.EMPTY,
        F.EMPTY,
        F.URL_LIKE,
        F.FILENAME_LIKE,
        F.CAMERA_SETTINGS,
        F.BOILERPLATE,
        F.REPEATED_CHARS,
        F.TOO_FEW_CHARS,
        F.TOO_FEW_WORDS,
        None,
    ]
    assert res.texts[10] == "Tom & Jerry & friends"
    assert res.texts[1] == "" and not any(res.truncated)
    counts = reason_counts(res.reasons, res.truncated)
    assert counts[F.KEPT] == 2 and counts[F.EMPTY] == 2 and counts["truncated"] == 0
    assert sum(v for k, v in counts.items() if k != "truncated") == len(rows)


def test_failing_checks_lists_every_reason() -> None:
    assert F.failing_checks("IMG_1234.JPG") == [F.FILENAME_LIKE, F.TOO_FEW_WORDS]
    assert F.failing_checks("") == [F.EMPTY, F.TOO_FEW_CHARS, F.TOO_FEW_WORDS]
    assert F.failing_checks("A red fox in the snow") == []


def test_truncation_is_not_a_drop() -> None:
    cfg = FilterConfig(max_chars=20)
    res = filter_texts(["word " * 100, "short but fine caption", "exactly twenty chars"], cfg)
    assert res.truncated == [True, True, False]
    assert res.reasons == [None, None, None]
    assert all(len(t) <= 20 for t in res.texts)
    assert res.texts[0] == "word word word word"  # cut, trailing space removed
    assert reason_counts(res.reasons, res.truncated)["truncated"] == 2
    # default: LAION's 2,000
    long = filter_texts(["x y z " * 1000])
    assert long.truncated == [True] and len(long.texts[0]) <= 2000


def test_checks_can_be_reordered_and_disabled() -> None:
    only_len = FilterConfig(checks=["too_few_words"])
    assert filter_texts(["IMG_1234.JPG", "IMG_1234.JPG IMG_1235.JPG IMG_1236.JPG"], only_len).reasons == [
        F.TOO_FEW_WORDS,
        None,
    ]
    length_first = FilterConfig(checks=["too_few_words", "filename_like"])
    assert F.check_text("IMG_1234.JPG", length_first) == F.TOO_FEW_WORDS
    assert filter_texts([None], FilterConfig(checks=["too_few_chars"])).reasons == [F.TOO_FEW_CHARS]
    assert filter_texts([None], FilterConfig(checks=[])).reasons == [None]


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="unknown filter checks"):
        FilterConfig(checks=["empty", "nonsense"])
    with pytest.raises(ValidationError, match="twice"):
        FilterConfig(checks=["empty", "empty"])
    with pytest.raises(ValidationError):
        FilterConfig(min_word=3)  # extra fields are forbidden
    with pytest.raises(ValidationError):
        FilterConfig(max_chars=0)
    assert FilterConfig(max_chars=None).max_chars is None


def test_filter_texts_on_garbage_never_raises() -> None:
    rng = random.Random(7)
    texts = ["".join(chr(rng.randrange(0, 0x2FFFF)) for _ in range(rng.randint(0, 60))) for _ in range(500)]
    res = filter_texts(texts)
    assert len(res.texts) == len(res.reasons) == len(res.truncated) == 500
    assert set(res.reasons) <= {None, *F.CHECK_ORDER}
