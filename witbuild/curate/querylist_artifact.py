"""The build's query list: ``<output>/querylist/`` (entries.txt + manifest.json), made once per set of inputs.

Entry ids in the ``matched`` column are line numbers of this copy, whatever the user's file looked like (blank
lines and duplicates are skipped and counted). The folder records the fingerprint of its inputs (the
``querylist.*`` settings, ``match.entries_path`` and that file's bytes, and for a list built with bigrams the
filtered pool's fingerprint); a build whose inputs differ rebuilds it instead of matching against a stale list.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from witbuild import layout
from witbuild.curate.match import FOLDING_RULE, load_entries
from witbuild.curate.querylist import (
    QueryList,
    build_querylist,
    count_ngrams,
    pmi_bigrams,
    spark_pmi_bigrams,
    wordfreq_language,
    write_querylist,
)
from witbuild.fingerprint import Fingerprint, changes, querylist_fingerprint, stage_fingerprints
from witbuild.spark import driver_sized, fs_and_path

if TYPE_CHECKING:
    from witbuild.config import BuildConfig, QueryListConfig

log = logging.getLogger(__name__)


def querylist_dir(cfg: BuildConfig) -> tuple[Any, str]:
    """(filesystem, path) of the build's query list folder: inside the output however it is spelled (``file:/x``,
    ``s3://b/x``), never a relative folder named after a URL in the working directory."""
    return fs_and_path(layout.querylist_dir(cfg.output))


def expected_fingerprint(cfg: BuildConfig) -> Fingerprint:
    return querylist_fingerprint(cfg, stage_fingerprints(cfg)["filter"].digest)


def querylist_current(cfg: BuildConfig) -> bool:
    """Whether the build's query list folder holds the list its config makes (what a finished match ran against):
    gone or other, match must be redone, as balance reads the list and cannot always make it again."""
    fs, folder = querylist_dir(cfg)
    return _current(fs, folder, expected_fingerprint(cfg))


def querylist_changes(cfg: BuildConfig) -> list[str]:
    """What differs between the list the build holds and the one its config makes, for the log (``querylist
    changed`` alone leaves a user guessing which of its settings or files it was); [] when the build records
    no list to compare with."""
    fs, folder = querylist_dir(cfg)
    try:
        recorded = Fingerprint.from_dict(json.loads(fs.cat_file(f"{folder}/{layout.FINGERPRINT_FILE}")))
    except (OSError, ValueError):
        return []
    return [why if why != "its input changed" else "the filtered pool it counts bigrams over changed"
            for why in changes(recorded, expected_fingerprint(cfg))]


def _current(fs: Any, folder: str, fp: Fingerprint) -> bool:
    try:
        recorded = json.loads(fs.cat_file(f"{folder}/{layout.FINGERPRINT_FILE}").decode("utf-8"))
    except (OSError, ValueError):
        return False
    return (recorded.get("digest") == fp.digest and fs.isfile(f"{folder}/{layout.QUERYLIST_MANIFEST}")
            and fs.isfile(f"{folder}/{layout.QUERYLIST_ENTRIES}"))


def _make(spark: Any, cfg: BuildConfig, pool_dir: str | None) -> tuple[QueryList, dict[str, Any]]:
    qcfg = cfg.querylist
    if cfg.match.entries_path:
        entries, skipped = load_entries(cfg.match.entries_path, max_chars=qcfg.max_entry_chars,
                                        max_entries=qcfg.max_entries)
        ql = QueryList(entries, ["user"] * len(entries), {"user": len(entries) + sum(skipped.values())},
                       {"user": len(entries)}, skipped)
        return ql, {"source": "user file", "path": str(cfg.match.entries_path)}
    bigrams = None
    if qcfg.bigrams and pool_dir is not None:
        bigrams = [g for g, _ in pool_pmi_bigrams(spark, pool_dir, qcfg)]
    return build_querylist(qcfg, bigrams=bigrams), {"source": "built", "bigram_corpus": pool_dir}


