"""Stage filter: text normalisation and quality filters, then fastText language id, per Arrow batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from witbuild import schemas
from witbuild.counters import StageCounts
from witbuild.text.filters import FilterConfig, filter_texts
from witbuild.text.langid import LangIdConfig, LanguageIdentifier, lang_reasons

if TYPE_CHECKING:
    from witbuild.stages.context import StageContext


def filter_batch(batch: pa.RecordBatch, fcfg: FilterConfig, lcfg: LangIdConfig, counts: StageCounts,
                 identifier: LanguageIdentifier, out_schema: pa.Schema) -> pa.RecordBatch:
    """Kept rows of one candidates batch with normalised text, ``lang`` and ``lang_score``."""
    counts.rows_in += batch.num_rows
    result = filter_texts(batch.column("text").to_pylist(), fcfg)
    counts.event("text_truncated", sum(result.truncated))
    text_ok = [r is None for r in result.reasons]
    for reason in result.reasons:
        if reason is not None:
            counts.drop(reason)
    survivors = [t for t, ok in zip(result.texts, text_ok, strict=True) if ok]
    langs, scores = identifier.predict_columns(survivors)
    l_reasons = lang_reasons(langs, scores, lcfg)
    keep = []
    it = iter(l_reasons)
    for ok in text_ok:
        if not ok:
            keep.append(False)
            continue
        reason = next(it)
        if reason is not None:
            counts.drop(reason)
        keep.append(reason is None)
    kept_langs = [lang for lang, r in zip(langs, l_reasons, strict=True) if r is None]
    kept_scores = [s for s, r in zip(scores, l_reasons, strict=True) if r is None]
    mask = pa.array(keep, type=pa.bool_())
    kept = batch.filter(mask)
    texts = pa.array([t for t, k in zip(result.texts, keep, strict=True) if k], type=pa.string())
    columns = {name: kept.column(name) for name in kept.schema.names}
    columns["text"] = texts
    columns["lang"] = pa.array(kept_langs, type=pa.string())
    columns["lang_score"] = pc.cast(pa.array(kept_scores, type=pa.float64()), pa.float32())
    counts.rows_out += kept.num_rows
    return pa.RecordBatch.from_pydict(columns, schema=out_schema)


def run_filter(ctx: StageContext) -> StageCounts:
    fcfg, lcfg = ctx.cfg.filter, ctx.cfg.langid
    out_schema = schemas.load("filtered")
    arrow_schema = out_schema.arrow()

    def task(batches: Iterator[pa.RecordBatch], counts: StageCounts) -> Iterator[pa.RecordBatch]:
        identifier = LanguageIdentifier.from_config(lcfg)  # the model is loaded once per process
        for batch in batches:
            yield filter_batch(batch, fcfg, lcfg, counts, identifier, arrow_schema)

    return ctx.map_batches(task)
