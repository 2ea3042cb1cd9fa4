"""A synthetic web for the demo, the tests and the benchmarks: realistic pages with images.

Pages look like what a crawler meets: a head with scripts and styles, navigation, paragraphs,
and ``<img>`` tags in every form (relative, protocol-relative, ``srcset``, lazy ``data-src``
with a ``data:`` placeholder, ``<base href>``), with captions of every kind (natural phrases,
other languages, boilerplate, file names, empty). Everything derives from a seed, so the same
call writes the same bytes.

The pictures are what their captions say, so a model trained on the result can learn from it:
sklearn's handwritten digits (those with ``index % 5 == 0`` are held out for evaluation), the
skimage samples, and drawings of named shapes in named colours chosen Zipf-like, so that a few
query entries are very frequent and many are rare, and balancing has a head to cut. An image
URL's file name encodes what it shows (``digit-0123``, ``sk-astronaut-2``,
``draw-circle-red-3-blue-1``; see :func:`parse_image_stem`), so the server draws it from the
name alone. About one picture link in 33 is broken, popular pictures recur on many pages with
other captions, and ``/cdn/img/X`` serves the same bytes as ``/pages/img/X``.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from witbuild.demo.images import (
    COLOURS,
    DIGIT_WORDS,
    MAX_SHAPES,
    SHAPES,
    SKIMAGE_CAPTIONS,
    SKIMAGE_NAMES,
    SKIMAGE_VARIANTS,
    colour_distance,
    digit_count,
    digit_label,
    is_heldout_digit,
    web_digit_indices,
)

ADJECTIVES = (
    "red",
    "small",
    "old",
    "wooden",
    "bright",
    "quiet",
    "golden",
    "snowy",
    "busy",
    "ancient",
    "modern",
    "tiny",
    "large",
    "green",
    "blue",
    "rusty",
    "colorful",
    "empty",
    "crowded",
    "misty",
    "sunny",
    "dark",
)
NOUNS = (
    "cat",
    "dog",
    "bicycle",
    "house",
    "bridge",
    "mountain",
    "lake",
    "car",
    "tree",
    "boat",
    "train",
    "garden",
    "castle",
    "market",
    "beach",
    "chair",
    "guitar",
    "horse",
    "lighthouse",
    "forest",
    "street",
    "church",
    "coffee cup",
    "river",
    "bird",
    "airplane",
    "pizza",
    "bookshelf",
    "violin",
    "tractor",
)
PLACES = (
    "the city",
    "the park",
    "a village",
    "the coast",
    "the valley",
    "the harbour",
    "the old town",
    "a meadow",
    "the station",
    "the desert",
    "the hills",
    "a small farm",
)
VERBS = ("standing", "sitting", "parked", "sleeping", "resting", "shining", "waiting")
NAV_LINKS = 24
FOOTER_LINKS = 12
PARTNERS = ("news.example.com", "shop.example.net", "blog.example.org", "cdn.example.io", "social.example.com")
BOILERPLATE = ("image", "logo", "icon", "click here", "banner", "spacer", "thumbnail", "photo", "placeholder")
FILLER = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "ea",
    "commodo",
    "consequat",
    "duis",
    "aute",
    "irure",
    "in",
    "reprehenderit",
    "voluptate",
    "velit",
    "esse",
    "cillum",
    "fugiat",
    "nulla",
    "pariatur",
    "excepteur",
    "sint",
    "occaecat",
    "cupidatat",
    "non",
    "proident",
    "sunt",
    "culpa",
    "qui",
    "officia",
    "deserunt",
    "mollit",
]


@dataclass
class DemoImage:
    url: str  # absolute URL the extractor should produce
    text: str  # caption as written in the page ('' when none)
    kind: str  # natural, vague, foreign, boilerplate, filename, empty, data_placeholder, svg
    src: str = ""  # the src attribute as written (what a WAT's IMG@/src holds)
    content: str = ""  # what the URL serves: an image stem (see parse_image_stem); '' for a broken link, svg, data:


@dataclass
class DemoPage:
    url: str
    html: bytes
    charset: str
    lang: str
    images: list[DemoImage] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    base: str | None = None


def natural_caption(rng: random.Random) -> str:
    """A short scene caption ("a red bicycle in the park"): alt-text-like text for matching benchmarks."""
    forms = (
        lambda: f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} in {rng.choice(PLACES)}",
        lambda: (
            f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS)} {rng.choice(VERBS)} near {rng.choice(PLACES)}"
        ),
        lambda: f"photo of a {rng.choice(NOUNS)} and a {rng.choice(NOUNS)}",
        lambda: f"The {rng.choice(NOUNS)} at {rng.choice(PLACES)}, {rng.randint(1950, 2024)}",
    )
    return rng.choice(forms)()


# --------------------------------------------------------------------------------------------------------------------
# what the pictures show, and how their URLs say it
# --------------------------------------------------------------------------------------------------------------------

DIGIT_SHARE = 0.45  # of the picture slots, while the digit plan lasts: ~2,000 pages use it up
SKIMAGE_SHARE = 0.07  # 72 skimage images (24 samples x 3 variants) on many pages each: duplicates
BROKEN_SHARE = 33  # one picture link in 33 points at an image that is gone (404), as on the real web
COUNT_WEIGHTS = (0.34, 0.2, 0.18, 0.12, 0.09, 0.07)  # how many shapes a drawn picture holds, 1..6
WHITE_BACKGROUND = 0.5  # share of drawn pictures on white; the others on a Zipf-chosen colour
MIN_CONTRAST = 150.0  # RGB distance between a shape's colour and its background


def _zipf_cum(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights 1/k^s: a few head items are frequent, most are rare (as words on the web)."""
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


