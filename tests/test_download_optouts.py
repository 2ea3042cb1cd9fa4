"""Opt-outs and limits of the download, through img2dataset's own download function on servers on 127.0.0.1/.2:
X-Robots-Tag read rule by rule, a redirect's target asked its own robots.txt, opted-out answers never kept, and an
image whose decoding would take too much memory refused from its header."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from witbuild.decode_budget import MemoryBudgetResizer, decode_cost
from witbuild.download import (
    DEFAULT_REFUSED_DIRECTIVES,
    HopRobots,
    RedirectRobotsCheck,
    ResponseCache,
    ResponseKeeper,
    XRobotsTagProcessor,
    error_class,
    x_robots_refusal,
)
from witbuild.network import guarded_urlopen, url_refusal
from witbuild.robots import RobotsLimits, agent_tokens, user_agent_string

TOKENS = agent_tokens("witbuild")  # ("witbuild", "img2dataset"): the User-Agent names both


@pytest.mark.parametrize(("values", "refused_by"), [
    (["noai"], "noai"), (["NoImageAI"], "noimageai"), (["noindex, nofollow"], "noindex"),
    (["none"], "none"),  # noindex, nofollow
    (["noai, unavailable_after: 25 Jun 2030 15:00:00 PST"], "noai"),  # img2dataset reads "noai, unavailable_after"
    (["unavailable_after: 25 Jun 2030 15:00:00 PST, noai"], "noai"),  # as a bot's name
    (["noindex, otherbot: nofollow"], "noindex"),
    (["img2dataset: noai"], "img2dataset: noai"), (["WitBuild: noimageai"], "witbuild: noimageai"),
    (["otherbot: nofollow, witbuild: noai"], "witbuild: noai"), (["nofollow", "noai"], "noai"),
    (["otherbot: noai"], None), (["otherbot: noindex, nofollow"], None), (["nofollow, noarchive"], None),
    (["max-image-preview: large"], None), (["0"], None), ([], None),
])
def test_x_robots_tag_is_read_rule_by_rule(values: list[str], refused_by: str | None) -> None:
    """Google's and MDN's syntax: ``rule, rule`` for every bot, ``bot: rule, rule`` for one, ``none`` for
    ``noindex, nofollow``; directives with a value (``unavailable_after: date``) are no bot's name."""
    assert x_robots_refusal(values, TOKENS, DEFAULT_REFUSED_DIRECTIVES) == refused_by


class _Site:
    """A server on ``host`` answering ``pages[path] = (status, headers, body)``; every request path is recorded."""

    def __init__(self, host: str) -> None:
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                status, headers, body = outer.pages.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def sites() -> Iterator[tuple[_Site, _Site]]:
    a, b = _Site("127.0.0.1"), _Site("127.0.0.2")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buf, "JPEG")
    return buf.getvalue()


def _fetch(url: str, extra: tuple[Any, ...]) -> tuple[Any, str | None]:
    from img2dataset.downloader import download_image

    with guarded_urlopen(["127.0.0.1", "127.0.0.2"], extra=extra):
        _, stream, err = download_image((0, url), 5, "witbuild", list(DEFAULT_REFUSED_DIRECTIVES))
    return stream, err


