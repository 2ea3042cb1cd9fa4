"""What a finished stage was made from, so that a re-run never reuses stale work.

Each stage's fingerprint holds the values of the config keys it depends on (witbuild/stages/registry.py), its
rule there (raised when the code computes the stage differently), the fingerprint of the stage it reads (so a
change upstream reaches every later stage) and the content hashes of the external files it read: the fastText
model, the query list (itself fingerprinted from its inputs, the user entries file included), the
decontamination images. Everything is computed from the config (and the listing of
the input files) before any stage runs, so the pipeline knows up front which finished stages still hold.

The first stage's input files are fingerprinted by the files the input paths and globs match when the build
starts (the expansion extract itself makes), each with its size, not by their bytes: hashing terabytes on every
start would cost more than the build, and Common Crawl files never change under one name. A file added to or
removed from a globbed folder, or rewritten with another size, redoes extract. Modification times are left out
on purpose: a fresh clone or a plain copy of unchanged data gives every file a new one, which would redo whole
builds for nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from witbuild.layout import local_path
from witbuild.stages.registry import BY_CONTENT, EXECUTION_ONLY, QUERYLIST_CONFIG, REGISTRY, Stage

if TYPE_CHECKING:
    from witbuild.config import BuildConfig

MISSING = "<unset>"


#: A file's size where it has none to give: an HTTP URL (no listing; a missing file is counted when read).
UNKNOWN_SIZE = None

FileSizes = dict[str, int | str | None]  # file -> size in bytes, MISSING, or UNKNOWN_SIZE


@dataclass(frozen=True)
class Fingerprint:
    """What one stage was made from. ``input_files``: the build's input files, for the stage that reads them
    (None elsewhere, and left out of the digest then, so that the other stages' digests do not carry it twice:
    they chain to it through ``input``)."""

    config: dict[str, Any]
    input: str | None = None  # the fingerprint hash of what the stage reads
    external: dict[str, str] = field(default_factory=dict)  # name -> content hash
    input_files: FileSizes | None = None

    def _parts(self) -> dict[str, Any]:
        parts = {"config": self.config, "input": self.input, "external": self.external}
        if self.input_files is not None:
            parts["input_files"] = self.input_files
        return parts

    @property
    def digest(self) -> str:
        return _hash(self._parts())

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, **self._parts()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        files = d.get("input_files")
        return cls(dict(d.get("config") or {}), d.get("input"), dict(d.get("external") or {}),
                   dict(files) if files is not None else None)


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


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_slice(cfg: BuildConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The flattened config values under any of ``keys`` (sections or dotted fields), less the execution-only
    ones: a stage that claims a whole section (download) must not be redone, nor its unfinished work thrown
    away, because a setting of how it runs (its thread count) changed."""
    flat = {**flatten(cfg.model_dump(mode="json")), **_inert_settings(cfg)}
    return {k: _one_spelling(k, v) for k, v in sorted(flat.items())
            if _under(k, keys) and not _under(k, EXECUTION_ONLY) and not _under(k, BY_CONTENT)}


def _inert_settings(cfg: BuildConfig) -> dict[str, Any]:
    """Settings that change nothing while their feature is off, spelled at their defaults: with no checkpoint to
    score with, ``clip_score.batch_size`` or ``device`` redo no finalize (and a default build keeps its digest)."""
    return {} if cfg.clip_score.enabled else _scoring_defaults()


def _scoring_defaults() -> dict[str, Any]:
    """Every ``clip_score.*`` setting at its default, flattened."""
    from witbuild.curate.clip_score import ClipScoreConfig

    return flatten({"clip_score": ClipScoreConfig().model_dump(mode="json")})


#: Lists read as sets: their order and repeats change nothing the stages make.
SET_VALUED = ("network.allow_addresses", "langid.allowed")
#: Paths whose file counts by its content among the stage's external files (``langid_model``), spelled as unset:
#: the default model named by its own path, or a copy of a model elsewhere, redoes nothing.
COUNTED_BY_CONTENT = ("langid.model_path",)


def _one_spelling(key: str, value: Any) -> Any:
    """A value in one spelling for what it means: input paths normalised (``web/./a``, ``web//a`` and ``web/a/``
    are one path, as ``expand_inputs`` names them), set-like lists sorted without repeats, a path counted by its
    file's content unset."""
    if key == "input.paths" and isinstance(value, list):
        return [os.path.normpath(p) if local_path(p) == p else p for p in value]
    if key in SET_VALUED and isinstance(value, list):
        return sorted(set(value), key=str)
    if key in COUNTED_BY_CONTENT:
        return None
    return value