_COLOUR_NAMES, _SHAPE_NAMES = tuple(COLOURS), tuple(SHAPES)
_COLOUR_CUM, _SHAPE_CUM = _zipf_cum(len(COLOURS), 1.4), _zipf_cum(len(SHAPES), 1.4)
_BG_CUM = _zipf_cum(len(COLOURS), 1.2)
_COUNT_CUM = list(itertools.accumulate(COUNT_WEIGHTS))


def digit_stem(index: int) -> str:
    return f"digit-{index:04d}"


def skimage_stem(name: str, variant: int) -> str:
    return f"sk-{name}-{variant}"


def drawn_stem(shape: str, colour: str, count: int, background: str, layout: int) -> str:
    return f"draw-{shape}-{colour}-{count}-{background}-{layout}"


def parse_image_stem(stem: str) -> tuple[str, tuple] | None:
    """("digit", (index,)), ("skimage", (name, variant)) or ("drawn", (shape, colour, count, background, layout))
    for a valid stem of a web picture (held-out digits are not), else None: the server answers 404."""
    kind, _, rest = stem.partition("-")
    parts = rest.split("-")
    try:
        if kind == "digit" and len(parts) == 1 and parts[0].isdigit():
            index = int(parts[0])
            if index < digit_count() and not is_heldout_digit(index) and stem == digit_stem(index):
                return "digit", (index,)
        elif kind == "sk" and len(parts) == 2 and parts[0] in SKIMAGE_CAPTIONS and parts[1].isdigit():
            if int(parts[1]) < SKIMAGE_VARIANTS and stem == skimage_stem(parts[0], int(parts[1])):
                return "skimage", (parts[0], int(parts[1]))
        elif kind == "draw" and len(parts) == 5:
            shape, colour, count, background, layout = parts
            if (shape in SHAPES and colour in COLOURS and background in COLOURS and colour != background
                    and count.isdigit() and 1 <= int(count) <= MAX_SHAPES and layout.isdigit()
                    and stem == drawn_stem(shape, colour, int(count), background, int(layout))):
                return "drawn", (shape, colour, int(count), background, int(layout))
    except ValueError:
        return None
    return None


