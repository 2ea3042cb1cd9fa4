"""Image download with img2dataset's real downloader: its options, the network policy around it, and its
failures by class."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import threading
import urllib.error
import urllib.request
import urllib.response
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from witbuild.layout import OPTED_OUT, ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE
from witbuild.network import BLOCKED_ADDRESS, BodyLimit, Policy, allow_tuple, guarded_urlopen
from witbuild.robots import RobotsAnswer, RobotsLimits, agent_tokens, fetch_robots, origin_of, robots_refusal

# albumentations (which img2dataset imports) asks pypi.org for a newer release at import unless this is set: the
# build sends no request but those it is asked for. Set here, on import, before any ``import img2dataset``.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# img2dataset decodes with OpenCV; OpenCV's own pixel cap stops a decompression bomb before it
# allocates gigabytes (PIL's default cap is the same order: 89,478,485 pixels).
MAX_IMAGE_PIXELS = 89_478_485


class DownloadConfig(BaseModel):
    """img2dataset settings of the download stage (names follow img2dataset's)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _png_compression(self) -> DownloadConfig:
        """png's encode_quality is a compression level 0-9 (img2dataset refuses more, at download time): 9 when not
        given, and another value is an error now, not after every earlier stage has run."""
        if self.encode_format == "png":
            if "encode_quality" not in self.model_fields_set:
                self.encode_quality = 9
            elif self.encode_quality > 9:
                raise ValueError(f"encode_quality {self.encode_quality}: png takes a compression level 0-9")
        return self

    @field_validator("extra_columns")
    @classmethod
    def _pair_columns(cls, columns: list[str]) -> list[str]:
        """Names of the pairs' own columns, uid among them, checked before Spark starts: img2dataset fails on an
        unknown name only after every earlier stage, and without uid every sample lost its link to its pair."""
        from witbuild import schemas

        # url and text are carried always; crawl_date is a timestamp, which img2dataset's Spark reader refuses
        # (PARQUET_TYPE_ILLEGAL, after every earlier stage)
        known = [n for n in schemas.load("balanced").names if n not in ("url", "text", "crawl_date")]
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ValueError(f"not a column the download can carry: {', '.join(unknown)} (columns: "
                             f"{', '.join(known)})")
        if "uid" not in columns:
            raise ValueError("must include uid: it ties each sample to its pair (index.parquet's uid)")
        if len(set(columns)) < len(columns):
            raise ValueError("a column is named twice")
        return columns

    image_size: int = Field(256, ge=8, description="Target size of the resize (see resize_mode).")
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = Field(
        "keep_ratio", description="img2dataset's resize mode (its ResizeMode).")
    resize_only_if_bigger: bool = Field(True, description="Resize only images larger than image_size; smaller "
                                        "ones are stored at their own size.")
    encode_format: Literal["jpg", "png", "webp"] = Field("jpg", description="jpg, png or webp.")
    encode_quality: int = Field(95, ge=0, le=100, description="Quality of the stored image, 0-100 for jpg and "
                                "webp; for png, zlib's compression level 0-9 (9 when not given).")
    timeout: int = Field(10, ge=1, description="Seconds a request may wait for the server at each step (the "
                         "connection, each read).")
    total_timeout: float = Field(60.0, gt=0, description="Seconds one image's whole exchange may take (connection, "
                                 "headers, redirects, body), however slowly the server sends it (error class "
                                 "timeout).")
    max_image_bytes: int = Field(32 * 1024 * 1024, ge=1, description="A larger image body is refused before or "
                                 "while it is read (error class body_too_large): each download thread holds at "
                                 "most this much.")
    retries: int = Field(1, ge=0, description="Further attempts at an image whose download failed.")
    min_image_size: int = Field(200, ge=0, description="Shorter side in pixels of the original image "
                                "(DataComp 'basic': 200).")
    max_aspect_ratio: float = Field(3.0, gt=0, description="Longer side / shorter side (DataComp 'basic': 3).")
    max_image_area: int = Field(MAX_IMAGE_PIXELS, ge=1, description="Larger images are refused (decompression "
                                "bombs); also set as OpenCV's decoder limit.")
    max_image_memory: int = Field(2 * 2**30, ge=2**20, description="Bytes one image may take while it is decoded "
                                  "and resized, estimated from its header (80 a pixel with alpha or 16-bit "
                                  "channels, 8 otherwise): a larger one is refused (image_too_large), so that a "
                                  "small file of many wide pixels cannot take a worker's memory.")
    user_agent_token: str = Field("witbuild", description="Added to the User-Agent of every request; the "
                                  "robots.txt groups of this token (and of 'img2dataset', which the User-Agent "
                                  "also names) are honoured.")
    respect_robots: bool = Field(True, description="Fetch each image host's robots.txt once (under the network "
                                 "policy, with the crawl's timeouts and size cap) and drop the URLs it disallows "
                                 "(robots_disallowed; 5xx or unreachable robots.txt: robots_unreachable).")
    number_sample_per_shard: int = Field(10_000, ge=1, description="Rows of the URL list per img2dataset shard "
                                         "(its samples are the successes among them).")
    thread_count: int = Field(32, ge=1, description="Download threads per Spark task.")
    subjob_size: int = Field(1000, ge=1, description="Shards handed to Spark per job.")
    upright: bool = Field(True, description="Turn each image as its EXIF orientation (JPEG, PNG) or its irot/imir "
                          "boxes (AVIF) say, as browsers show it (img2dataset stores the pixels as the camera read "
                          "them: phone photos on their side); counted as exif_turned_upright.")
    srgb: bool = Field(True, description="Convert each image with an embedded colour profile other than sRGB's "
                       "(RGB: Display P3, Adobe RGB; grey; CMYK) to sRGB, as browsers show it (img2dataset keeps "
                       "the numbers and drops the profile: duller colours, greys and print colours off); counted "
                       "as icc_to_srgb, and cmyk_icc_to_srgb for CMYK JPEGs.")
    cache_dir: str | None = Field(
        None, description="Keep every successful (2xx) response here by URL, and answer a later request for the "
        "URL from it instead of the network: builds that share it fetch each image once (witbuild experiment's "
        "variants do). Answers stay as first fetched, so leave it unset for a build that must see the web now.")
    extra_columns: list[str] = Field(
        default_factory=lambda: ["uid", "page_url", "matched", "lang"],
        description="Pair columns carried into each sample's json and the shard metadata (uid among them; url and "
        "text always are).",
    )

    @property
    def opencv_env(self) -> dict[str, str]:
        return {"OPENCV_IO_MAX_IMAGE_PIXELS": str(self.max_image_area), "NO_ALBUMENTATIONS_UPDATE": "1"}


def apply_env(cfg: DownloadConfig) -> None:
    """Environment the downloader's worker processes inherit. Spark's Python workers take theirs from
    the JVM, so this must run before the SparkSession starts (``get_session(executor_env=...)`` also
    passes it to executors on a cluster)."""
    for key, value in cfg.opencv_env.items():
        os.environ.setdefault(key, value)


_ERROR_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        (BLOCKED_ADDRESS, r"blocked[ _]address"),  # first: its message names the address, which may look like others
        (OPTED_OUT, r"opt(ed)?[- ]?out|x-robots-tag|noai|tdm-reservation"),
        (ROBOTS_DISALLOWED, r"robots_disallowed"),  # a redirect hop its host's robots.txt forbids
        (ROBOTS_UNREACHABLE, r"robots_unreachable"),
        ("http_404", r"\b404\b"),
        ("http_403", r"\b403\b"),
        ("http_4xx", r"HTTP Error 4\d\d"),
        ("http_5xx", r"HTTP Error 5\d\d"),
        ("body_too_large", r"body too large"),
        ("redirect_scheme", r"Redirection to url '(?!https?:)|unknown url type"),  # file:, data:, ftp: never followed
        ("truncated_body", r"IncompleteRead"),  # fewer bytes than the Content-Length said
        ("redirect_loop", r"redirect|infinite loop"),
        ("timeout", r"timed? ?out|timeout"),
        ("aspect_ratio", r"aspect ratio"),
        ("image_too_large", r"area|too large|exceeds limit|pixels"),
        ("image_too_small", r"too small|min(imum)? ?image ?size"),
        ("empty_body", r"buf\.empty|empty"),
        ("undecodable", r"decod|cannot identify|truncated|corrupt|not an image"),
        ("connection", r"connection|refused|reset|name or service|unreachable|ssl|certificate"),
    )
)


