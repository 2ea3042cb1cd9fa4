"""Labelled image pairs for measuring near-duplicate removal: true copies and hard negatives.

A near-duplicate step must remove copies the web makes of one picture (resized, re-encoded, converted between
PNG and JPEG, cropped by a few per cent, made a little brighter or darker) and keep pictures that merely look
alike to a grey-level hash: one outline in other colours, distinct simple drawings, other photos of one scene.
Each pair is generated here from a seed (the demo's drawings, sklearn's digits, scikit-image's sample photos when
installed), so the benchmark and the tests measure the same, reproducible set.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from witbuild.demo.images import (
    COLOURS,
    DRAWN_SIZE,
    SHAPES,
    _draw_shape,
    colour_distance,
    digit_image,
    draw_image,
    draw_shapes,
    encode,
)

COPY_KINDS: tuple[str, ...] = ("resize", "reencode", "png_to_jpeg", "jpeg_to_png", "crop", "brightness")
NEGATIVE_KINDS: tuple[str, ...] = ("colour_variant", "distinct_drawing", "same_scene")
PHOTOS: tuple[str, ...] = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "horse",
                           "hubble_deep_field", "immunohistochemistry", "retina", "clock", "cell", "colorwheel")
MINED = frozenset({"colour_variant", "distinct_drawing"})
MIN_COLOUR_GAP = 120.0  # RGB distance between the colours of a colour variant (the web's "red" vs "blue")


@dataclass(frozen=True)
class LabelledPair:
    """Two encoded images; ``duplicate``: whether a near-duplicate step should remove one of them."""

    kind: str
    duplicate: bool
    name: str
    a: bytes
    b: bytes


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _recolour(img: Image.Image, old: tuple[int, int, int], new: tuple[int, int, int]) -> Image.Image:
    """``img`` with every pixel of colour ``old`` painted ``new`` (the drawings are not antialiased)."""
    arr = np.array(img)
    arr[(arr == np.array(old, dtype=np.uint8)).all(axis=-1)] = new
    return Image.fromarray(arr, "RGB")


def _tint(background: str, rng: random.Random) -> tuple[int, int, int]:
    """A slightly different shade of a named background, as sites tint their clip art."""
    return tuple(int(np.clip(c + rng.randint(-24, 24), 0, 255)) for c in COLOURS[background])  # type: ignore[return-value]


def _drawing(args: tuple[str, str, int, str, int], tint: tuple[int, int, int]) -> Image.Image:
    return _recolour(draw_shapes(*args), COLOURS[args[3]], tint)


def _random_drawing(rng: random.Random) -> tuple[str, str, int, str, int]:
    """(shape, colour, count, background, layout) with a shape colour that stands apart from the background."""
    shape = rng.choice(tuple(SHAPES))
    colour, background = rng.sample(tuple(COLOURS), 2)
    while colour_distance(COLOURS[colour], COLOURS[background]) < MIN_COLOUR_GAP:
        colour, background = rng.sample(tuple(COLOURS), 2)
    return shape, colour, rng.choice((1, 1, 1, 2, 3)), background, rng.randrange(1000)


@functools.cache
def _photo_source(name: str) -> Image.Image:
    from witbuild.demo.images import skimage_image

    return skimage_image(name)


def _photo(name: str, rng: random.Random) -> Image.Image:
    img = _photo_source(name).copy()
    img.thumbnail((rng.randint(300, 480),) * 2, Image.Resampling.LANCZOS)
    return img


def _originals(rng: random.Random, n: int, photos: bool) -> Iterator[tuple[str, Image.Image]]:
    """``n`` source pictures, in turn: drawings (twice), the demo's random pictures, digits, photos (twice, when
    available)."""
    for i in range(n):
        pick = i % 6 if photos else i % 4
        if pick in (0, 1):
            args = _random_drawing(rng)
            yield f"drawing:{'-'.join(map(str, args))}", _drawing(args, _tint(args[3], rng))
        elif pick == 2:
            seed = rng.randrange(10**6)
            yield f"picture:{seed}", draw_image(seed, (rng.randint(200, 400), rng.randint(160, 300)))
        elif pick == 3:
            index = rng.randrange(1797)
            yield f"digit:{index}", digit_image(index, (224, 224))
        else:
            name = rng.choice(PHOTOS)
            yield f"photo:{name}", _photo(name, rng)


def _copy(kind: str, img: Image.Image, rng: random.Random) -> tuple[bytes, bytes]:
    """(original as the web serves it, a copy of the given kind)."""
    w, h = img.size
    jpeg = encode(img, "jpg", 90)
    if kind == "resize":
        f = rng.choice((0.5, 0.7, 1.3, 1.6))
        return jpeg, encode(img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS), "jpg", 90)
    if kind == "reencode":
        return jpeg, encode(_decoded(jpeg), "jpg", rng.choice((50, 65, 80)))
    if kind == "png_to_jpeg":
        return encode(img, "png"), encode(img, "jpg", rng.choice((75, 90)))
    if kind == "jpeg_to_png":
        return jpeg, encode(_decoded(jpeg), "png")
    if kind == "crop":
        total_w, total_h = round(w * rng.uniform(0.01, 0.05)), round(h * rng.uniform(0.01, 0.05))
        left, top = rng.randint(0, total_w), rng.randint(0, total_h)
        return jpeg, encode(img.crop((left, top, w - (total_w - left), h - (total_h - top))), "jpg", 90)
    if kind == "brightness":
        f = rng.choice((0.9, 0.94, 1.06, 1.1))
        return jpeg, encode(ImageEnhance.Brightness(img).enhance(f), "jpg", 90)
    raise ValueError(f"unknown copy kind {kind!r}; choose from {COPY_KINDS}")


SEMANTIC_COPY_KINDS: tuple[str, ...] = ("crop_large", "rotate", "jitter")


def semantic_copy(kind: str, img: Image.Image, rng: random.Random) -> Image.Image:
    """Copies a grey-level hash mostly misses but a person (and a good image embedding) calls the same picture:
    8-15% cropped off, rotated by 4-6 degrees, or brightness and contrast both changed by 15-20%."""
    w, h = img.size
    if kind == "crop_large":
        f = rng.uniform(0.08, 0.15)
        dx, dy = round(w * f), round(h * f)
        left, top = rng.randint(0, dx), rng.randint(0, dy)
        return img.crop((left, top, w - (dx - left), h - (dy - top)))
    if kind == "rotate":
        return img.rotate(rng.choice((-6, -4, 4, 6)), resample=Image.Resampling.BICUBIC, fillcolor=img.getpixel((0, 0)))
    if kind == "jitter":
        brighter = ImageEnhance.Brightness(img).enhance(rng.choice((0.8, 0.85, 1.15, 1.2)))
        return ImageEnhance.Contrast(brighter).enhance(rng.choice((0.8, 1.2)))
    raise ValueError(f"unknown semantic copy kind {kind!r}; choose from {SEMANTIC_COPY_KINDS}")


def originals(n: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` source pictures (drawings, the demo's random pictures, digits), RGB, from a seed."""
    return [(name, img.convert("RGB")) for name, img in _originals(random.Random(seed), n, photos=False)]