class DigitPlan:
    """The order in which the web shows its digits: every web digit once (shuffled), then again, and so on, each
    2–4 times in all. A small web thus shows many different digits; the default one each with 2–4 captions."""

    def __init__(self, seed: int = 0):
        rng = random.Random(f"digits-{seed}")
        indices = web_digit_indices()
        times = [rng.randint(2, 4) for _ in indices]
        self.order: list[int] = []
        for r in range(4):
            this_round = [i for i, t in zip(indices, times, strict=True) if t > r]
            rng.shuffle(this_round)
            self.order.extend(this_round)
        self.position = 0

    def next(self) -> int | None:
        """The next digit to show, or None when every planned appearance has been used."""
        if self.position >= len(self.order):
            return None
        self.position += 1
        return self.order[self.position - 1]


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word[:1] == "8" else "a"


def _count_word(n: int) -> str:
    return DIGIT_WORDS[n]


# English digit captions: a core that names the digit ({w} the word, {n} the numeral, {a_w} its article), mostly
# with details and sometimes a prefix. Cores are picked Zipf-like, details from long lists, so the plain head
# phrasings ("a handwritten seven") are frequent and balancing thins them, while the detailed ones carry rare words.
DIGIT_CORES = (
    "a handwritten {w}",
    "the digit {n}",
    "the number {w}",
    "handwritten digit {n}",
    "a hand-drawn {w}",
    "the numeral {n}",
    "handwritten number {w}",
    "digit {n} ({w})",
    "a single handwritten digit: {w}",
    "the figure {n}",
    "{a_w} {w}",
    "{a_n} {n}",
)
DIGIT_DETAILS = (" written with {tool}", " on {surface}", ", written by {writer}", " from {document}",
                 " drawn with {tool} on {surface}", " written by hand", ", {style}")
DIGIT_PREFIXES = ("{style_cap} scan of ", "close-up of ", "a photo of ", "scan of ", "{a_style} {style} image of ",
                  "{writer_cap}'s handwriting: ")
DIGIT_DETAIL_SHARE, DIGIT_PREFIX_SHARE = 0.75, 0.3
TOOLS = ("pencil", "black ink", "blue ink", "a ballpoint pen", "a felt-tip pen", "a marker", "charcoal",
         "a fountain pen", "graphite", "crayon", "a brush pen", "red ink", "a gel pen", "a biro", "chalk",
         "a quill", "green ink", "a highlighter", "watercolour", "a stylus", "a carpenter's pencil")
SURFACES = ("white paper", "a sheet of paper", "graph paper", "a notebook page", "an index card", "a sticky note",
            "an envelope", "a postcard", "a form", "a napkin", "a receipt", "tracing paper", "a whiteboard",
            "a ledger page", "a cheque", "parchment", "cardboard", "a paper bag", "a ticket stub", "a luggage tag",
            "a coffee filter", "a shopping list", "a calendar page", "a book margin")
WRITERS = ("a child", "a student", "a postal clerk", "a teacher", "a census worker", "a bank clerk",
           "an accountant", "a volunteer", "my grandfather", "a shopkeeper", "an engineer", "a nurse",
           "a librarian", "a farmer", "a waiter", "a surveyor", "a pharmacist", "a sailor")
STYLES = ("blurry", "grainy", "pixelated", "faint", "bold", "thin", "slanted", "smudged", "neat", "messy", "tiny",
          "shaky", "low resolution", "greyscale", "crooked", "hurried")
DOCUMENTS = ("a tax form", "a zip code", "a postal envelope", "a school worksheet", "an exam paper", "a price tag",
             "a bank cheque", "a census form", "a delivery note", "a lottery ticket", "a page of homework",
             "a parking ticket", "a recipe card", "an invoice", "a scoreboard sheet", "a diary")
VAGUE_DIGIT = ("handwriting sample from a scanned form", "scanned handwriting", "a sample from our handwriting dataset",
               "see the attached scan", "one of the scanned characters")