def error_class(message: str | None) -> str:
    """A short, stable class for img2dataset's free-text ``error_message`` (for counts and stats)."""
    if not message:
        return "unknown"
    for name, pattern in _ERROR_CLASSES:
        if pattern.search(message):
            return name
    return "other"


# ------------------------------------------------------------------------------------------------ network policy


class OptedOutError(urllib.error.URLError):
    """A response whose headers reserve its use; the message starts with 'opted out' (error class opted_out)."""


class TdmReservationProcessor(urllib.request.BaseHandler):
    """Refuses a successful response that carries ``tdm-reservation: 1`` (W3C TDMRep: the rights holder
    reserves text and data mining), before its body is read. img2dataset honours X-Robots-Tag itself."""

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        if 200 <= response.status < 300 and any(
                v.strip() == "1" for v in response.headers.get_all("tdm-reservation") or ()):
            response.close()
            raise OptedOutError(f"opted out: tdm-reservation: 1 on {request.full_url}")
        return response

    https_response = http_response


#: img2dataset's default disallowed_header_directives, which the build keeps
DEFAULT_REFUSED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
# Directives of X-Robots-Tag that take a value after a colon: not a bot's name
_XRT_VALUE_DIRECTIVES = frozenset(("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"))
_XRT_AGENT = re.compile(r"^([A-Za-z0-9_.\-]+)\s*:\s*(.*)$", re.S)


