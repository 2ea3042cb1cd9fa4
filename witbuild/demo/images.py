"""Deterministic demo images and a local HTTP image server with faults, so img2dataset runs offline.

Everything is drawn or loaded from data bundled in installed packages (Pillow, scikit-learn, scikit-image); nothing
is downloaded. The server exposes good images and a fixed set of hostile ones (stalls, bombs, loops, opt-outs) so the
download stage and its tests see the failure modes of the real web on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import random
import select
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Size = tuple[int, int]

# extension -> (Pillow format, Content-Type)
FORMATS: dict[str, tuple[str, str]] = {
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
}

# skimage.data samples that load offline from the wheel (the others need pooch and the internet), with captions.
SKIMAGE_CAPTIONS: dict[str, str] = {
    "astronaut": "a portrait of an astronaut in a white spacesuit in front of a flag",
    "brick": "a close-up of a grey brick wall texture",
    "camera": "a black and white photo of a cameraman with a tripod",
    "cat": "a photo of an orange tabby cat",
    "cell": "a microscope image of a cell",
    "checkerboard": "a black and white checkerboard pattern",
    "chelsea": "a photo of a tabby cat named chelsea",
    "clock": "a photo of a wall clock, motion blurred",
    "coffee": "a cup of coffee on a saucer, seen from above",
    "coins": "a greyscale photo of old coins on a table",
    "colorwheel": "a colour wheel with the full hue circle",
    "grass": "a close-up of grass texture",
    "gravel": "a close-up of gravel texture",
    "horse": "a black silhouette of a horse",
    "hubble_deep_field": "the hubble deep field, galaxies in deep space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "logo": "the scikit-image logo",
    "microaneurysms": "a greyscale retinal image with microaneurysms",
    "moon": "a greyscale photo of the surface of the moon",
    "page": "a scanned page of printed text",
    "retina": "a colour photo of a human retina",
    "rocket": "a rocket on a launch pad",
    "shepp_logan_phantom": "the shepp-logan phantom, a synthetic head scan",
    "text": "a photo of handwritten and printed text",
}
SKIMAGE_NAMES: tuple[str, ...] = tuple(SKIMAGE_CAPTIONS)

MAX_GEN_SIDE = 4096  # cap for ?w=&h= on /gen/ so a caller cannot make the server allocate a bomb by accident
BOMB_SIDE = 20_000


# --------------------------------------------------------------------------------------------------------------------
# image makers
# --------------------------------------------------------------------------------------------------------------------


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at a given size; the bitmap default where FreeType is missing."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def draw_image(seed: int, size: Size = (256, 192)) -> Image.Image:
    """An RGB picture of random shapes over a gradient with the seed written on it; same seed, same pixels."""
    rng = random.Random(seed)
    w, h = size
    c0, c1 = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    direction = rng.choice(("h", "v", "d"))
    xs, ys = np.meshgrid(np.linspace(0, 1, w, dtype=np.float32), np.linspace(0, 1, h, dtype=np.float32))
    t = {"h": xs, "v": ys, "d": (xs + ys) / 2}[direction][..., None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randint(w // 10, w // 2), y0 + rng.randint(h // 10, h // 2)
        kind = rng.choice(("ellipse", "rectangle", "triangle", "line"))
        fill, outline = _colour(rng), _colour(rng)
        if kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
        elif kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
        elif kind == "triangle":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill, outline=outline)
        else:
            draw.line((x0, y0, x1, y1), fill=fill, width=rng.randint(2, 8))
    draw.text((max(2, w // 40), max(2, h // 40)), f"#{seed}", fill=(255, 255, 255), font=_font(max(10, h // 8)),
              stroke_width=1, stroke_fill=(0, 0, 0))
    return img


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # dev dependency, bundled with the wheel

    bunch = load_digits()
    return bunch.images, bunch.target


def digit_count() -> int:
    """How many labelled digits sklearn bundles (1,797)."""
    return len(_digits()[1])


def digit_label(index: int) -> int:
    """The true class 0–9 of digit ``index``, so zero-shot tests have a label."""
    return int(_digits()[1][index])


def digit_image(index: int, size: Size = (224, 224)) -> Image.Image:
    """sklearn digit ``index`` as dark ink on light paper, upscaled to a photo-like size; label: digit_label(index)."""
    images, _ = _digits()
    ink = images[index] / 16.0  # 8×8, 0 (paper) .. 16 (ink)
    paper = np.pad(1.0 - ink, 1, constant_values=1.0)  # a margin so strokes do not touch the edge
    small = Image.fromarray((paper * 255).round().astype(np.uint8), "L")
    return small.resize(size, Image.Resampling.BICUBIC).convert("RGB")


def skimage_image(name: str) -> Image.Image:
    """A bundled skimage.data sample as RGB (bool, float, grey and RGBA samples converted; alpha on white)."""
    if name not in SKIMAGE_CAPTIONS:
        raise KeyError(f"{name!r} is not an offline skimage.data sample; choose from {SKIMAGE_NAMES}")
    import skimage.data  # dev dependency

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    else:
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.shape[-1] == 4:
        rgba = Image.fromarray(arr, "RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return Image.fromarray(arr[..., :3], "RGB")


# --------------------------------------------------------------------------------------------------------------------
# the demo web's pictures: digits (with a held-out split), skimage samples in a few variants, drawn shapes
# --------------------------------------------------------------------------------------------------------------------

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELDOUT_EVERY = 5  # digit index % 5 == 0 (360 of 1,797) never appears on the demo web: zero-shot evaluation uses it


def is_heldout_digit(index: int) -> bool:
    """True for the digits kept off the demo web, so a model trained on it is evaluated on unseen scans."""
    return index % HELDOUT_EVERY == 0


def web_digit_indices() -> list[int]:
    """The digits the demo web may show (1,437), in index order."""
    return [i for i in range(digit_count()) if not is_heldout_digit(i)]


def heldout_digit_indices() -> list[int]:
    """The held-out digits (360), in index order."""
    return [i for i in range(digit_count()) if is_heldout_digit(i)]


SKIMAGE_VARIANTS = 3  # 0: as bundled, 1: mirrored, 2: centre crop — one sample, several images, as on the web
WEB_MIN_SIDE, WEB_MAX_SIDE = 224, 640  # the download stage drops images under 200 px; huge ones only cost time


def skimage_web_image(name: str, variant: int = 0) -> Image.Image:
    """A skimage sample as the demo web serves it: variant 0 as is, 1 mirrored, 2 a centre crop (85 %),
    scaled so that the shorter side is at least 224 and the longer at most 640 pixels."""
    if not 0 <= variant < SKIMAGE_VARIANTS:
        raise ValueError(f"variant must lie in [0, {SKIMAGE_VARIANTS}), got {variant}")
    img = skimage_image(name)
    if variant == 1:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif variant == 2:
        w, h = img.size
        dw, dh = round(w * 0.075), round(h * 0.075)
        img = img.crop((dw, dh, w - dw, h - dh))
    w, h = img.size
    scale = max(WEB_MIN_SIDE / min(w, h), 1.0) if min(w, h) < WEB_MIN_SIDE else min(WEB_MAX_SIDE / max(w, h), 1.0)
    if scale != 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return img


# Named colours of the drawn pictures, most frequent on the demo web first (the web picks them Zipf-like).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50), "black": (15, 15, 15),
    "yellow": (250, 220, 20), "white": (250, 250, 250), "orange": (250, 140, 0), "purple": (130, 40, 170),
    "pink": (250, 130, 190), "grey": (128, 128, 128), "brown": (130, 80, 30), "gold": (212, 175, 55),
    "navy": (20, 30, 110), "turquoise": (64, 224, 208), "beige": (230, 215, 180), "teal": (0, 128, 128),
    "maroon": (128, 0, 32), "cyan": (0, 220, 240), "magenta": (230, 0, 180), "lime": (160, 230, 30),
    "olive": (120, 120, 20), "silver": (192, 192, 200), "lavender": (180, 160, 230), "crimson": (180, 10, 50),
    "coral": (250, 120, 90), "indigo": (75, 0, 130), "khaki": (195, 176, 120), "salmon": (250, 150, 120),
    "mint": (150, 240, 190), "ochre": (200, 120, 30), "mustard": (220, 180, 40), "plum": (140, 60, 120),
    "emerald": (20, 150, 90), "amber": (255, 180, 0), "charcoal": (55, 60, 65), "ivory": (255, 250, 225),
    "cobalt": (0, 70, 170), "scarlet": (250, 36, 0), "rust": (180, 65, 15), "sapphire": (15, 82, 186),
    "jade": (0, 168, 107), "tan": (210, 180, 140), "peach": (255, 205, 165), "burgundy": (128, 0, 50),
}  # fmt: skip
# Shapes the drawn pictures show (singular -> plural), most frequent first.
SHAPES: dict[str, str] = {
    "circle": "circles", "square": "squares", "star": "stars", "triangle": "triangles", "heart": "hearts",
    "rectangle": "rectangles", "diamond": "diamonds", "ring": "rings", "cross": "crosses", "hexagon": "hexagons",
    "oval": "ovals", "arrow": "arrows", "pentagon": "pentagons", "crescent": "crescents",
    "octagon": "octagons", "semicircle": "semicircles", "trapezoid": "trapezoids",
}  # fmt: skip
MAX_SHAPES = 6
DRAWN_SIZE: Size = (320, 240)
_GRIDS = {1: (1, 1), 2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (3, 2), 6: (3, 2)}  # count -> (columns, rows)


def colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Euclidean RGB distance: the web pairs a shape colour with a background only when they stand apart."""
    return float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))))