FOREIGN_DIGIT = (
    ("de", "die handgeschriebene Ziffer {n}", ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben",
                                               "acht", "neun")),
    ("fr", "le chiffre {n} écrit à la main", ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit",
                                               "neuf")),
    ("es", "el número {w} escrito a mano", ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho",
                                            "nueve")),
    ("it", "il numero {n} scritto a mano", ()),
    ("ru", "рукописная цифра {n}", ()),
    ("zh", "手写数字 {n}", ()),
    ("ja", "手書きの数字 {n}", ()),
)
# English drawn captions, picked Zipf-like: formulaic, so their words are the head that balancing cuts.
DRAWN_FORMS_ONE = (
    "{a_c} {c} {s} on a {b} background",
    "{a_c} {c} {s}",
    "{c} {s} icon",
    "drawing of {a_c} {c} {s}",
    "one {c} {s} on {b}",
)
DRAWN_FORMS_MANY = (
    "{k} {c} {p} on a {b} background",
    "{k} {c} {p}",
    "{n} {c} {p} on {b}",
    "{k} {p} in {c}",
    "drawing of {k} {c} {p}",
)
FOREIGN_DRAWN = (
    ("de", "Einfache Zeichnung mit {n} Formen"),
    ("fr", "Un dessin simple avec {n} formes"),
    ("es", "Un dibujo sencillo con {n} figuras"),
    ("it", "Un semplice disegno con {n} forme"),
    ("ru", "Простой рисунок: {n} фигуры"),
    ("zh", "简单的图形，{n} 个"),
    ("ja", "シンプルな図形 {n} 個"),
)
SKIMAGE_FORMS = ("{d}", "{D}", "photo: {d}", "{D} (test image)", "classic test picture, {d}",
                 "sample image showing {d}", "{D}, from the scikit-image samples", "{D}. Public domain.")
SKIMAGE_VARIANT_NOTE = ("", ", mirrored", ", cropped")
FOREIGN_SKIMAGE = (("de", "Beispielbild: {x}"), ("fr", "Image d'exemple : {x}"), ("es", "Imagen de ejemplo: {x}"),
                   ("ru", "Пример изображения: {x}"), ("zh", "示例图片：{x}"), ("ja", "サンプル画像：{x}"))
_DIGIT_CORE_CUM = _zipf_cum(len(DIGIT_CORES), 0.8)
_DRAWN_FORM_CUM = _zipf_cum(len(DRAWN_FORMS_MANY), 1.2)


def _noise_kind(rng: random.Random) -> str:
    """The kind of caption a picture gets: mostly a natural phrase, the rest the web's usual noise."""
    r = rng.random()
    if r < 0.70:
        return "natural"
    if r < 0.79:
        return "foreign"
    if r < 0.87:
        return "boilerplate"
    if r < 0.93:
        return "filename"
    return "empty"


def _filename(rng: random.Random, hint: str) -> str:
    return rng.choice((f"IMG_{rng.randint(1000, 9999)}.JPG", f"DSC{rng.randint(10000, 99999)}",
                       f"2016{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}_{rng.randint(100000, 235959)}",
                       f"{hint}.jpg"))


def digit_caption(rng: random.Random, index: int) -> tuple[str, str]:
    """(caption, kind) for web digit ``index``: natural ones name it by word and/or numeral."""
    label = digit_label(index)
    w, n = DIGIT_WORDS[label], str(label)
    kind = _noise_kind(rng)
    if kind == "natural" and rng.random() < 0.04:
        return rng.choice(VAGUE_DIGIT), "vague"
    if kind == "natural":
        form = rng.choices(DIGIT_CORES, cum_weights=_DIGIT_CORE_CUM)[0]
        if rng.random() < DIGIT_DETAIL_SHARE:
            form += rng.choice(DIGIT_DETAILS)
        if rng.random() < DIGIT_PREFIX_SHARE:
            form = rng.choice(DIGIT_PREFIXES) + form
        style, writer = rng.choice(STYLES), rng.choice(WRITERS)
        text = form.format(w=w, n=n, a_w=_a(w), a_n=_a(n), tool=rng.choice(TOOLS), surface=rng.choice(SURFACES),
                           writer=writer, writer_cap=writer[0].upper() + writer[1:], style=style, a_style=_a(style),
                           style_cap=style.capitalize(), document=rng.choice(DOCUMENTS))
        return text[0].upper() + text[1:] if rng.random() < 0.2 else text, kind
    if kind == "foreign":
        _, form, words = rng.choice(FOREIGN_DIGIT)
        return form.format(n=n, w=words[label] if words else n), kind
    if kind == "boilerplate":
        return rng.choice(BOILERPLATE), kind
    if kind == "filename":
        return _filename(rng, f"digit_{index:04d}"), kind
    return "", kind