def _file_size(name: str) -> int | str | None:
    """A file's size from its filesystem (an object store's usually answers from the listing the glob just made)."""
    if name.startswith(("http://", "https://")):
        return UNKNOWN_SIZE
    import fsspec

    try:
        if "://" not in name:  # expand_inputs gives local files as plain paths
            return os.path.getsize(name)
        fs, path = fsspec.core.url_to_fs(name)
        return int(fs.size(path))
    except (OSError, ValueError, TypeError):
        return MISSING


def input_files(patterns: list[str]) -> FileSizes:
    """Every file the input paths, globs and folders match now, sorted, with its size; a path that matches
    nothing is kept under its own name as MISSING (extract reports it when it runs). Each pattern is expanded on
    its own, by the expansion extract makes, so one missing path does not hide the others."""
    from witbuild.sources.inputs import InputError, expand_inputs

    found: FileSizes = {}
    for pattern in patterns:
        try:
            names = expand_inputs([pattern])
        except InputError:
            found[pattern] = MISSING
            continue
        for name in names:
            found[name] = _file_size(name)
    return dict(sorted(found.items()))


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
    """Content hash of every file under a local folder (names and bytes), symlinked subfolders followed as the
    evaluation images are read (``Path.rglob`` skips them: files changed there would redo nothing)."""
    from witbuild.dedup.eval_set import walk_files

    root = Path(path).expanduser()
    if not root.is_dir():
        return file_digest(root)
    files = walk_files(root)
    return _hash([(str(p.relative_to(root)), file_digest(p)) for p in files])


#: Raised when a list built here comes out otherwise from the same inputs. 2: bigrams counted over the captions' words
#: as matching spaces and folds them (a word keeps its combining marks, a hyphenated word stays whole).
QUERYLIST_RULE = 2


def querylist_fingerprint(cfg: BuildConfig, pool: str | None) -> Fingerprint:
    """The build's query list: its config, the user entries file's bytes, and for a list built here what else it
    was built from: wordfreq's version (its word lists), WordNet's files when it is asked for (present on one
    machine and not on another, the same config gives another list), and for bigrams counted over the filtered
    pool, the pool's fingerprint."""
    external = {}
    if cfg.match.entries_path:
        external["entries_file"] = file_digest(cfg.match.entries_path)
        if str(cfg.match.entries_path).lower().endswith(".json"):  # read as a JSON list, no longer as lines
            external["entries_read_as"] = "json"
    else:
        from importlib.metadata import PackageNotFoundError, version

        from witbuild.curate.querylist import WORDNET_DIR, WORDNET_FILES, is_english

        try:
            external["wordfreq"] = version("wordfreq")
        except PackageNotFoundError:  # the query list stage says so with its own error when it runs
            external["wordfreq"] = MISSING
        if cfg.querylist.wordnet and is_english(cfg.querylist.language):  # WordNet is English
            external["wordnet"] = _hash([file_digest(WORDNET_DIR / name) for name in WORDNET_FILES])
    built_from_pool = not cfg.match.entries_path and cfg.querylist.bigrams
    if built_from_pool:
        external["rule"] = str(QUERYLIST_RULE)
    return Fingerprint(config_slice(cfg, QUERYLIST_CONFIG), pool if built_from_pool else None, external)


def _external(cfg: BuildConfig, st: Stage, previous: str | None) -> dict[str, str]:
    rule = {"rule": str(st.rule)} if st.rule != 1 else {}
    return {**rule, **_external_files(cfg, st, previous)}


def _external_files(cfg: BuildConfig, st: Stage, previous: str | None) -> dict[str, str]:
    if st.name == "extract" and cfg.input.seeds_file:  # the seed list by its lines, not its name
        return {"seeds_file": file_digest(cfg.input.seeds_file)}
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
    if score.checkpoint and _is_openclip_folder(score.checkpoint):
        out.update(_openclip_folder_digests(Path(score.checkpoint)))
    elif score.checkpoint:
        out["clip_checkpoint"] = file_digest(_checkpoint_file(score.checkpoint, score.model_json is None))
    if score.model_json:
        from trainer.model import MODEL_DIR  # a name: the model JSON the trainer resolves it to

        named = MODEL_DIR / f"{score.model_json}.json"
        out["clip_model_json"] = file_digest(score.model_json if Path(score.model_json).is_file() else named)
    if score.bpe_vocab:
        out["clip_bpe_vocab"] = file_digest(score.bpe_vocab)
    return out


