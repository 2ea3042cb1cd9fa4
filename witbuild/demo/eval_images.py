"""Held-out labelled image folders, for zero-shot evaluation of a model trained on the demo web.

- digits: the demo web never shows the digits with ``index % 5 == 0``
  (:func:`witbuild.demo.images.is_heldout_digit`), so a model trained on it is scored on scans it has not seen,
  rendered exactly like the web's (``digit_image`` at 224×224).
- colours: the web's drawings pick their colour from a steep Zipf law (red on hundreds of pages, plum or tan on a
  few), so the 43 colours other than white are a long-tailed concept set, and one a small model can see: what
  balancing should help is the tail. Each class gets drawings the web never shows (layouts the web does not use)
  of a uniformly drawn shape in that colour on white, so a class is recognised by its colour alone.

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


COLOURS_PER_CLASS = 12
HELDOUT_LAYOUT_FROM = 1000  # the web draws layouts 0-3 (web._drawn_params): these pictures never appear on it
COLOUR_TEMPLATES: tuple[str, ...] = (
    "a {} shape.",
    "drawing of a {} shape.",
    "a {} shape on a white background.",
    "a {} icon.",
    "{} shapes.",
)


def eval_colour_classes() -> list[str]:
    """Every colour of the web's drawings but white (the held-out pictures are on white)."""
    return [c for c in COLOURS if c != "white"]


def write_eval_colours(folder: str | Path, per_class: int = COLOURS_PER_CLASS) -> dict[str, int]:
    """Write ``folder/<colour>/<i>.png`` (one or two shapes of a uniformly drawn kind in that colour, on white) for
    every colour class and ``folder/zeroshot.json``; returns the images per class. Same bytes every run."""
    root = Path(folder)
    rng = random.Random("eval-colours")
    shapes = sorted(SHAPES)
    out: dict[str, int] = {}
    for colour in eval_colour_classes():
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw_shapes(rng.choice(shapes), colour, rng.randint(1, 2), "white", HELDOUT_LAYOUT_FROM + i)
            img.save(root / colour / f"{i:03d}.png", format="PNG")
        out[colour] = per_class
    spec = {"classnames": {c: c for c in out}, "templates": list(COLOUR_TEMPLATES)}
    (root / ZEROSHOT_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return out