def drawn_caption(rng: random.Random, shape: str, colour: str, count: int, background: str) -> tuple[str, str]:
    """(caption, kind) for a drawn picture: natural ones name its colour, shape and count (and often background)."""
    kind = _noise_kind(rng)
    if kind == "natural":
        forms = DRAWN_FORMS_ONE if count == 1 else DRAWN_FORMS_MANY
        form = rng.choices(forms, cum_weights=_DRAWN_FORM_CUM[: len(forms)])[0]
        return form.format(c=colour, a_c=_a(colour), s=shape, p=SHAPES[shape], k=_count_word(count), n=count,
                           b=background), kind
    if kind == "foreign":
        return rng.choice(FOREIGN_DRAWN)[1].format(n=count), kind
    if kind == "boilerplate":
        return rng.choice(BOILERPLATE), kind
    if kind == "filename":
        return _filename(rng, f"{colour}_{shape}_{count}"), kind
    return "", kind


def skimage_caption(rng: random.Random, name: str, variant: int) -> tuple[str, str]:
    """(caption, kind) for a skimage sample: natural ones vary its description."""
    kind = _noise_kind(rng)
    desc = SKIMAGE_CAPTIONS[name] + SKIMAGE_VARIANT_NOTE[variant]
    if kind == "natural":
        return rng.choice(SKIMAGE_FORMS).format(d=desc, D=desc[0].upper() + desc[1:]), kind
    if kind == "foreign":
        return rng.choice(FOREIGN_SKIMAGE)[1].format(x=name.replace("_", " ")), kind
    if kind == "boilerplate":
        return rng.choice(BOILERPLATE), kind
    if kind == "filename":
        return _filename(rng, name), kind
    return "", kind


def _drawn_params(rng: random.Random) -> tuple[str, str, int, str, int]:
    """Shape, colour, count, background and layout of a drawn picture, colours and shapes Zipf-like."""
    colour = rng.choices(_COLOUR_NAMES, cum_weights=_COLOUR_CUM)[0]
    shape = rng.choices(_SHAPE_NAMES, cum_weights=_SHAPE_CUM)[0]
    count = rng.choices(range(1, MAX_SHAPES + 1), cum_weights=_COUNT_CUM)[0]
    background = "white"
    if colour == "white" or rng.random() >= WHITE_BACKGROUND:
        for _ in range(8):
            background = rng.choices(_COLOUR_NAMES, cum_weights=_BG_CUM)[0]
            if colour_distance(COLOURS[colour], COLOURS[background]) >= MIN_CONTRAST:
                break
        else:
            background = max(("white", "black"), key=lambda b: colour_distance(COLOURS[colour], COLOURS[b]))
    return shape, colour, count, background, rng.randrange(4)


def _picture(rng: random.Random, digits: DigitPlan | None) -> tuple[str, str, str]:
    """(stem, caption, kind) of one working picture: a digit while the plan lasts, a skimage sample, or a drawing."""
    r = rng.random()
    if r < DIGIT_SHARE:
        index = digits.next() if digits is not None else rng.choice(web_digit_indices())
        if index is not None:
            return (digit_stem(index), *digit_caption(rng, index))
    elif r < DIGIT_SHARE + SKIMAGE_SHARE:
        name, variant = rng.choice(SKIMAGE_NAMES), rng.randrange(SKIMAGE_VARIANTS)
        return (skimage_stem(name, variant), *skimage_caption(rng, name, variant))
    params = _drawn_params(rng)
    return (drawn_stem(*params), *drawn_caption(rng, *params[:4]))