def test_opted_out_images_are_refused_before_the_body_and_never_kept(sites, tmp_path) -> None:
    """X-Robots-Tag headers img2dataset's own check misreads are refused, before the answer is kept in the
    response cache (every experiment keeps one)."""
    a, _ = sites
    for i, value in enumerate(["noai, unavailable_after: 25 Jun 2030 15:00:00 PST", "img2dataset: noai", "none"]):
        a.pages[f"/x{i}.jpg"] = (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": value}, _jpeg())
    a.pages["/fine.jpg"] = (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": "otherbot: noai"}, _jpeg())
    extra = (XRobotsTagProcessor(TOKENS, DEFAULT_REFUSED_DIRECTIVES), ResponseCache(str(tmp_path)),
             ResponseKeeper(str(tmp_path)))
    for i in range(3):
        stream, err = _fetch(f"{a.base}/x{i}.jpg", extra)
        assert stream is None and error_class(err) == "opted_out", err
    stream, err = _fetch(f"{a.base}/fine.jpg", extra)
    assert err is None and stream.read() == _jpeg()
    assert len(list(tmp_path.rglob("*.body"))) == 1  # the allowed one alone


def test_a_redirect_asks_its_targets_robots_txt(sites) -> None:
    """The stage judged the row's URL by its own host's robots.txt; the redirect's target, on another host or on a
    path of the same host that robots.txt disallows, is refused by that host's rules and counted as such."""
    a, b = sites
    a.pages["/robots.txt"] = (200, {}, b"User-agent: *\nDisallow: /private/\n")
    b.pages["/robots.txt"] = (200, {}, b"User-agent: img2dataset\nDisallow: /\n")
    for site in (a, b):
        site.pages["/private/x.jpg"] = site.pages["/ok.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg())
    a.pages["/to-b"] = (302, {"Location": f"{b.base}/ok.jpg"}, b"")
    a.pages["/to-private"] = (301, {"Location": "/private/x.jpg"}, b"")
    a.pages["/to-ok"] = (302, {"Location": "/ok.jpg"}, b"")
    check = RedirectRobotsCheck(HopRobots(TOKENS, user_agent_string("witbuild"), RobotsLimits(5.0, 10.0)),
                                ("127.0.0.1", "127.0.0.2"))
    for path in ("/to-b", "/to-private"):
        stream, err = _fetch(a.base + path, (check,))
        assert stream is None and error_class(err) == "robots_disallowed", err
    stream, err = _fetch(a.base + "/to-ok", (check,))
    assert err is None and stream.read() == _jpeg()
    assert b.hits == ["/robots.txt"] and "/private/x.jpg" not in a.hits
    assert a.hits.count("/robots.txt") == 1  # once per origin and process


@pytest.mark.parametrize(("message", "kind"), [
    ("<urlopen error Redirection to url 'file:///etc/passwd' is not allowed>", "redirect_scheme"),
    ("<urlopen error unknown url type: ftp>", "redirect_scheme"),
    ("IncompleteRead(4113 bytes read, 100 more expected)", "truncated_body"),
    ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.",
     "redirect_loop"),
    ("<urlopen error robots_disallowed: redirected to http://h/x.jpg (http://h/robots.txt)>", "robots_disallowed"),
])
def test_failures_have_their_own_classes(message: str, kind: str) -> None:
    assert error_class(message) == kind


def test_credentials_in_an_image_url_are_refused() -> None:
    """urllib would hand ``user@127.0.0.1`` on as the host; browsers refuse such subresource URLs."""
    assert url_refusal("http://user@127.0.0.1:8080/x.jpg", ["127.0.0.1"]) == "userinfo_in_url"
    assert url_refusal("http://127.0.0.1:8080/x.jpg", ["127.0.0.1"]) is None


def _png(side: int, channels: int, bits: int) -> bytes:
    """A PNG of ``side`` × ``side`` flat pixels: a few hundred kB that decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x80" * (side * channels * bits // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    colour = {3: 2, 4: 6}[channels]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, bits, colour, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_too_costly_to_decode_is_refused_from_its_header() -> None:
    """6000 × 6000 RGBA (36 M pixels, under the 89 M pixel cap) took 2.7 GB in img2dataset's resizer: refused
    before anything is decoded, as image_too_large; a photograph of the same size without alpha is not."""
    from img2dataset.resizer import ResizeMode, Resizer

    inner = Resizer(image_size=64, resize_mode=ResizeMode.keep_ratio, resize_only_if_bigger=True,
                    encode_format="jpg", encode_quality=95, min_image_size=10)
    guarded = MemoryBudgetResizer(inner, 2 * 2**30)
    bomb = _png(6000, 4, 8)
    assert len(bomb) < 500_000 and decode_cost(io.BytesIO(bomb))[0] > 2 * 2**30
    *_, error = guarded(io.BytesIO(bomb))
    assert error is not None and error_class(error) == "image_too_large", error
    assert decode_cost(io.BytesIO(_png(6000, 3, 8)))[0] < 2 * 2**30
    assert decode_cost(io.BytesIO(_png(3000, 3, 16)))[0] == 3000 * 3000 * 80  # 16 bits a channel: wide
    stored, width, height, *_, error = guarded(io.BytesIO(_jpeg()))
    assert error is None and (width, height) == (64, 48) and Image.open(io.BytesIO(stored)).format == "JPEG"
    assert decode_cost(io.BytesIO(b"not an image")) is None
