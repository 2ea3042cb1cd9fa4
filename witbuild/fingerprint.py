"""What a finished stage was made from, so that a re-run never reuses stale work.

Each stage's fingerprint holds the values of the config keys it depends on (witbuild/stages/registry.py), the
fingerprint of the stage it reads (so a change upstream reaches every later stage) and the content hashes of
the external files it read: the fastText model, the query list (itself fingerprinted from its inputs, the user
entries file included), the decontamination images. Everything is computed from the config before any stage
runs, so the pipeline knows up front which finished stages still hold.

Input WARC/WAT files are fingerprinted by their config (paths, globs), not their bytes: Common Crawl files never
change under one name, and hashing terabytes on every start would cost more than the build.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from witbuild.stages.registry import QUERYLIST_CONFIG, REGISTRY, Stage

if TYPE_CHECKING:
    from witbuild.config import BuildConfig

MISSING = "<unset>"


@dataclass(frozen=True)
class Fingerprint:
    config: dict[str, Any]
    input: str | None = None  # the fingerprint hash of what the stage reads
    external: dict[str, str] = field(default_factory=dict)  # name -> content hash

    @property
    def digest(self) -> str:
        return _hash({"config": self.config, "input": self.input, "external": self.external})

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "config": self.config, "input": self.input, "external": self.external}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(dict(d.get("config") or {}), d.get("input"), dict(d.get("external") or {}))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other values are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_slice(cfg: BuildConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The flattened config values under any of ``keys`` (sections or dotted fields)."""
    flat = flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in sorted(flat.items()) if any(k == p or k.startswith(p + ".") for p in keys)}


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def file_digest(path: str | os.PathLike[str]) -> str:
    """Content hash of a local file (cached per size and mtime); MISSING when it does not exist."""
    p = Path(path).expanduser()
    if not p.is_file():
        return MISSING
    st = p.stat()
    return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


def folder_digest(path: str | os.PathLike[str]) -> str:
    """Content hash of every file under a local folder (names and bytes)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return file_digest(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return _hash([(str(p.relative_to(root)), file_digest(p)) for p in files])


def querylist_fingerprint(cfg: BuildConfig, pool: str | None) -> Fingerprint:
    """The build's query list: its config, the user entries file's bytes, and (a list built with bigrams
    counted over the filtered pool) the pool's fingerprint."""
    external = {}
    if cfg.match.entries_path:
        external["entries_file"] = file_digest(cfg.match.entries_path)
    built_from_pool = not cfg.match.entries_path and cfg.querylist.bigrams
    return Fingerprint(config_slice(cfg, QUERYLIST_CONFIG), pool if built_from_pool else None, external)


def _external(cfg: BuildConfig, st: Stage, previous: str | None) -> dict[str, str]:
    if st.name == "filter":
        from witbuild.text.langid import default_model_path

        try:
            model = cfg.langid.model_path or default_model_path()
        except (FileNotFoundError, ImportError):  # the filter stage says so with its own error when it runs
            return {"langid_model": MISSING}
        return {"langid_model": file_digest(model)}
    if st.name == "match":
        return {"querylist": querylist_fingerprint(cfg, previous).digest}
    if st.name == "finalize":
        return _finalize_external(cfg)
    return {}


def _finalize_external(cfg: BuildConfig) -> dict[str, str]:
    """The decontamination images and the scoring checkpoint's files, by content: a checkpoint retrained under
    the same path (``…/latest`` moves on) redoes finalize."""
    out = {}
    if cfg.dedup.decontaminate:
        out["decontaminate"] = folder_digest(cfg.dedup.decontaminate)
    score = cfg.clip_score
    if score.checkpoint:
        out["clip_checkpoint"] = file_digest(_checkpoint_file(score.checkpoint, score.model_json is None))
    if score.model_json:
        from trainer.model import MODEL_DIR  # a name: the model JSON the trainer resolves it to

        named = MODEL_DIR / f"{score.model_json}.json"
        out["clip_model_json"] = file_digest(score.model_json if Path(score.model_json).is_file() else named)
    if score.bpe_vocab:
        out["clip_bpe_vocab"] = file_digest(score.bpe_vocab)
    return out


def _checkpoint_file(path: str, ours: bool) -> str:
    """The file a checkpoint setting names (a run folder or ``…/latest`` of our trainer resolved to its step)."""
    if not ours:
        return path
    try:
        from trainer.evaluate import resolve_checkpoint

        return str(resolve_checkpoint(path))
    except (FileNotFoundError, ImportError):  # the job's start says so with its own error
        return path


def stage_fingerprints(cfg: BuildConfig) -> dict[str, Fingerprint]:
    """Every stage's fingerprint under ``cfg``, in stage order (each one chained to the one it reads)."""
    out: dict[str, Fingerprint] = {}
    for st in REGISTRY:
        previous = out[st.reads].digest if st.reads else None
        out[st.name] = Fingerprint(config_slice(cfg, st.config_keys(cfg)), previous, _external(cfg, st, previous))
    return out


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """What differs, for people: ``filter.min_words 3 → 5``, ``langid_model changed``, ``input changed``."""
    out = []
    for key in sorted(set(old.config) | set(new.config)):
        a, b = old.config.get(key, MISSING), new.config.get(key, MISSING)
        if a != b:
            out.append(f"{key} {json.dumps(a)} → {json.dumps(b)}")
    for key in sorted(set(old.external) | set(new.external)):
        if old.external.get(key) != new.external.get(key):
            out.append(f"{key} changed")
    if not out and old.input != new.input:
        out.append("its input changed")
    return out