def _local_caption(lang: str, index: int, stem: str) -> str:
    """A caption in the page's own language (Russian and Chinese pages), with the number it shows when one."""
    parsed = parse_image_stem(stem)
    number = ""
    if parsed and parsed[0] == "digit":
        number = f" {digit_label(parsed[1][0])}"
    elif parsed and parsed[0] == "drawn":
        number = f" {parsed[1][2]}"
    if lang == "ru":
        return ("Рукописная цифра" if parsed and parsed[0] == "digit" else "Картинка на странице") + number
    return ("手写数字" if parsed and parsed[0] == "digit" else f"第 {index} 页的图片") + number


def _script(rng: random.Random, size: int) -> str:
    out, n = ["<script>"], 0
    while n < size:
        name, method = rng.choice(FILLER), rng.choice(FILLER)
        line = f"var {name}{rng.randint(0, 999)}=function(a,b){{return a.{method}(b)||{rng.randint(0, 9999)}}};"
        out.append(line)
        n += len(line)
    out.append("</script>")
    return "\n".join(out)


def _paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(words)).capitalize() + "."


def make_page(
    site: str, index: int, rng: random.Random, n_pages: int, *, filler_words: int = 400, script_bytes: int = 0,
    digits: DigitPlan | None = None,
) -> DemoPage:
    """One page of the demo site; ``site`` is scheme://host[:port] without a trailing slash.

    ``script_bytes`` adds an inline script of about that size, as real pages carry (Common
    Crawl's HTML averages tens of kB, most of it scripts and styles). ``digits`` is the site's
    digit plan (:class:`DigitPlan`); without one the page shows random web digits.
    """
    url = f"{site}/pages/{index:05d}.html"
    lang = "en"
    charset = "utf-8"
    style = rng.random()
    if style < 0.06:
        lang, charset = "ru", "windows-1251"
    elif style < 0.10:
        lang, charset = "zh", "gbk"
    use_base = rng.random() < 0.2
    base = f"{site}/static/" if use_base else f"{site}/pages/"
    images: list[DemoImage] = []
    # navigation and footer links, as many as real pages carry (tens): site pages and other hosts
    nav = [f"{site}/pages/{(index + k) % n_pages:05d}.html" for k in (1, 2, 7, *range(11, 11 + NAV_LINKS - 3))]
    footer = [f"https://{rng.choice(PARTNERS)}/{rng.choice(FILLER)}/{rng.randint(1, 9999)}"
              for _ in range(FOOTER_LINKS)]
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}"><head><meta charset="{charset}"><title>Page {index}</title>',
        f'<link rel="stylesheet" href="/css/site.css?v={index % 7}">',
        "<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}</script>",
        _script(rng, script_bytes) if script_bytes else "",
        f'<base href="{base}">' if use_base else "",
        "</head><body><header><nav><ul>",
        *(f'<li><a href="{u}">Page {u[-10:-5]}</a></li>' for u in nav),
        "</ul></nav></header><main>",
    ]
    links = nav + footer
    for j in range(rng.randint(3, 8)):
        parts.append(f"<p>{_paragraph(rng, filler_words // 6)}</p>")
        form = rng.random()
        # svg and data: placeholders show no picture, and a link to a picture that is gone has an old-style
        # name that answers 404; their captions are a drawing's
        if form >= 0.90 or rng.randrange(BROKEN_SHARE) == 0:
            stem, (text, kind) = "", drawn_caption(rng, *_drawn_params(rng)[:4])
        else:
            stem, text, kind = _picture(rng, digits)
        if lang != "en" and kind in ("natural", "vague"):
            text, kind = _local_caption(lang, index, stem), "foreign"
        name = f"img/{stem or f'{index:05d}-{j}'}.jpg"
        alt = text.replace("&", "&amp;").replace('"', "&quot;")
        content = stem
        if form < 0.45:
            src = name if not use_base else f"../pages/{name}"
            absolute = f"{site}/pages/{name}"
            tag = f'<img src="{src}" alt="{alt}" width="320" height="240">'
        elif form < 0.65:
            absolute = f"{site}/pages/{name}"
            tag = (
                f'<img src="{site}/pages/{name}?w=160" srcset="{site}/pages/{name}?w=160 160w, '
                f'{absolute} 640w" alt="{alt}">'
            )
        elif form < 0.80:
            absolute = f"{site}/pages/{name}"
            tag = (
                f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="{absolute}" '
                f'alt="{alt}" loading="lazy">'
            )
        elif form < 0.90:
            host = site.split("://", 1)[1]
            absolute = f"{site.split('://', 1)[0]}://{host}/cdn/{name}"
            tag = f'<img src="//{host}/cdn/{name}" title="{alt}">'
        elif form < 0.95:
            absolute = f"{site}/pages/img/{index:05d}-{j}.svg"
            tag = f'<img src="{absolute}" alt="{alt}">'
            kind = "svg"
        else:
            absolute = ""
            tag = f'<img src="data:image/png;base64,iVBORw0KGgo=" alt="{alt}">'
            kind = "data_placeholder"
        parts.append(f"<figure>{tag}<figcaption>{_paragraph(rng, 8)}</figcaption></figure>")
        images.append(DemoImage(absolute, text, kind, tag.split('src="', 1)[1].split('"', 1)[0], content))
    parts.append("</main><footer><ul>")
    parts.extend(f'<li><a href="{u}" rel="nofollow">{u.split("/")[2]}</a></li>' for u in footer)
    parts.append("</ul>© demo web</footer></body></html>")
    html = "\n".join(parts).encode(charset, errors="xmlcharrefreplace")
    return DemoPage(url, html, charset, lang, images, links, base if use_base else None)