def x_robots_refusal(values: Iterable[str], tokens: Iterable[str], refused: Iterable[str]) -> str | None:
    """The X-Robots-Tag rule that refuses our use (``"noai"``, ``"witbuild: noimageai"``), or None.

    Each header is ``rule, rule`` for every bot, or ``bot: rule, rule`` for one (a section runs to the next
    ``bot:``); ``none`` is ``noindex, nofollow``. Sections for every bot and for any of ``tokens`` apply.
    img2dataset's own check splits a header at its first colon, so ``noai, unavailable_after: …`` and
    ``noindex, otherbot: nofollow`` read as a bot's name, and ``img2dataset: noai`` (its own name) is not ours."""
    names = {t.strip().lower() for t in tokens if t and t.strip()}
    refused = {r.strip().lower() for r in refused}
    if "noindex" in refused:
        refused.add("none")
    for value in values:
        agent: str | None = None
        for part in value.split(","):
            part = part.strip()
            m = _XRT_AGENT.match(part)
            if m and m.group(1).lower() not in _XRT_VALUE_DIRECTIVES:
                agent, part = m.group(1).lower(), m.group(2).strip()
            rule = part.lower()
            if rule in refused and (agent is None or agent in names):
                return f"{agent}: {rule}" if agent else rule
    return None


class XRobotsTagProcessor(urllib.request.BaseHandler):
    """Refuses a successful response whose X-Robots-Tag reserves its use for us (:func:`x_robots_refusal`), before
    its body is read or kept."""

    def __init__(self, tokens: Iterable[str], refused: Iterable[str]) -> None:
        self.tokens = tuple(tokens)
        self.refused = tuple(refused)

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        if 200 <= response.status < 300 and (why := x_robots_refusal(
                response.headers.get_all("X-Robots-Tag") or (), self.tokens, self.refused)):
            response.close()
            raise OptedOutError(f"opted out: X-Robots-Tag {why} on {request.full_url}")
        return response

    https_response = http_response


@dataclass(frozen=True)
class HopRobots:
    """How a redirect hop's robots.txt is fetched and read: the stage's own settings for its image hosts."""

    tokens: tuple[str, ...]
    user_agent: str
    limits: RobotsLimits


_HOP_ANSWERS: dict[tuple[str, tuple[str, ...], str], RobotsAnswer] = {}  # per process: one fetch per origin
_HOP_LOCKS: dict[tuple[str, tuple[str, ...], str], threading.Lock] = {}  # one per origin: others' hops go on
_HOP_LOCK = threading.Lock()  # guards _HOP_LOCKS


class RedirectRobotsCheck(urllib.request.BaseHandler):
    """Refuses a redirect hop that the robots.txt of the hop's origin disallows. The stage judged each row's own URL
    against its host's robots.txt; a redirect leads anywhere (a shortener, another host, another path of the same
    host), and RFC 9309's rules hold for every URL fetched. Each origin's robots.txt is fetched once per process,
    under the network policy; its refusal is the row's error (robots_disallowed, robots_unreachable)."""

    def __init__(self, robots: HopRobots, allow: tuple[str, ...]) -> None:
        self.robots = robots
        self.allow = allow

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        if not getattr(request, "redirect_dict", None):
            return request  # the row's own URL: judged by the stage
        origin = origin_of(request.full_url)
        if origin is None:
            return request
        why = robots_refusal(request.full_url, *self._answer(origin), self.robots.tokens)
        if why:
            raise urllib.error.URLError(f"{why}: redirected to {request.full_url} ({origin}/robots.txt)")
        return request

    https_request = http_request

    def _answer(self, origin: str) -> tuple[str, str]:
        key = (origin, self.allow, self.robots.user_agent)
        with _HOP_LOCK:
            origin_lock = _HOP_LOCKS.setdefault(key, threading.Lock())
        with origin_lock:  # a slow robots.txt holds only the threads redirected to its origin
            answer = _HOP_ANSWERS.get(key)
            if answer is None:
                answer = _HOP_ANSWERS[key] = fetch_robots(origin, self.allow, self.robots.limits,
                                                          self.robots.user_agent)
        return answer.outcome, answer.body