def colour_variants(n: int, seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    """``n`` pairs of one outline in two colours (encoded JPEGs): what a dedup step must keep."""
    rng = random.Random(seed)
    return [_colour_variant(rng) for _ in range(n)]


def _colour_variant(rng: random.Random) -> tuple[str, bytes, bytes]:
    """One outline in two colours: the shapes recoloured, or for a third of the pairs the background."""
    args = _random_drawing(rng)
    tint = _tint(args[3], rng)
    img = _drawing(args, tint)
    fill = COLOURS[args[1]]
    old, other = (tint, fill) if rng.random() < 1 / 3 else (fill, tint)
    new = rng.choice([c for c in COLOURS.values()
                      if colour_distance(c, old) >= MIN_COLOUR_GAP and colour_distance(c, other) >= MIN_COLOUR_GAP])
    name = f"{'-'.join(map(str, args))}:{'background' if old == tint else 'fill'}->{new}"
    return name, encode(img, "jpg", 90), encode(_recolour(img, old, new), "jpg", 90)


def _one_shape(shape: str, fill: tuple[int, int, int], background: tuple[int, int, int], centre: tuple[float, float],
               radius: float, size: tuple[int, int] = DRAWN_SIZE) -> Image.Image:
    img = Image.new("RGB", size, background)
    _draw_shape(ImageDraw.Draw(img), shape, centre[0], centre[1], radius, fill, background)
    return img


def _distinct_drawing(rng: random.Random) -> tuple[str, bytes, bytes]:
    """Two single-shape drawings (icons, clip art) in one colour scheme: the same shape moved by 10-25% of the
    width or resized by 12-25%, or another shape in the same place."""
    shape, colour, _, background, _ = _random_drawing(rng)
    w, h = DRAWN_SIZE
    r = rng.uniform(0.25, 0.4) * h
    cx, cy = rng.uniform(r * 1.1, w - r * 1.1), rng.uniform(r * 1.1, h - r * 1.1)
    move = rng.choice(("shift", "scale", "shape"))
    other_shape, (ox, oy), other_r = shape, (cx, cy), r
    if move == "shift":
        d = rng.uniform(0.10, 0.18) * w
        angle = rng.uniform(0, 2 * np.pi)
        ox, oy = cx + d * np.cos(angle), cy + d * np.sin(angle)
    elif move == "scale":
        other_r = r * rng.choice((rng.uniform(0.78, 0.88), rng.uniform(1.12, 1.25)))
    else:
        other_shape = rng.choice([s for s in SHAPES if s != shape])
    tint = _tint(background, rng)
    fill = COLOURS[colour]
    a = _one_shape(shape, fill, tint, (cx, cy), r)
    b = _one_shape(other_shape, fill, _tint(background, rng) if rng.random() < 0.5 else tint, (ox, oy), other_r)
    name = f"{shape}-{colour}-{background}@{cx:.0f},{cy:.0f},{r:.0f}|{other_shape}@{ox:.0f},{oy:.0f},{other_r:.0f}"
    return name, encode(a, "jpg", 90), encode(b, "jpg", 90)


def _same_scene(rng: random.Random) -> tuple[str, bytes, bytes]:
    """Two shots of one scene: windows of 75-90% of a photo, the second moved by 8-15% of a side (the camera
    panned), for half of them also 10-20% closer (it zoomed)."""
    name = rng.choice(PHOTOS)
    img = _photo(name, rng)
    w, h = img.size
    f = rng.uniform(0.75, 0.90)
    cw, ch = round(w * f), round(h * f)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    zoom = rng.uniform(0.80, 0.90) if rng.random() < 0.5 else 1.0
    zw, zh = round(cw * zoom), round(ch * zoom)
    for _ in range(20):
        d, angle = rng.uniform(0.08, 0.15) * w, rng.uniform(0, 2 * np.pi)
        x1, y1 = round(x0 + d * np.cos(angle)), round(y0 + d * np.sin(angle))
        if 0 <= x1 <= w - zw and 0 <= y1 <= h - zh:
            break
    else:  # no room to pan that far: zoom in on the far corner instead
        x1, y1, zw, zh = w - round(w * 0.7), h - round(h * 0.7), round(w * 0.7), round(h * 0.7)
    a = img.crop((x0, y0, x0 + cw, y0 + ch))
    b = img.crop((x1, y1, x1 + zw, y1 + zh)).resize((cw, ch), Image.Resampling.LANCZOS)
    return f"{name}@{x0},{y0},{cw}|{x1},{y1},{zw}", encode(a, "jpg", 90), encode(b, "jpg", 90)


def photos_available() -> bool:
    """scikit-image's sample photos (a dev dependency) are installed."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def labelled_pairs(per_kind: int = 60, seed: int = 0, photos: bool | None = None,
                   hard_within: int | None = None, max_tries: int = 40) -> list[LabelledPair]:
    """``per_kind`` pairs of each copy kind (over varied originals) and of each hard-negative kind.

    ``hard_within``: keep only drawn negatives (``MINED``) whose pHashes (as finalize computes them) are at most
    that many bits apart (the ones a grey-level hash alone would remove; most random drawings are far apart),
    drawing up to
    ``max_tries × per_kind`` candidates per kind, so a kind may come back with fewer pairs. Same-scene photos
    are not mined: pHash alone rarely puts them within a few bits (1 in 1,600 at 4 bits, measured).
    ``photos``: use scikit-image's photos (default: when installed); without them there are no same-scene pairs.
    """
    from witbuild.dedup.near import image_signature
    from witbuild.dedup.phash import hamming

    def phash_of(data: bytes) -> int:  # the hash finalize computes for a downloaded image
        signature = image_signature(data)
        return signature[0] if signature else 0

    photos = photos_available() if photos is None else photos
    rng = random.Random(seed)
    out = []
    for kind in COPY_KINDS:
        for name, img in _originals(rng, per_kind, photos):
            a, b = _copy(kind, img, rng)
            out.append(LabelledPair(kind, True, name, a, b))
    makers = {"colour_variant": _colour_variant, "distinct_drawing": _distinct_drawing}
    if photos:
        makers["same_scene"] = _same_scene
    for kind, make in makers.items():
        found = 0
        mine = hard_within is not None and kind in MINED
        for _ in range(per_kind * (max_tries if mine else 1)):
            name, a, b = make(rng)
            if mine and hamming(phash_of(a), phash_of(b)) > hard_within:
                continue
            out.append(LabelledPair(kind, False, name, a, b))
            found += 1
            if found == per_kind:
                break
    return out