def generate_pages(
    n_pages: int,
    *,
    site: str = "http://demo.witbuild.test",
    seed: int = 0,
    filler_words: int = 400,
    script_bytes: int = 0,
) -> Iterator[DemoPage]:
    """The demo site's pages in order; the same arguments give the same bytes."""
    rng = random.Random(seed)
    digits = DigitPlan(seed)
    for i in range(n_pages):
        yield make_page(site, i, rng, n_pages, filler_words=filler_words, script_bytes=script_bytes, digits=digits)


_STEM_KINDS = {"digit": "digit", "sk": "skimage", "draw": "drawn"}


def summarize(pages: Iterable[DemoPage]) -> dict[str, int]:
    """Figures of a demo web: pages, <img> tags, downloadable pictures (by what they show), broken links, and
    the distinct web digits; printed by ``witbuild demo``."""
    out = {"pages": 0, "img_tags": 0, "downloadable": 0, "digit": 0, "skimage": 0, "drawn": 0, "broken": 0}
    digits: set[str] = set()
    for page in pages:
        out["pages"] += 1
        for img in page.images:
            out["img_tags"] += 1
            if img.content:
                out["downloadable"] += 1
                out[_STEM_KINDS[img.content.split("-", 1)[0]]] += 1
                if img.content.startswith("digit-"):
                    digits.add(img.content)
            elif img.url and img.kind not in ("svg", "data_placeholder"):
                out["broken"] += 1
    out["distinct_digits"] = len(digits)
    return out


_T0 = datetime(2024, 5, 18, tzinfo=timezone.utc)


def _record_id(url: str, record: str) -> str:
    """A WARC-Record-ID named after the record instead of warcio's random uuid4: a random id changes how each
    gzip member compresses, so every record's offset (the candidates' ``record_offset``) and the file's bytes
    would differ between two writes of the same pages."""
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{record} {url}')}>"


