"""Pages that declare no encoding, in the legacy encodings of the web and in UTF-8, whose text is known.

Each page's text is drawn from a language's most frequent words (wordfreq's lists, weighted by rank as Zipf's law
weights them), so a detector meets the letter statistics of real text in that language; the page is encoded in one
of the encodings that language is written in, and nothing in its bytes or headers names it. Traditional Chinese
words are written out below: wordfreq's Chinese list is Simplified. Three sizes: the caption alone (the hardest: six
words, at least one of them not ASCII, in a page of ASCII markup), with a 15-word paragraph, with a 150-word
one.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass
from functools import cache

# (language, Python codec of the page's bytes): the WHATWG legacy encodings real pages are written in, and UTF-8
CASES: tuple[tuple[str, str], ...] = (
    ("ja", "cp932"), ("ja", "euc_jp"), ("ja", "iso2022_jp"), ("zh", "gb18030"), ("zh-Hant", "big5hkscs"),
    ("ko", "cp949"), ("ru", "cp1251"), ("ru", "koi8_r"), ("ru", "cp866"), ("ru", "iso8859_5"), ("ru", "mac_cyrillic"),
    ("uk", "koi8_u"), ("uk", "cp1251"), ("bg", "cp1251"), ("el", "cp1253"), ("el", "iso8859_7"), ("ar", "cp1256"),
    ("ar", "iso8859_6"), ("fa", "cp1256"), ("he", "cp1255"), ("he", "iso8859_8"), ("pl", "cp1250"),
    ("pl", "iso8859_2"), ("cs", "cp1250"), ("cs", "iso8859_2"), ("hu", "cp1250"), ("sk", "cp1250"), ("tr", "cp1254"),
    ("vi", "cp1258"), ("lt", "cp1257"), ("lv", "cp1257"), ("de", "cp1252"), ("fr", "cp1252"), ("es", "cp1252"),
    ("pt", "cp1252"), ("sv", "cp1252"),
    *((lang, "utf-8") for lang in ("ja", "zh", "ko", "ru", "el", "fr", "pl", "vi")),
)
SIZES = {"caption": 0, "short": 15, "long": 150}  # words in the paragraph beside the image
SEEDS = 3
NO_SPACES = {"ja", "zh", "zh-Hant"}
TRADITIONAL_CHINESE = (
    "的", "是", "在", "我們", "這個", "一個", "他們", "台灣", "香港", "時候", "可以", "沒有", "因為",
    "所以", "學校", "學生", "老師", "城市", "國家", "電影", "音樂", "問題", "經濟", "發展", "政府",
    "會議", "開始", "覺得", "認為", "應該", "還是", "現在", "已經", "選擇", "網路", "電腦", "資料",
    "圖片", "照片", "風景", "夜景", "旅遊", "飯店", "餐廳", "書店", "週末", "朋友", "家庭", "孩子",
    "歷史", "文化", "藝術", "運動", "醫院", "銀行", "價格", "東西", "這裡", "那裡", "漂亮", "美麗",
    "喜歡", "關於", "過去", "將來", "報導", "記者", "體育", "節目", "機會", "環境", "變化", "經驗",
    "語言", "傳統", "農業", "鐵路", "車站", "機場", "顏色", "聲音", "親愛", "謝謝", "對不起",
)


@dataclass(frozen=True)
class UndeclaredPage:
    language: str
    codec: str  # the bytes' encoding, which nothing declares
    size: str  # a key of SIZES
    seed: int
    caption: str  # the image's alt text, as written
    body: bytes


@cache
def _words(language: str, codec: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """A language's 3,000 most frequent words that ``codec`` can write, weighted 1 / (rank + 10)."""
    if language == "zh-Hant":
        candidates = TRADITIONAL_CHINESE
    else:
        import wordfreq

        candidates = wordfreq.top_n_list(language, 3000)
    words: list[str] = []
    for word in candidates:
        if language == "el" and word.endswith("σ"):
            word = word[:-1] + "ς"  # wordfreq folds the final sigma
        try:
            word.encode(codec)
        except UnicodeEncodeError:
            continue
        words.append(word)
    return tuple(words), tuple(1 / (rank + 10) for rank in range(len(words)))


def _text(rng: random.Random, language: str, codec: str, n: int) -> str:
    words, weights = _words(language, codec)
    return ("" if language in NO_SPACES else " ").join(rng.choices(words, weights=weights, k=n))


def undeclared_pages() -> list[UndeclaredPage]:
    """Every (case, size, seed) page, the same bytes on every run."""
    pages = []
    for language, codec in CASES:
        for size, n_words in SIZES.items():
            for seed in range(SEEDS):
                rng = random.Random(f"{language}/{codec}/{size}/{seed}")
                caption = _text(rng, language, codec, 6)
                while caption.isascii():  # a caption a wrong guess cannot garble tests nothing
                    caption = _text(rng, language, codec, 6)
                paragraph = _text(rng, language, codec, n_words)
                title = html.escape(_text(rng, language, codec, 4)) if n_words else "Gallery"
                markup = (
                    f"<!DOCTYPE html>\n<html>\n<head>\n<title>{title}</title>\n"
                    '<link rel="stylesheet" href="/style.css">\n</head>\n<body>\n'
                    '<div class="nav"><a href="/">Home</a> | <a href="/about">About</a></div>\n'
                    f'<p>{html.escape(paragraph)}</p>\n<img src="photo.jpg" alt="{html.escape(caption)}" width="300">\n'
                    "</body>\n</html>\n")
                pages.append(UndeclaredPage(language, codec, size, seed, caption, markup.encode(codec)))
    return pages