def policy_cache_folder(folder: str, allow: tuple[str, ...]) -> str:
    """The part of a response cache kept under one network policy. An answer is kept after the policy let its
    fetch through, so it is replayed only under that same policy: a build whose policy refuses an address the
    answer came from (the literal check of a URL runs before the cache, the connect-time check would not) fetches
    again, through its own checks."""
    digest = hashlib.sha256(json.dumps(sorted(allow)).encode()).hexdigest()[:16]
    return os.path.join(folder, f"policy-{digest}")


def _cache_paths(folder: str, url: str) -> tuple[str, str]:
    h = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    base = os.path.join(folder, h[:2], h)
    return base + ".body", base + ".json"


class ResponseCache(urllib.request.BaseHandler):
    """Answers a GET from the response kept on disk for its URL (:class:`ResponseKeeper`), before any handler
    opens a socket. Every response processor (the opt-out check included) still sees the answer, and
    redirects are replayed hop by hop (only 2xx answers are kept)."""

    handler_order = 100  # before urllib's HTTP handlers (500): a kept answer never reaches the network

    def __init__(self, folder: str, allow: tuple[str, ...] = ()) -> None:
        self.folder = policy_cache_folder(folder, allow)

    def http_open(self, request: urllib.request.Request) -> Any:
        if request.get_method() != "GET":
            return None
        body_path, meta_path = _cache_paths(self.folder, request.full_url)
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            with open(body_path, "rb") as fh:
                body = fh.read()
        except (OSError, ValueError):
            return None
        headers = http.client.HTTPMessage()
        for k, v in meta["headers"]:
            headers[k] = v
        response = urllib.response.addinfourl(io.BytesIO(body), headers, request.full_url, meta["status"])
        response.msg = meta.get("reason", "OK")
        response.from_cache = True  # type: ignore[attr-defined]
        return response

    https_open = http_open


class ResponseKeeper(urllib.request.BaseHandler):
    """Keeps a 2xx answer to a GET on disk under the sha256 of its URL, after the other processors accepted it
    (an opted-out answer is never kept). Files are written under a temporary name and renamed, the headers
    last, so concurrent workers never read half an entry."""

    handler_order = 900  # after the opt-out check (500), before urllib's error processing (1000)

    def __init__(self, folder: str, allow: tuple[str, ...] = ()) -> None:
        self.folder = policy_cache_folder(folder, allow)

    def http_response(self, request: urllib.request.Request, response: Any) -> Any:
        status = getattr(response, "status", None) or response.getcode()
        if getattr(response, "from_cache", False) or request.get_method() != "GET" or not 200 <= status < 300:
            return response
        body = response.read()
        response.close()
        body_path, meta_path = _cache_paths(self.folder, request.full_url)
        os.makedirs(os.path.dirname(body_path), exist_ok=True)
        meta = {"url": request.full_url, "status": status, "reason": getattr(response, "reason", "OK"),
                "headers": list(response.headers.items())}
        for path, data in ((body_path, body), (meta_path, json.dumps(meta).encode())):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        replay = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, status)
        replay.msg = meta["reason"]
        return replay

    https_response = http_response


@dataclass(frozen=True)
class ImageLimits:
    """How long and how much one image download may take (``download.total_timeout``, ``max_image_bytes``):
    img2dataset's own timeout applies to each read, so a server dripping bytes, or sending gigabytes, would hold a
    download thread (and its memory) for as long as it likes."""

    total_timeout: float = 60.0
    max_bytes: int = 32 * 1024 * 1024

    @classmethod
    def of(cls, cfg: DownloadConfig) -> ImageLimits:
        return cls(cfg.total_timeout, cfg.max_image_bytes)