def write_warc(pages: Iterator[DemoPage] | list[DemoPage], path: str | Path) -> int:
    """Pages as request + response records in one gzip WARC (a member per record); returns count."""
    n = 0
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for n, page in enumerate(pages, 1):
            date = (_T0 + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
            host = page.url.split("/")[2]
            req = writer.create_warc_record(
                page.url,
                "request",
                payload=io.BytesIO(b""),
                http_headers=StatusAndHeaders(
                    f"GET /{page.url.split('/', 3)[3]} HTTP/1.1",
                    [("Host", host), ("User-Agent", "witbuild-demo")],
                    is_http_request=True,
                ),
                warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(page.url, "request")},
            )
            headers = StatusAndHeaders(
                "200 OK",
                [("Content-Type", f"text/html; charset={page.charset}"), ("Content-Length", str(len(page.html)))],
                protocol="HTTP/1.1",
            )
            resp = writer.create_warc_record(
                page.url,
                "response",
                payload=io.BytesIO(page.html),
                http_headers=headers,
                warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(page.url, "response")},
            )
            writer.write_record(req)
            writer.write_record(resp)
    return n


def wat_document(page: DemoPage, date: str) -> dict:
    """The WAT JSON Common Crawl writes for a response: Envelope → … → HTML-Metadata → Links."""
    links: list[dict] = [{"path": "LINK@/href", "url": "/css/site.css", "rel": "stylesheet"}]
    links += [{"path": "A@/href", "url": u, "text": u.rsplit("/", 1)[-1]} for u in page.links]
    for img in page.images:
        entry = {"path": "IMG@/src", "url": img.src}
        if img.text:
            entry["alt"] = img.text
        links.append(entry)
    head = {
        "Title": page.url.rsplit("/", 1)[-1],
        "Metas": [
            {"charset": page.charset},
            {"name": "viewport", "content": "width=device-width, initial-scale=1"},
            {"name": "description", "content": f"Demo page {page.url} with pictures and captions."},
            {"property": "og:title", "content": page.url.rsplit("/", 1)[-1]},
        ],
        "Link": [{"path": "LINK@/href", "url": "/css/site.css", "rel": "stylesheet"}],
    }
    if page.base:
        head["Base"] = page.base
    return {
        "Container": {"Filename": "demo.warc.gz", "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Date": date, "WARC-Target-URI": page.url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                    "Headers": {
                        "Date": date, "Server": "demo", "Content-Type": f"text/html; charset={page.charset}",
                        "Content-Language": page.lang, "Content-Length": str(len(page.html)),
                        "Cache-Control": "max-age=600", "Vary": "Accept-Encoding",
                    },
                    "Headers-Length": "213",
                    "Entity-Length": str(len(page.html)),
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        },
    }


def request_wat_document(page: DemoPage, date: str) -> dict:
    """The WAT JSON of the request record that precedes each response (no links in it)."""
    host = page.url.split("/")[2]
    return {
        "Container": {"Filename": "demo.warc.gz", "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "request", "WARC-Date": date, "WARC-Target-URI": page.url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=request",
                "HTTP-Request-Metadata": {
                    "Request-Message": {"Method": "GET", "Path": "/" + page.url.split("/", 3)[3],
                                        "Version": "HTTP/1.1"},
                    "Headers": {"Host": host, "User-Agent": "witbuild-demo", "Accept": "text/html",
                                "Accept-Encoding": "br,gzip", "Connection": "Keep-Alive"},
                },
            },
        },
    }


def write_wat(pages: Iterator[DemoPage] | list[DemoPage], path: str | Path) -> int:
    """The WAT equivalent of :func:`write_warc`: a metadata record of JSON per WARC record
    (the request's, then the response's with its links), as Common Crawl writes them."""
    n = 0
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for n, page in enumerate(pages, 1):
            date = (_T0 + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for of, doc in (("request", request_wat_document(page, date)), ("response", wat_document(page, date))):
                body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
                rec = writer.create_warc_record(
                    page.url,
                    "metadata",
                    payload=io.BytesIO(body),
                    warc_content_type="application/json",
                    warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(page.url, f"metadata {of}")},
                )
                writer.write_record(rec)
    return n
