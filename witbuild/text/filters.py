"""Caption filters: each check is a small pure function, and a dropped caption carries exactly one reason.

Why these checks (see ARCHITECTURE.md, "Filtering"):

- DataComp "basic" keeps captions with more than 2 words and more than 5 characters.
- LAION keeps alt texts of at least 5 characters and truncates them to 2,000 characters.
- The CLIP paper drops auto-generated file names (``20160716_113957.JPG``) and camera settings.
- Alt texts on the web are full of URLs, "image"/"logo"/"click here" boilerplate and ``!!!!!!!`` noise, which
  carry nothing a CLIP model can learn from.

Order: the caption is normalised (:func:`witbuild.text.normalize.normalize_text`), truncated to
``max_chars`` (not a drop: reported in ``FilterResult.truncated``), then the checks run in the order of
``FilterConfig.checks``, by default :data:`CHECK_ORDER`::

    empty, url_like, filename_like, camera_settings, boilerplate, repeated_chars, too_few_chars, too_few_words

The first failing check is the drop reason. Content checks come before the length checks on purpose: most
file names, URLs and boilerplate are also short, and "12% of alt texts are file names" is a more useful line
in a build report than "12% are one word". :func:`failing_checks` lists every failing check for analysis.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from witbuild.text.normalize import normalize_text

logger = logging.getLogger(__name__)

EMPTY = "empty"
URL_LIKE = "url_like"
FILENAME_LIKE = "filename_like"
CAMERA_SETTINGS = "camera_settings"
BOILERPLATE = "boilerplate"
REPEATED_CHARS = "repeated_chars"
TOO_FEW_CHARS = "too_few_chars"
TOO_FEW_WORDS = "too_few_words"

CHECK_ORDER: tuple[str, ...] = (
    EMPTY,
    URL_LIKE,
    FILENAME_LIKE,
    CAMERA_SETTINGS,
    BOILERPLATE,
    REPEATED_CHARS,
    TOO_FEW_CHARS,
    TOO_FEW_WORDS,
)
"""Every drop reason :func:`filter_texts` can give, in the default order of the checks."""

KEPT = "kept"
"""The key :func:`reason_counts` uses for rows without a drop reason."""

DEFAULT_BOILERPLATE: tuple[str, ...] = (
    "image", "images", "img", "picture", "pic", "photo", "photos", "photograph", "graphic",
    "logo", "logo image", "company logo", "site logo", "icon", "favicon", "avatar", "user avatar",
    "profile picture", "profile image", "click here", "click to enlarge", "click here to enlarge",
    "click to zoom", "click image to enlarge", "zoom", "enlarge", "placeholder", "image placeholder",
    "spacer", "pixel", "tracking pixel", "transparent", "blank", "blank image", "thumbnail", "thumb",
    "banner", "banner ad", "advertisement", "ad", "ads", "sponsored", "default", "default image",
    "no image", "no image available", "image not found", "image not available", "image unavailable",
    "no photo", "no photo available", "not found", "loading", "loader", "spinner", "untitled",
    "untitled image", "alt", "alt text", "null", "undefined", "none", "n a", "featured image",
    "header image", "hero image", "background", "background image", "button", "arrow", "close",
    "menu", "search", "home", "share", "print", "email", "rss", "facebook", "twitter", "instagram",
    "pinterest", "linkedin", "youtube", "read more", "more", "next", "previous", "prev", "back",
    "back to top", "play", "play button", "download", "subscribe", "cart", "shopping cart",
    "separator", "divider", "bullet", "star", "rating",
)  # fmt: skip
"""Whole-caption boilerplate phrases (compared after :func:`boilerplate_key`, so "Image 3 of 12" is "image")."""

# Words ignored when comparing a caption with the boilerplate phrases.
_BOILERPLATE_FILLERS = frozenset({"a", "an", "the", "of", "this", "my", "your", "our", "its"})


class FilterConfig(BaseModel):
    """Caption filter thresholds; defaults follow DataComp "basic", LAION and the CLIP paper."""

    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(
        3,
        ge=0,
        description="Fewer whitespace-separated words drop the caption "
        "(DataComp basic: more than 2 words). Scripts without spaces count as one word.",
    )
    min_chars: int = Field(6, ge=0, description="Fewer characters drop the caption (DataComp basic: more than 5).")
    max_chars: int | None = Field(
        2000,
        ge=1,
        description="Longer captions are cut to this many characters, not dropped (LAION: 2,000). None: no limit.",
    )
    repeat_run: int = Field(
        7,
        ge=2,
        description="A run of this many identical characters (digits and spaces "
        "excepted), as in 'aaaaaaa' or '!!!!!!!', drops the caption.",
    )
    url_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="URL-like tokens covering at least this share "
        "of the caption's non-space characters make it url_like.",
    )
    camera_max_other_words: int = Field(
        1,
        ge=0,
        description="A caption with two or more kinds of camera "
        "setting (aperture, shutter, ISO, focal length, EV) and at most this many "
        "other words (camera brands and filler words not counted) is "
        "camera_settings.",
    )
    boilerplate: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE),
        description="Phrases that drop a caption when they are the whole caption "
        "(case, digits, punctuation and the fillers a/an/the/of/... ignored).",
    )
    checks: list[str] = Field(
        default_factory=lambda: list(CHECK_ORDER),
        description="Checks to run, in this order; the first failure is the reason.",
    )

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CHECK_ORDER]
        if unknown:
            raise ValueError(f"unknown filter checks {unknown}; known: {list(CHECK_ORDER)}")
        if len(set(v)) != len(v):
            raise ValueError(f"filter checks listed twice: {sorted({c for c in v if v.count(c) > 1})}")
        return v


class FilterResult(NamedTuple):
    """Per-row output of :func:`filter_texts`: the text to keep, its drop reason (None: kept), and whether the
    text was cut to ``max_chars``."""

    texts: list[str]
    reasons: list[str | None]
    truncated: list[bool]


# --------------------------------------------------------------------------------------------- the checks


def count_words(text: str) -> int:
    """Whitespace-separated words (so "東京タワーの夜景" is one word: language-specific segmentation is out of
    scope here; such captions are usually dropped by language id first)."""
    return len(text.split())


_URL_TLDS = (
    "com|net|org|edu|gov|mil|int|info|biz|io|co|me|tv|us|uk|de|fr|ru|jp|cn|br|it|es|nl|pl|au|ca|in|eu|ch|se|no|"
    "dk|fi|be|at|cz|kr|tw|vn|gr|pt|ro|hu|tr|mx|ar|za|ua|ir|id|my|sg|hk|nz|ie|il|sk|xyz|online|site|shop|store|"
    "blog|app|dev|ly|gl|cc|ws|to|fm|top"
)
# A bare domain's TLD in lower case, as links are written: "ASP.NET" and "dog.It" (a missing space) are words.
_URL_TOKEN = re.compile(
    r"(?i:[a-z][a-z0-9+.\-]{1,15}://\S+"  # scheme://...
    r"|www\d{0,3}\.\S+)"  # www.example...
    rf"|(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{{0,61}}[A-Za-z0-9])?\.)+(?:{_URL_TLDS})(?::\d{{1,5}})?(?:[/?#]\S*)?",  # a.com/x
)
_TOKEN_STRIP = "()[]<>{}\"'«»“”‘’,;!?"


def is_url_like(text: str, min_fraction: float = 0.5) -> bool:
    """True when URL-like tokens (``http://…``, ``www.…``, ``example.com/…``) make up at least
    ``min_fraction`` of the caption's non-space characters: the caption is a link, not a description."""
    tokens = text.split()
    total = sum(len(t) for t in tokens)
    if total == 0:
        return False
    url_chars = 0
    for tok in tokens:
        core = tok.strip(_TOKEN_STRIP).rstrip(".")
        if core and _URL_TOKEN.fullmatch(core):
            url_chars += len(tok)
    return url_chars >= min_fraction * total


_IMAGE_EXT = r"jpe?g|jpe|jfif|pjpeg|png|apng|gif|webp|bmp|tiff?|heic|heif|avif|svg|ico|raw|cr2|cr3|nef|arw|dng|orf|psd"
_COPY_SUFFIX = r"(?:[_\-~.][A-Za-z0-9]{1,8}|\s?\(\d{1,3}\))?"
_FILENAME_RES: tuple[re.Pattern[str], ...] = (
    # anything ending in an image file extension: image.png, my photo final.JPG, IMG_1234.JPG
    re.compile(rf"\.(?:{_IMAGE_EXT})$", re.IGNORECASE),
    # letters + digits camera/CMS names: IMG_1234, DSC00012, DSCN0001, P1010001, IMG_20190412_153012, image-00012
    re.compile(rf"^[A-Za-z]{{1,12}}[_\-]?\d{{4,}}(?:[_\-.]\d+)*{_COPY_SUFFIX}$"),
    # known camera/phone prefixes with a space or 3 digits: "IMG 123", "DSC 0012", "PXL_20230105_101112345"
    re.compile(
        rf"^(?:IMG|DSC[NF_]?|PICT?|PXL|MVIMG|VID|GOPR|DJI|MVI|CIMG|SDC|KIF|SAM|WP|scan|image|photo|picture)"
        rf"[ _\-]?\d{{3,}}(?:[_\-.]\d+)*{_COPY_SUFFIX}$",
        re.IGNORECASE,
    ),
    # date/time stamps: 20160716, 20160716_113957, 20160716T113957, 2016-07-16 11.39.57
    re.compile(rf"^\d{{8}}(?:[_\-T ]?\d{{4,9}})?{_COPY_SUFFIX}$"),
    re.compile(
        rf"^\d{{4}}[\-_.]\d{{2}}[\-_.]\d{{2}}(?:[ _\-T]\d{{2}}[.:\-_]?\d{{2}}(?:[.:\-_]?\d{{2}})?)?{_COPY_SUFFIX}$"
    ),
    # screenshots: "Screen Shot 2019-04-12 at 15.30.12", "Screenshot_20230105-101112"
    re.compile(r"^screen ?shot[\s_\-]*\d{4}[\-_.]?\d{2}[\-_.]?\d{2}", re.IGNORECASE),
    # hashes and ids: md5/sha hex, UUIDs, long random tokens mixing letters and digits
    re.compile(r"^[0-9a-f]{16,}$", re.IGNORECASE),
    re.compile(r"^[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}$", re.IGNORECASE),
    re.compile(r"^(?=[^\d]*\d)(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9_\-]{20,}$"),
)


def is_filename_like(text: str) -> bool:
    """True for captions that are file names, camera counters, time stamps or hashes, not descriptions."""
    return any(p.search(text) for p in _FILENAME_RES)


_CAMERA_PATTERNS: dict[str, re.Pattern[str]] = {
    "aperture": re.compile(r"(?<!\w)[fƒ]\s?/\s?\d{1,2}(?:[.,]\d{1,2})?(?!\w)|(?<!\w)f\d{1,2}[.,]\d(?!\w)", re.I),
    "shutter": re.compile(
        r"(?<![\w/.])1/\d{1,5}(?:\s?(?:s|sec|secs|seconds))?(?![\w/])"
        r"|(?<![\w/.])(?![1-9]0s(?!\w))\d{1,3}(?:[.,]\d{1,3})?\s?(?:s|sec|secs|seconds)(?!\w)",  # "90s": a decade
        re.I,
    ),
    # film speeds end in 0, 2, 4, 5, 6 or 8 (100, 125, 3200, 6400); standards such as ISO 9001 or 14001 do not
    "iso": re.compile(r"(?<!\w)ISO[\s:\-]?\d{1,5}[024568](?!\w)", re.I),
    "focal": re.compile(r"(?<![\w.])\d{1,4}(?:[.,]\d)?(?:\s?-\s?\d{1,4})?\s?mm(?!\w)", re.I),
    "ev": re.compile(r"(?<!\w)[+\-±]?\d(?:[.,]\d{1,2})?\s?EV(?!\w)", re.I),
}
# Words that do not count as content next to camera settings.
_CAMERA_WORDS = frozenset(
    {
        "sec", "secs", "second", "seconds", "iso", "mm", "ev", "shot", "shutter", "speed", "aperture", "exposure",
        "focal", "length", "lens", "camera", "flash", "off", "on", "no", "did", "not", "fire", "fired", "auto",
        "manual", "mode", "program", "priority", "wb", "white", "balance", "bias", "compensation", "metering", "spot",
        "pattern", "canon", "nikon", "sony", "fujifilm", "fuji", "olympus", "panasonic", "lumix", "leica", "pentax",
        "samsung", "ricoh", "sigma", "tamron", "tokina", "zeiss", "hasselblad", "gopro", "dji", "iphone", "eos", "mark",
        "ii", "iii", "iv", "alpha", "nikkor", "usm", "is", "vr", "dg", "dc", "os", "hsm", "af", "ed", "stm", "rf", "ef",
        "ef-s", "xf", "mp", "dslr", "mirrorless", "tripod", "handheld", "taken", "using", "settings", "at", "with",
        "and", "in", "by", "of", "the", "a", "an"
    }
)  # fmt: skip
_LETTER_WORD = re.compile(r"[^\W\d_]{2,}")


def is_camera_settings(text: str, max_other_words: int = 1) -> bool:
    """True for captions that are camera settings (``f/2.8 1/250s ISO 100``, ``Canon EOS 5D, 50mm f/1.8``):
    at least two kinds of setting and at most ``max_other_words`` words besides camera vocabulary."""
    kinds = 0
    rest = text
    for pattern in _CAMERA_PATTERNS.values():
        rest, n = pattern.subn(" ", rest)
        kinds += n > 0
    if kinds < 2:
        return False
    other = [w for w in _LETTER_WORD.findall(rest) if w.lower() not in _CAMERA_WORDS]
    return len(other) <= max_other_words


_NON_LETTERS = re.compile(r"[\W\d_]+")


def boilerplate_key(text: str) -> str:
    """Lower-cased letters-only words of ``text`` without fillers: the form boilerplate phrases are compared in."""
    words = _NON_LETTERS.sub(" ", text.casefold()).split()
    return " ".join(w for w in words if w not in _BOILERPLATE_FILLERS)


def boilerplate_keys(phrases: Iterable[str]) -> frozenset[str]:
    """Keys of a phrase list (empty keys dropped), to build once per batch."""
    return frozenset(k for k in (boilerplate_key(p) for p in phrases) if k)


def is_boilerplate(text: str, keys: frozenset[str]) -> bool:
    """True when the whole caption is a boilerplate phrase ("Logo", "Click here!", "Image 3 of 12"); a caption
    that merely contains such a word ("A logo of a red fox") is not."""
    key = boilerplate_key(text)
    return bool(key) and key in keys


@lru_cache(maxsize=32)
def _repeat_re(run: int) -> re.Pattern[str]:
    return re.compile(rf"([^\s\d\u0640])\1{{{run - 1},}}")


def has_repeated_chars(text: str, run: int = 7) -> bool:
    """True when one character repeats ``run`` times in a row. Not a digit or space ("1000000" is fine), nor
    Arabic's tatweel (U+0640), the stroke that stretches a word in titles (``الحمــــــــد``), not a sign of junk."""
    return _repeat_re(run).search(text) is not None


# ------------------------------------------------------------------------------------------- the pipeline


def _failures(text: str, cfg: FilterConfig, keys: frozenset[str], first_only: bool) -> list[str]:
    failed: list[str] = []
    for check in cfg.checks:
        if check == EMPTY:
            bad = not text
        elif not text:
            bad = False  # an empty caption is only "empty" (or, when that check is off, too short)
            if check == TOO_FEW_CHARS:
                bad = cfg.min_chars > 0
            elif check == TOO_FEW_WORDS:
                bad = cfg.min_words > 0
        elif check == URL_LIKE:
            bad = is_url_like(text, cfg.url_fraction)
        elif check == FILENAME_LIKE:
            bad = is_filename_like(text)
        elif check == CAMERA_SETTINGS:
            bad = is_camera_settings(text, cfg.camera_max_other_words)
        elif check == BOILERPLATE:
            bad = is_boilerplate(text, keys)
        elif check == REPEATED_CHARS:
            bad = has_repeated_chars(text, cfg.repeat_run)
        elif check == TOO_FEW_CHARS:
            bad = len(text) < cfg.min_chars
        elif check == TOO_FEW_WORDS:
            bad = count_words(text) < cfg.min_words
        else:  # pragma: no cover - the validator rejects unknown checks
            raise ValueError(check)
        if bad:
            failed.append(check)
            if first_only:
                break
    return failed


def truncate_text(text: str, max_chars: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``max_chars`` characters (trailing space removed); returns (text, was_cut)."""
    if max_chars is None or len(text) <= max_chars:
        return text, False
    return text[:max_chars].rstrip(), True


def check_text(text: str, cfg: FilterConfig | None = None, *, keys: frozenset[str] | None = None) -> str | None:
    """The drop reason of one already normalised and truncated caption, or None when it is kept."""
    cfg = cfg or FilterConfig()
    failed = _failures(text, cfg, keys if keys is not None else boilerplate_keys(cfg.boilerplate), True)
    return failed[0] if failed else None


def failing_checks(text: str, cfg: FilterConfig | None = None) -> list[str]:
    """Every check one caption fails, in check order (for analysis; the drop reason is the first)."""
    cfg = cfg or FilterConfig()
    return _failures(text, cfg, boilerplate_keys(cfg.boilerplate), False)


def filter_texts(texts: Sequence[object], cfg: FilterConfig | None = None, *, normalize: bool = True) -> FilterResult:
    """Normalise, truncate and check a column of captions.

    ``texts`` may hold None (an Arrow null: dropped as ``empty``). With ``normalize=False`` the texts must already
    be :func:`~witbuild.text.normalize.normalize_text` output (normalising twice would unescape HTML twice).
    Returns one text, reason and truncation flag per row, in input order.
    """
    cfg = cfg or FilterConfig()
    keys = boilerplate_keys(cfg.boilerplate)
    out_texts: list[str] = []
    reasons: list[str | None] = []
    truncated: list[bool] = []
    for raw in texts:
        text = normalize_text(raw) if normalize else ("" if raw is None else str(raw))
        text, cut = truncate_text(text, cfg.max_chars)
        failed = _failures(text, cfg, keys, True)
        out_texts.append(text)
        reasons.append(failed[0] if failed else None)
        truncated.append(cut)
    return FilterResult(out_texts, reasons, truncated)


def reason_counts(reasons: Iterable[str | None], truncated: Iterable[bool] | None = None) -> Counter[str]:
    """Rows per drop reason, kept rows under :data:`KEPT`, and, when ``truncated`` is given, the number of cut
    texts under ``"truncated"`` (which overlaps the other counts: a cut text may still be kept or dropped)."""
    counts: Counter[str] = Counter(KEPT if r is None else r for r in reasons)
    if truncated is not None:
        counts["truncated"] = sum(bool(t) for t in truncated)
    return counts
