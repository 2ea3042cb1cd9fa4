"""The held-out digits as a labelled image folder, for zero-shot evaluation of a model trained on the demo web.

The demo web never shows the digits with ``index % 5 == 0`` (:func:`witbuild.demo.images.is_heldout_digit`), so a
model trained on it is scored on scans it has not seen, rendered exactly like the web's (``digit_image`` at 224×224).
The prompt templates follow the phrasings of the web's digit captions.
"""

from __future__ import annotations

import json
from pathlib import Path

from witbuild.demo.images import DIGIT_WORDS, digit_image, digit_label, heldout_digit_indices

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
