"""The build's query list: ``<output>/querylist/`` (entries.txt + manifest.json), made once per set of inputs.

Entry ids in the ``matched`` column are line numbers of this copy, whatever the user's file looked like (blank
lines and duplicates are skipped and counted). The folder records the fingerprint of its inputs (the
``querylist.*`` settings, ``match.entries_path`` and that file's bytes, and for a list built with bigrams the
filtered pool's fingerprint); a build whose inputs differ rebuilds it instead of matching against a stale list.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from witbuild import layout
from witbuild.curate.match import load_entries
from witbuild.curate.querylist import (
    QueryList,
    build_querylist,
    count_ngrams,
    pmi_bigrams,
    spark_pmi_bigrams,
    write_querylist,
)
from witbuild.fingerprint import Fingerprint, querylist_fingerprint, stage_fingerprints
from witbuild.spark import driver_sized

if TYPE_CHECKING:
    from witbuild.config import BuildConfig, QueryListConfig

log = logging.getLogger(__name__)


def querylist_dir(cfg: BuildConfig) -> Path:
    return Path(layout.querylist_dir(cfg.output))


def expected_fingerprint(cfg: BuildConfig) -> Fingerprint:
    return querylist_fingerprint(cfg, stage_fingerprints(cfg)["filter"].digest)


def _current(folder: Path, fp: Fingerprint) -> bool:
    try:
        recorded = json.loads((folder / layout.FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (recorded.get("digest") == fp.digest and (folder / layout.QUERYLIST_MANIFEST).is_file()
            and (folder / layout.QUERYLIST_ENTRIES).is_file())


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
    size = driver_sized(pool_dir)
    if size is None:
        return spark_pmi_bigrams(spark.read.parquet(pool_dir), **kw)
    import pyarrow.parquet as pq

    texts = pq.read_table(pool_dir, columns=["text"]).column("text").to_pylist()
    log.info("counting the bigrams of %d captions (%.1f MB of Parquet) in the driver", len(texts), size / 2**20)
    uni, bi = count_ngrams(t for t in texts if t)
    return pmi_bigrams(uni, bi, **kw)


def prepare_querylist(spark: Any, cfg: BuildConfig, pool_dir: str | None) -> tuple[list[str], dict]:
    """The entries and manifest of the build's query list, (re)made when its inputs changed. ``pool_dir``: the
    filtered pool to count bigrams over (None where the list must already exist)."""
    folder = querylist_dir(cfg)
    fp = expected_fingerprint(cfg)
    if not _current(folder, fp):
        if pool_dir is None and not cfg.match.entries_path and cfg.querylist.bigrams:
            raise ValueError(f"{folder}: no query list made under this config; run the build through match first")
        if folder.exists():
            log.warning("query list inputs changed: rebuilding %s", folder)
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        ql, provenance = _make(spark, cfg, pool_dir)
        write_querylist(ql, tmp, cfg.querylist, provenance)
        (tmp / layout.FINGERPRINT_FILE).write_text(json.dumps(fp.to_dict(), indent=1, ensure_ascii=False),
                                                   encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    entries, _ = load_entries(folder / layout.QUERYLIST_ENTRIES, max_chars=10**9)
    return entries, json.loads((folder / layout.QUERYLIST_MANIFEST).read_text(encoding="utf-8"))
