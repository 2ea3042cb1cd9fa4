"""Held-out labelled image folders, for zero-shot evaluation of a model trained on the demo web.

- digits: the demo web never shows the digits with ``index % 5 == 0``
  (:func:`witbuild.demo.images.is_heldout_digit`), so a model trained on it is scored on scans it has not seen,
  rendered exactly like the web's (``digit_image`` at 224×224).
- shapes: the web's drawings pick their shape from a steep Zipf law (circles on hundreds of pages, trapezoids on a
  few), so the 17 shape classes are a long-tailed concept set: what balancing should help is the tail. Each class
  gets drawings the web never shows (layouts the web does not use), in colours, counts and backgrounds drawn
  uniformly, so a class is recognised by its shape alone.

The prompt templates follow the phrasings of the web's captions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from witbuild.demo.images import (
    COLOURS,
    DIGIT_WORDS,
    SHAPES,
    colour_distance,
    digit_image,
    digit_label,
    draw_shapes,
    heldout_digit_indices,
)

EVAL_SIZE = 224
ZEROSHOT_FILE = "zeroshot.json"
ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a handwritten {}.",
    "the digit {}.",
    "the number {} written by hand.",
    "scan of a handwritten {}.",
    "handwritten number {}.",
    "a hand-drawn {}.",
)


def zeroshot_spec() -> dict[str, object]:
    """Class names by label ("0" → "zero") and prompt templates with a ``{}`` slot, as zeroshot.json holds them."""
    return {"classnames": {str(i): word for i, word in enumerate(DIGIT_WORDS)}, "templates": list(ZEROSHOT_TEMPLATES)}


def write_eval_digits(folder: str | Path, size: int = EVAL_SIZE) -> dict[str, int]:
    """Write ``folder/<label>/<index>.png`` for every held-out digit and ``folder/zeroshot.json``; returns the
    number of images per label. Same input, same bytes (PNG is lossless and has no timestamp)."""
    root = Path(folder)
    per_label: dict[str, int] = {str(i): 0 for i in range(len(DIGIT_WORDS))}
    for label in per_label:
        (root / label).mkdir(parents=True, exist_ok=True)
    for index in heldout_digit_indices():
        label = str(digit_label(index))
        digit_image(index, (size, size)).save(root / label / f"{index}.png", format="PNG")
        per_label[label] += 1
    (root / ZEROSHOT_FILE).write_text(json.dumps(zeroshot_spec(), indent=1) + "\n", encoding="utf-8")
    return per_label


SHAPES_PER_CLASS = 24
HELDOUT_LAYOUT_FROM = 1000  # the web draws layouts 0-3 (web._drawn_params): these pictures never appear on it
SHAPE_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "drawing of a {}.",
    "a {} on a plain background.",
    "a {} icon.",
    "a simple drawing of a {} shape.",
)
_MIN_CONTRAST = 150.0


def write_eval_shapes(folder: str | Path, per_class: int = SHAPES_PER_CLASS) -> dict[str, int]:
    """Write ``folder/<shape>/<i>.png`` (one to three shapes of a uniformly drawn colour on white or a contrasting
    colour) for every shape and ``folder/zeroshot.json``; returns the images per class. Same bytes every run."""
    root = Path(folder)
    rng = random.Random("eval-shapes")
    names = sorted(COLOURS)
    out: dict[str, int] = {}
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = rng.choice(names)
            backgrounds = [b for b in names if colour_distance(COLOURS[colour], COLOURS[b]) >= _MIN_CONTRAST]
            background = "white" if "white" in backgrounds and rng.random() < 0.5 else rng.choice(backgrounds)
            img = draw_shapes(shape, colour, rng.randint(1, 3), background, HELDOUT_LAYOUT_FROM + i)
            img.save(root / shape / f"{i:03d}.png", format="PNG")
        out[shape] = per_class
    spec = {"classnames": {s: s for s in SHAPES}, "templates": list(SHAPE_TEMPLATES)}
    (root / ZEROSHOT_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return out
