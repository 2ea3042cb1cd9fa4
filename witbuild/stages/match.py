"""Stage match: MetaCLIP substring matching per Arrow batch against the build's query list
(witbuild/curate/querylist_artifact.py). The entries travel to the executors as a broadcast, so executors
need no access to the driver's files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from witbuild import schemas
from witbuild.counters import StageCounts
from witbuild.curate.match import AnyMatcher, MatchConfig, make_matcher, warn_case_variants, warn_spaced_entries
from witbuild.curate.querylist_artifact import folding_language, prepare_querylist

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext

log = logging.getLogger(__name__)

_MATCHERS: dict[tuple, AnyMatcher] = {}  # one per executor process and query list version


def match_batch(batch: pa.RecordBatch, matcher: AnyMatcher, counts: StageCounts,
                out_schema: pa.Schema) -> pa.RecordBatch:
    counts.rows_in += batch.num_rows
    matched = matcher.match_batch(batch.column("text").to_pylist())
    keep = [bool(m) for m in matched]
    n_kept = sum(keep)
    counts.drop("no_match", batch.num_rows - n_kept)
    counts.rows_out += n_kept
    counts.event("entry_matches", sum(len(m) for m in matched))
    kept = batch.filter(pa.array(keep, type=pa.bool_()))
    columns = {name: kept.column(name) for name in kept.schema.names}
    columns["matched"] = pa.array([m for m in matched if m], type=pa.list_(pa.int32()))
    return pa.RecordBatch.from_pydict(columns, schema=out_schema)


def run_match(ctx: StageContext) -> StageCounts:
    cfg = ctx.cfg
    entries, manifest = prepare_querylist(ctx.spark, cfg, ctx.previous)
    version, language = manifest["version"], folding_language(manifest)
    log.info("query list %s: %d entries, captions folded as %s", version, len(entries), language)
    case_variant_groups = warn_case_variants(entries, cfg.match.case_sensitive)
    spaced_entries = warn_spaced_entries(entries, cfg.match)
    entries_bc = ctx.spark.sparkContext.broadcast(entries)
    mcfg: MatchConfig = cfg.match
    out_schema = schemas.load("matched")
    arrow_schema = out_schema.arrow()

    def task(batches: Iterator[pa.RecordBatch], counts: StageCounts) -> Iterator[pa.RecordBatch]:
        key = (version, language, mcfg.engine, mcfg.case_sensitive, mcfg.space_entries, mcfg.punct)
        matcher = _MATCHERS.get(key)
        if matcher is None:
            matcher = _MATCHERS[key] = make_matcher(entries_bc.value, mcfg, language)
        for batch in batches:
            yield match_batch(batch, matcher, counts, arrow_schema)

    counts = ctx.map_batches(task)
    counts.info.update({"querylist_version": version, "querylist_entries": len(entries),
                        "case_rule": mcfg.case_sensitive, "case_variant_groups": case_variant_groups,
                        "caption_folding": manifest.get("caption_folding")})
    if mcfg.case_sensitive is True:  # MetaCLIP's rule: how many entries it would never match
        counts.info["spaced_entries"] = spaced_entries
    entries_bc.unpersist()
    return counts