def _regular(cx: float, cy: float, r: float, n: int, turn: float) -> list[tuple[float, float]]:
    return [(cx + r * np.cos(turn + 2 * np.pi * k / n), cy + r * np.sin(turn + 2 * np.pi * k / n)) for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int], background: tuple[int, int, int]) -> None:
    """One filled ``shape`` of radius about ``r`` centred at (cx, cy); holes are painted in the background."""
    box = (cx - r, cy - r, cx + r, cy + r)
    up = -np.pi / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=background)
    elif shape == "crescent":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - 0.4 * r, cy - 0.85 * r, cx + 1.3 * r, cy + 0.85 * r), fill=background)
    elif shape == "oval":
        draw.ellipse((cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r), fill=fill)
    elif shape == "semicircle":
        draw.pieslice((cx - r, cy - 0.5 * r, cx + r, cy + 1.5 * r), 180, 360, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=fill)
    elif shape == "rectangle":
        draw.rectangle((cx - r, cy - 0.55 * r, cx + r, cy + 0.55 * r), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular(cx, cy + 0.2 * r, 1.1 * r, 3, up), fill=fill)
    elif shape in ("pentagon", "hexagon", "octagon"):
        n = {"pentagon": 5, "hexagon": 6, "octagon": 8}[shape]
        draw.polygon(_regular(cx, cy, r, n, up if n == 5 else np.pi / n), fill=fill)
    elif shape == "star":
        outer, inner = _regular(cx, cy, r, 5, up), _regular(cx, cy, 0.45 * r, 5, up + np.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=True) for p in pair], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)], fill=fill)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        draw.polygon([(cx + r * a / 16.5, cy - r * b / 16.5 + 0.1 * r) for a, b in zip(x, y, strict=True)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - 0.3 * r, cy - r, cx + 0.3 * r, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r), fill=fill)
    elif shape == "arrow":
        draw.polygon([(cx - r, cy - 0.25 * r), (cx + 0.2 * r, cy - 0.25 * r), (cx + 0.2 * r, cy - 0.7 * r),
                      (cx + r, cy), (cx + 0.2 * r, cy + 0.7 * r), (cx + 0.2 * r, cy + 0.25 * r),
                      (cx - r, cy + 0.25 * r)], fill=fill)
    elif shape == "trapezoid":
        draw.polygon([(cx - r, cy + 0.6 * r), (cx + r, cy + 0.6 * r), (cx + 0.55 * r, cy - 0.6 * r),
                      (cx - 0.55 * r, cy - 0.6 * r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {tuple(SHAPES)}")


def draw_shapes(shape: str, colour: str, count: int, background: str = "white", layout: int = 0,
                size: Size = DRAWN_SIZE) -> Image.Image:
    """``count`` separate ``colour`` ``shape``s on a plain ``background``: the picture a caption such as
    "three red circles on a blue background" describes. ``layout`` seeds where they sit and how big they are."""
    if shape not in SHAPES or colour not in COLOURS or background not in COLOURS:
        raise ValueError(f"unknown shape or colour: {shape!r}, {colour!r}, {background!r}")
    if not 1 <= count <= MAX_SHAPES:
        raise ValueError(f"count must lie in [1, {MAX_SHAPES}], got {count}")
    rng = random.Random(f"{shape}-{colour}-{count}-{background}-{layout}")
    w, h = size
    bg = COLOURS[background]
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    cols, rows = _GRIDS[count]
    cells = rng.sample(range(cols * rows), count)
    cw, ch = w / cols, h / rows
    for cell in cells:
        r = 0.5 * min(cw, ch) * rng.uniform(0.62, 0.78)
        room_x, room_y = max(0.0, cw / 2 - r * 1.1), max(0.0, ch / 2 - r * 1.1)
        cx = (cell % cols + 0.5) * cw + rng.uniform(-room_x, room_x)
        cy = (cell // cols + 0.5) * ch + rng.uniform(-room_y, room_y)
        _draw_shape(draw, shape, cx, cy, r, COLOURS[colour], bg)
    return img


def encode(img: Image.Image, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Image bytes in ``fmt`` (jpg/jpeg/png/webp/gif), converting modes the format cannot hold."""
    pil_fmt = FORMATS[fmt.lower()][0]
    keeps = {"JPEG": ("RGB", "L", "CMYK"), "WEBP": ("RGB", "RGBA")}.get(pil_fmt)
    if keeps is not None and img.mode not in keeps:
        img = img.convert("RGB")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality} if pil_fmt in ("JPEG", "WEBP") else {}
    img.save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# fault payloads (built once, cached: the bomb takes a moment)
# --------------------------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.cache
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A side×side 1-bit black PNG written chunk by chunk: tens of KB on the wire, side² pixels decoded.

    Never materialised as pixels here (Pillow would hold side² bytes), only as zlib-compressed scanlines.
    """
    row = bytes(1 + (side + 7) // 8)  # filter byte 0 + packed 1-bit pixels, all zero
    comp = zlib.compressobj(9)
    block = row * 256
    parts = [comp.compress(block) for _ in range(side // 256)]
    parts.append(comp.compress(row * (side % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + \
        _png_chunk(b"IEND", b"")


def png_size(data: bytes) -> Size:
    """(width, height) from a PNG's IHDR without decoding, to check a bomb's claim safely."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@functools.cache
def _sample_jpeg() -> bytes:
    return encode(draw_image(7, (320, 240)), "jpg", 90)


@functools.cache
def corrupt_jpeg() -> bytes:
    """A JPEG whose headers break off inside the Huffman tables and continue as noise: no decoder can use it.

    Unlike truncated_jpeg(), no decoder setting can recover anything from it.
    """
    data = _sample_jpeg()
    cut = data.index(b"\xff\xc4") + 20  # 20 bytes into the first DHT segment
    noise = bytes(random.Random(13).randrange(0, 255) for _ in range(2048))  # no 0xFF: never a marker
    return data[:cut] + noise


@functools.cache
def truncated_jpeg() -> bytes:
    """The first 60 % of a valid JPEG: Pillow decodes it only with LOAD_TRUNCATED_IMAGES; OpenCV 4.14 rejects it."""
    data = _sample_jpeg()
    return data[: int(len(data) * 0.6)]


@functools.cache
def cmyk_jpeg() -> bytes:
    """A valid 4-channel CMYK JPEG (libjpeg writes an Adobe marker), which some pipelines mis-colour."""
    return encode(draw_image(11, (240, 180)).convert("CMYK"), "jpg", 90)


@functools.cache
def animated_gif() -> bytes:
    """A valid 6-frame looping GIF with a different colour per frame."""
    frames = [Image.new("RGB", (160, 120), ((40 * i) % 256, 200 - 30 * i, 60 + 30 * i)) for i in range(6)]
    for i, frame in enumerate(frames):
        ImageDraw.Draw(frame).ellipse((10 + 20 * i, 30, 60 + 20 * i, 80), fill=(255, 255, 255))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@functools.cache
def alpha_png() -> bytes:
    """An RGBA PNG: left half fully transparent, a red opaque disc on the right, so matting is visible."""
    img = Image.new("RGBA", (200, 160), (0, 0, 255, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle((100, 0, 199, 159), fill=(0, 0, 255, 128))
    draw.ellipse((120, 40, 190, 110), fill=(255, 0, 0, 255))
    return encode(img, "png")


@functools.cache
def wide_jpeg() -> bytes:
    """A 2000×50 banner (aspect ratio 40): a real image that aspect-ratio filters should drop."""
    return encode(draw_image(17, (2000, 50)), "jpg", 85)


HTML_PAGE = b"<!doctype html><html><head><title>Not an image</title></head><body>login required</body></html>\n"

# Fault path -> what it does. Every path is fixed, so a url list built once works against any server instance.
FAULTS: dict[str, str] = {
    "/fault/404": "404 Not Found",
    "/fault/stall.jpg": "200 with headers and a few body bytes, then silence for up to stall_s (longer than a timeout)",
    "/fault/corrupt.jpg": "JPEG headers broken off inside the Huffman tables, then noise: undecodable",
    "/fault/bomb.png": f"{BOMB_SIDE}x{BOMB_SIDE} 1-bit PNG (decompression bomb), small on the wire",
    "/fault/cmyk.jpg": "valid CMYK JPEG (4 channels)",
    "/fault/animated.gif": "valid 6-frame animated GIF",
    "/fault/alpha.png": "RGBA PNG with a transparent half",
    "/fault/noai.jpg": "valid JPEG served with X-Robots-Tag: noai",
    "/fault/loop": "redirect loop: 302 between /fault/loop and /fault/loop?hop=1",
    "/fault/truncated.jpg": "valid JPEG cut short at 60 % of its bytes, inside the scan data",
    "/fault/empty.jpg": "200 image/jpeg with an empty body",
    "/fault/html.jpg": "HTML page served as image/jpeg",
    "/fault/wide.jpg": "2000x50 JPEG, aspect ratio 40",
    "/fault/drip.jpg": "valid JPEG sent in small pieces with pauses shorter than a timeout, longer in total",
}

# What img2dataset 1.47 records for each fault under the demo settings: timeout < stall_s, default
# disallowed_header_directives, max_aspect_ratio <= 10, OPENCV_IO_MAX_IMAGE_PIXELS (or max_image_area) < BOMB_SIDE².
FAULT_EXPECT: dict[str, str] = {
    "/fault/404": "failed_to_download",
    "/fault/stall.jpg": "failed_to_download",
    "/fault/corrupt.jpg": "failed_to_resize",
    "/fault/bomb.png": "failed_to_resize",
    "/fault/cmyk.jpg": "success",
    "/fault/animated.gif": "success",
    "/fault/alpha.png": "success",
    "/fault/noai.jpg": "failed_to_download",
    "/fault/loop": "failed_to_download",
    "/fault/truncated.jpg": "failed_to_resize",
    "/fault/empty.jpg": "failed_to_resize",
    "/fault/html.jpg": "failed_to_resize",
    "/fault/wide.jpg": "failed_to_resize",
    "/fault/drip.jpg": "success",
}

_STATIC_FAULTS: dict[str, tuple[Callable[[], bytes], str, dict[str, str]]] = {
    "/fault/corrupt.jpg": (corrupt_jpeg, "image/jpeg", {}),
    "/fault/bomb.png": (bomb_png, "image/png", {}),
    "/fault/cmyk.jpg": (cmyk_jpeg, "image/jpeg", {}),
    "/fault/animated.gif": (animated_gif, "image/gif", {}),
    "/fault/alpha.png": (alpha_png, "image/png", {}),
    "/fault/noai.jpg": (_sample_jpeg, "image/jpeg", {"X-Robots-Tag": "noai"}),
    "/fault/truncated.jpg": (truncated_jpeg, "image/jpeg", {}),
    "/fault/empty.jpg": (lambda: b"", "image/jpeg", {}),
    "/fault/html.jpg": (lambda: HTML_PAGE, "image/jpeg", {}),
    "/fault/wide.jpg": (wide_jpeg, "image/jpeg", {}),
}


@functools.lru_cache(maxsize=512)
def _generated(family: str, key: str, ext: str, size: Size | None) -> bytes:
    if family == "gen":
        return encode(draw_image(int(key), size or (256, 192)), ext)
    if family == "digit":
        return encode(digit_image(int(key), size or (224, 224)), ext)
    return encode(skimage_image(key), ext)


# --------------------------------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------------------------------


class Response(NamedTuple):
    """A registered or generated response body with its headers."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]


class LoggedRequest(NamedTuple):
    """One request the server saw: the raw path (with query) and time.time() on arrival."""

    path: str
    time: float


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (img2dataset after a timeout) are normal here, not tracebacks."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class ImageServer:
    """Threaded HTTP image server on 127.0.0.1 with generated images, a registry and fixed faults.

    Routes: ``/img/*`` and any path added with add(); ``/gen/<seed>.<ext>[?w=&h=]``, ``/digit/<index>.<ext>``,
    ``/sk/<name>.<ext>`` with ext in jpg/png/webp/gif; and every path in FAULTS. Use as a context manager.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, stall_s: float = 30.0, drip_s: float = 3.0,
                 drip_gap_s: float = 0.5):
        self.stall_s, self.drip_s, self.drip_gap_s = stall_s, drip_s, drip_gap_s
        self.requests: list[LoggedRequest] = []
        self._registry: dict[str, Response] = {}
        self._closing = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self.httpd = _QuietHTTPServer((host, port), _make_handler(self))
        self.host, self.port = host, int(self.httpd.server_address[1])
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"image-server-{self.port}", daemon=True)
        for i, ext in enumerate(("jpg", "png", "webp", "gif")):
            self.add(f"/img/shapes-{i}.{ext}", encode(draw_image(100 + i), ext), FORMATS[ext][1])

    # -- registry --------------------------------------------------------------------------------------------------
    def add(self, path: str, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> str:
        """Serve ``body`` at ``path`` (e.g. "/img/cat.jpg") with extra ``headers``; returns its URL."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        self._registry[path] = Response(body, content_type, dict(headers or {}))
        return self.url(path)

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def registered(self) -> list[str]:
        """Paths added with add() (including the built-in /img/ samples), sorted."""
        return sorted(self._registry)

    @property
    def busy(self) -> int:
        """Stall/drip handlers still running: lets tests check that hang-ups and stop() end them."""
        return self._busy

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> ImageServer:
        self._closing.clear()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled handlers notice within ~0.1 s and return."""
        self._closing.set()
        if self._thread.is_alive():  # shutdown() would wait forever on a server that never started
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing ---------------------------------------------------------------------------------------------------
    def resolve(self, raw_path: str) -> Response | None:
        """The static response for a path, or None (404). Stall, drip and loop are handled by the handler."""
        split = urlsplit(raw_path)
        path = split.path
        if path in self._registry:
            return self._registry[path]
        if path in _STATIC_FAULTS:
            make, ctype, headers = _STATIC_FAULTS[path]
            return Response(make(), ctype, headers)
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("gen", "digit", "sk") or "." not in parts[1]:
            return None
        stem, ext = parts[1].rsplit(".", 1)
        ext = ext.lower()
        if ext not in FORMATS:
            return None
        family = parts[0]
        size: Size | None = None
        if family in ("gen", "digit"):
            if not stem.isdigit() or (family == "digit" and int(stem) >= digit_count()):
                return None
            query = parse_qs(split.query)
            if "w" in query or "h" in query:
                try:
                    size = (int(query.get("w", ["256"])[0]), int(query.get("h", ["192"])[0]))
                except ValueError:
                    return None
                if not (1 <= size[0] <= MAX_GEN_SIDE and 1 <= size[1] <= MAX_GEN_SIDE):
                    return None
        elif stem not in SKIMAGE_CAPTIONS:
            return None
        return Response(_generated(family, stem, ext, size), FORMATS[ext][1], {})


def _make_handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``server`` (http.server instantiates it per request)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "witbuild-images/1"
        protocol_version = "HTTP/1.1"  # keeps a connection open for the client's next request, as web servers do
        disable_nagle_algorithm = True  # headers and body go out as written, not after the client's delayed ACK
        timeout = 60  # idle clients cannot pin a thread forever

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def handle(self) -> None:
            with contextlib.suppress(ConnectionError, TimeoutError):  # client hung up: expected with timeouts
                super().handle()

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _serve(self, head: bool) -> None:
            server.requests.append(LoggedRequest(self.path, time.time()))
            path = urlsplit(self.path).path
            if path == "/fault/loop":
                target = "/fault/loop" if "hop=1" in self.path else "/fault/loop?hop=1"
                self._send(302, b"redirecting\n", "text/plain", {"Location": server.url(target)}, head)
            elif path == "/fault/stall.jpg":
                self._stream(_sample_jpeg(), head, first=64, gap_s=server.stall_s, total_s=server.stall_s)
            elif path == "/fault/drip.jpg":
                data = _sample_jpeg()
                pieces = max(2, int(server.drip_s / server.drip_gap_s))
                self._stream(data, head, first=-(-len(data) // pieces), gap_s=server.drip_gap_s, total_s=server.drip_s)
            else:
                resp = server.resolve(self.path)
                if resp is None:
                    self._send(404, b"not found\n", "text/plain", {}, head)
                else:
                    self._send(200, resp.body, resp.content_type, resp.headers, head)

        def _headers(self, status: int, length: int, ctype: str, headers: Mapping[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()

        def _send(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str], head: bool) -> None:
            self._headers(status, len(body), ctype, headers)
            if not head:
                self.wfile.write(body)

        def _stream(self, data: bytes, head: bool, first: int, gap_s: float, total_s: float) -> None:
            """Send ``data`` in ``first``-byte pieces ``gap_s`` apart, giving up after ``total_s`` or on hang-up."""
            self._headers(200, len(data), "image/jpeg", {})
            if head:
                return
            with server._busy_lock:
                server._busy += 1
            try:
                deadline = time.monotonic() + total_s
                sent = 0
                while True:
                    chunk = data[sent:sent + first]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    if sent >= len(data):
                        break
                    if not self._pause(gap_s, deadline):
                        self.close_connection = True  # the body was cut short: the connection cannot go on
                        break
            finally:
                with server._busy_lock:
                    server._busy -= 1

        def _pause(self, gap_s: float, deadline: float) -> bool:
            """Sleep gap_s in 0.1 s steps; False when the client left, the server stops or total_s runs out."""
            end = min(time.monotonic() + gap_s, deadline)
            while (left := end - time.monotonic()) > 0:
                if server._closing.is_set() or self._client_gone():
                    return False
                server._closing.wait(min(0.1, left))
            return time.monotonic() < deadline

        def _client_gone(self) -> bool:
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

    return Handler


def fault_url_list(server: ImageServer, good: bool = True, faults: bool = True) -> list[tuple[str, str]]:
    """(url, caption) rows: varied good images (generated, digits, skimage, registry) then every fault."""
    rows: list[tuple[str, str]] = []
    if good:
        for seed, ext in [(0, "jpg"), (1, "jpg"), (2, "png"), (3, "webp"), (4, "gif")]:
            rows.append((server.url(f"/gen/{seed}.{ext}"), f"colourful shapes on a gradient, number {seed}"))
        for i in (0, 1, 2):
            rows.append((server.url(f"/digit/{i}.png"), f"a handwritten digit {digit_label(i)}"))
        for name in ("astronaut", "chelsea", "coffee", "rocket"):
            rows.append((server.url(f"/sk/{name}.jpg"), SKIMAGE_CAPTIONS[name]))
        for path in (p for p in server.registered if p.startswith("/img/")):
            rows.append((server.url(path), f"shapes image {path.rsplit('/', 1)[-1]}"))
    if faults:
        rows.extend((server.url(path), f"fault: {desc}") for path, desc in FAULTS.items())
    return rows