def _is_openclip_folder(path: str) -> bool:
    from trainer.openclip_weights import is_openclip_folder

    return is_openclip_folder(Path(path).expanduser())


def _openclip_folder_digests(folder: Path) -> dict[str, str]:
    """An open_clip model folder by the content of what is read from it: config, weights, vocabulary."""
    from trainer.openclip_weights import CONFIG_FILE, VOCAB_FILE, WEIGHT_FILES

    folder = folder.expanduser()
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), folder / WEIGHT_FILES[0])
    out = {"clip_checkpoint": file_digest(weights), "clip_openclip_config": file_digest(folder / CONFIG_FILE)}
    if (folder / VOCAB_FILE).is_file():
        out["clip_folder_vocab"] = file_digest(folder / VOCAB_FILE)
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


def _input_files(cfg: BuildConfig, st: Stage) -> FileSizes | None:
    """The input files of the stage that reads the build's inputs (the one that reads no other stage)."""
    if st.reads is not None or not cfg.input.paths:
        return None
    return input_files(cfg.input.paths)


def stage_fingerprints(cfg: BuildConfig) -> dict[str, Fingerprint]:
    """Every stage's fingerprint under ``cfg``, in stage order (each one chained to the one it reads)."""
    out: dict[str, Fingerprint] = {}
    for st in REGISTRY:
        previous = out[st.reads].digest if st.reads else None
        out[st.name] = Fingerprint(config_slice(cfg, st.config_keys(cfg)), previous, _external(cfg, st, previous),
                                   _input_files(cfg, st))
    return out


def respelled(old: Fingerprint, inputs: dict[str, str] | None = None) -> Fingerprint:
    """A recorded fingerprint in today's spellings (:func:`_one_spelling`, :func:`_inert_settings`: an older witbuild
    recorded the default fastText model by its path, and scoring settings while nothing scored), its input's digest
    mapped through ``inputs`` (the upstream stage respelled the same way): equal to today's expected fingerprint
    when only the spelling differs, which redoes nothing."""
    config = {k: _one_spelling(k, v) for k, v in old.config.items()}
    if "clip_checkpoint" not in old.external:  # nothing scored: the settings stood at whatever they were
        defaults = _scoring_defaults()
        config.update({k: defaults[k] for k in config if k in defaults})
    return Fingerprint(config, (inputs or {}).get(old.input or "", old.input), old.external, old.input_files)


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """What differs, for people: ``filter.min_words 3 → 5``, ``langid_model changed``, ``input files added:
    web/b.warc.gz``, ``its input changed``; ``old`` in today's spellings (:func:`respelled`)."""
    old = respelled(old)
    out = []
    for key in sorted(set(old.config) | set(new.config)):
        a, b = old.config.get(key, MISSING), new.config.get(key, MISSING)
        if a != b:
            out.append(f"{key} {json.dumps(a)} → {json.dumps(b)}")
    for key in sorted(set(old.external) | set(new.external)):
        if key == "rule" and old.external.get(key) != new.external.get(key):
            out.append(f"its rule changed ({old.external.get(key, '1')} → {new.external.get(key, '1')})")
        elif old.external.get(key) != new.external.get(key):
            out.append(f"{key} changed")
    out += input_file_changes(old, new)
    if not out and old.input != new.input:
        out.append("its input changed")
    return out


def _show_size(size: int | str | None) -> str:
    if size == MISSING:
        return "missing"
    return "size unknown" if size is UNKNOWN_SIZE else f"{size:,} bytes"


def listed_names(names: list[str], most: int = 3) -> str:
    """A few names, and how many more: a folder of 90,000 WAT files must not flood the log."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")


def size_differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Names in ``b`` only, names in ``a`` only, and names whose size differs, each ``name (size → size)``."""
    added = [n for n in b if n not in a]
    removed = [n for n in a if n not in b]
    changed = [f"{n} ({_show_size(a[n])} → {_show_size(b[n])})" for n in b if n in a and a[n] != b[n]]
    return added, removed, changed


def input_file_changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """Which input files were added, removed or changed (another size, or now missing) since ``old``."""
    a, b = old.input_files, new.input_files
    if a == b:
        return []
    if a is None and old.config.get("input.paths"):
        return ["input files not recorded (made by an older witbuild, which fingerprinted the input paths only)"]
    added, removed, changed = size_differences(a or {}, b or {})
    return [f"input files {what}: {listed_names(names)}"
            for what, names in (("added", added), ("removed", removed), ("changed", changed)) if names]