class GuardedDownloader:
    """img2dataset's ``Downloader`` with the build's network policy around every shard it downloads.

    img2dataset pickles its downloader to the processes that open the sockets (Spark's Python workers with
    ``distributor="pyspark"``, spawned processes with ``"multiprocessing"``), so a guard installed in the
    driver would not reach them; this wrapper is pickled in its place and installs the guarded urllib opener
    in that process, around the call that runs the download threads."""

    def __init__(self, inner: Callable[[Any], Any], allow: tuple[str, ...], cache_dir: str | None = None,
                 limits: ImageLimits | None = None, hop_robots: HopRobots | None = None) -> None:
        self.inner = inner
        self.allow = allow
        self.cache_dir = cache_dir
        self.limits = limits or ImageLimits()
        self.hop_robots = hop_robots

    def __call__(self, row: Any) -> Any:
        token = getattr(self.inner, "user_agent_token", None) or ""
        refused = getattr(self.inner, "disallowed_header_directives", None) or DEFAULT_REFUSED_DIRECTIVES
        extra: tuple[urllib.request.BaseHandler, ...] = (
            TdmReservationProcessor(), XRobotsTagProcessor(agent_tokens(token), refused),
            BodyLimit(self.limits.max_bytes))
        if self.hop_robots is not None:
            extra += (RedirectRobotsCheck(self.hop_robots, self.allow),)
        if self.cache_dir:
            extra += (ResponseCache(self.cache_dir, self.allow), ResponseKeeper(self.cache_dir, self.allow))
        with guarded_urlopen(self.allow, extra=extra, total_timeout=self.limits.total_timeout):
            return self.inner(row)


_DISTRIBUTORS = ("pyspark_distributor", "multiprocessing_distributor")


@contextmanager
def img2dataset_guarded(policy: Policy, cache_dir: str | None = None, sign: bool = False,
                        limits: ImageLimits | None = None, upright: bool = False, srgb: bool = False,
                        encoding: tuple[str, int] = ("jpg", 95), hop_robots: HopRobots | None = None,
                        max_image_memory: int | None = None) -> Iterator[None]:
    """Within the block, ``img2dataset.download`` hands its distributor a :class:`GuardedDownloader`; with
    ``sign``, its WebDataset writer also saves each shard's dedup signatures (witbuild/dedup/shard_signatures.py);
    with ``upright``, its resizer turns each image by its EXIF orientation (witbuild/orientation.py), and with
    ``srgb`` converts it from its colour profile to sRGB (witbuild/colour_profile.py), writing a changed image
    again in ``encoding`` (the download's format and quality; witbuild/as_shown.py); the signatures are those of
    the image as stored.
    Images of more than 8 bits per channel reach img2dataset's resizer at 8 bits (witbuild/bit_depth.py), which
    would otherwise store them white.

    img2dataset has no hook for the downloader itself, but ``download()`` looks its distributor function
    up in ``img2dataset.main`` when called; wrapping that function (and restoring it afterwards) keeps
    img2dataset's own code and options untouched."""
    import importlib

    from img2dataset.writer import WebDatasetSampleWriter

    from witbuild.as_shown import AsShownResizer
    from witbuild.bit_depth import EightBitResizer
    from witbuild.colour_profile import CmykResizer
    from witbuild.decode_budget import MemoryBudgetResizer
    from witbuild.dedup.shard_signatures import SigningWriterClass

    # ``import img2dataset.main`` would give the package's ``main`` function, which shadows the module's name
    i2d_main = importlib.import_module("img2dataset.main")
    allow = allow_tuple(policy)
    originals = {name: getattr(i2d_main, name) for name in _DISTRIBUTORS}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def distributor(processes_count: Any, downloader: Any, *args: Any, **kw: Any) -> Any:
            if sign and downloader.sample_writer_class is WebDatasetSampleWriter:
                downloader.sample_writer_class = SigningWriterClass(WebDatasetSampleWriter)
            if not isinstance(downloader.resizer, (EightBitResizer, CmykResizer, AsShownResizer, MemoryBudgetResizer)):
                downloader.resizer = EightBitResizer(downloader.resizer)
                if srgb:
                    downloader.resizer = CmykResizer(downloader.resizer)
                if upright or srgb:
                    downloader.resizer = AsShownResizer(downloader.resizer, *encoding, upright=upright, srgb=srgb)
                if max_image_memory is not None:
                    downloader.resizer = MemoryBudgetResizer(downloader.resizer, max_image_memory)
            guarded = GuardedDownloader(downloader, allow, cache_dir, limits, hop_robots)
            return fn(processes_count, guarded, *args, **kw)
        return distributor

    for name, fn in originals.items():
        setattr(i2d_main, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(i2d_main, name, fn)