def pool_pmi_bigrams(spark: Any, pool_dir: str, qcfg: QueryListConfig) -> list[tuple[str, float]]:
    """The pool's bigrams by PMI: counted by Spark, or in the driver for a pool on this machine of at most
    ``DRIVER_MAX_PARQUET_BYTES`` of Parquet (:func:`witbuild.spark.driver_sized`), where Spark's shuffles and joins
    cost seconds for a few rows (5–6 s for a hundred captions on 2 cores) and the driver takes milliseconds. Both
    give the same bigrams in the same order (tests/test_querylist.py)."""
    kw = {"min_count": qcfg.bigram_min_count, "min_pmi": qcfg.bigram_min_pmi, "limit": qcfg.max_bigrams}
    language = wordfreq_language(qcfg.language, qcfg.wordlist)  # the list's folding (its manifest's)
    size = driver_sized(pool_dir)
    if size is None:
        return spark_pmi_bigrams(spark.read.parquet(pool_dir), language=language, **kw)
    import pyarrow.parquet as pq

    texts = pq.read_table(pool_dir, columns=["text"]).column("text").to_pylist()
    log.info("counting the bigrams of %d captions (%.1f MB of Parquet) in the driver", len(texts), size / 2**20)
    uni, bi = count_ngrams((t for t in texts if t), language)
    return pmi_bigrams(uni, bi, **kw)


def folding_language(manifest: dict) -> str:
    """The language whose folding matching uses for a query list (:func:`witbuild.curate.match.fold`): the one its
    manifest records (``"caption_folding": "wordfreq preprocess_text, de"``), that of its config for a list written
    before manifests recorded it."""
    folding = manifest.get("caption_folding", "")
    rule, _, language = folding.rpartition(", ")
    if rule == FOLDING_RULE and language:
        return language
    return manifest.get("config", {}).get("language", "en")


def prepare_querylist(spark: Any, cfg: BuildConfig, pool_dir: str | None) -> tuple[list[str], dict]:
    """The entries and manifest of the build's query list, (re)made when its inputs changed. ``pool_dir``: the
    filtered pool to count bigrams over (None where the list must already exist)."""
    fs, folder = querylist_dir(cfg)
    fp = expected_fingerprint(cfg)
    if not _current(fs, folder, fp):
        if pool_dir is None and not cfg.match.entries_path and cfg.querylist.bigrams:
            raise ValueError(f"{layout.querylist_dir(cfg.output)}: no query list made under this config; run the "
                             "build through match first")
        if fs.exists(folder):
            why = "; ".join(querylist_changes(cfg)) or "its inputs changed"
            log.warning("query list: %s: rebuilding %s", why, layout.querylist_dir(cfg.output))
        ql, provenance = _make(spark, cfg, pool_dir)
        with tempfile.TemporaryDirectory(prefix="witbuild-querylist-") as staged:
            write_querylist(ql, staged, cfg.querylist, provenance)
            (Path(staged) / layout.FINGERPRINT_FILE).write_text(json.dumps(fp.to_dict(), indent=1, ensure_ascii=False),
                                                                encoding="utf-8")
            _publish(fs, staged, folder)
    return _read(fs, folder)


def stored_querylist(output: str) -> tuple[list[str], dict]:
    """The entries and manifest of the query list kept in a build's output, as they are: never made again (what
    reads a finished build must not change it). Raises ValueError when the build holds none."""
    fs, folder = fs_and_path(layout.querylist_dir(output))
    if not (fs.isfile(f"{folder}/{layout.QUERYLIST_ENTRIES}") and fs.isfile(f"{folder}/{layout.QUERYLIST_MANIFEST}")):
        raise ValueError(f"{layout.querylist_dir(output)}: no query list in this build")
    return _read(fs, folder)


def _read(fs: Any, folder: str) -> tuple[list[str], dict]:
    with tempfile.TemporaryDirectory(prefix="witbuild-querylist-") as local:
        entries_file = Path(local) / layout.QUERYLIST_ENTRIES
        entries_file.write_bytes(fs.cat_file(f"{folder}/{layout.QUERYLIST_ENTRIES}"))
        entries, _ = load_entries(entries_file, max_chars=10**9)
    return entries, json.loads(fs.cat_file(f"{folder}/{layout.QUERYLIST_MANIFEST}").decode("utf-8"))


def _publish(fs: Any, staged: str, folder: str) -> None:
    """Put a folder made on this machine at ``folder``: written beside it, then renamed over it, so a build killed
    meanwhile leaves the old list or the new one, never half of one."""
    tmp = folder.rstrip("/") + ".tmp"
    if fs.exists(tmp):
        fs.rm(tmp, recursive=True)
    fs.makedirs(tmp, exist_ok=True)
    for item in sorted(Path(staged).iterdir()):
        fs.put_file(str(item), f"{tmp}/{item.name}")
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
    fs.mv(tmp, folder, recursive=True)
