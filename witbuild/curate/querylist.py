"""The query list ("metadata" in MetaCLIP's words): the entries captions are matched against.

CLIP's 500,000 queries were words frequent in English Wikipedia, high-PMI bigrams, popular
Wikipedia titles and WordNet synsets; MetaCLIP rebuilt them the same way. Offline, this module
builds the same kinds of sources from what is at hand: wordfreq's English frequencies (unigrams),
PMI bigrams counted with Spark over the candidate texts (or a user corpus), user files (Wikipedia
titles, MetaCLIP's ``metadata.json``), WordNet lemmas from Debian's ``wordnet-base`` when it is
installed, and "0".."99". The result is deduplicated, capped, and written with its provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from witbuild import __version__
from witbuild.curate.match import load_entries

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("index.noun", "index.verb", "index.adj", "index.adv")  # the lemmas' files, in this order
# Order matters: when the list is capped, earlier sources keep their entries.
SOURCE_ORDER = ("numbers", "user", "wordnet", "unigrams", "bigrams")
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
"""Languages written without spaces between words (of wordfreq's, Chinese and Japanese)."""


class QueryListConfig(BaseModel):
    """How ``witbuild querylist build`` makes a query list."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field("en", description="wordfreq language of the unigrams.")
    min_zipf: float = Field(
        1.4,
        allow_inf_nan=False,
        description="Unigrams with a Zipf frequency at least this (1.4 ≈ 100 occurrences in English "
        "Wikipedia's ~4B words, MetaCLIP's unigram threshold).",
    )
    wordlist: Literal["small", "large", "best"] = Field(
        "large", description="wordfreq list: 'large' (319,938 English words), 'best' or 'small'.")
    bigrams: bool = Field(True, description="Add PMI bigrams counted over the corpus (needs a corpus).")
    bigram_min_count: int = Field(5, ge=1, description="Bigrams seen fewer times are not considered.")
    bigram_min_pmi: float = Field(6.0, description="Minimum log2 PMI of a bigram.")
    max_bigrams: int = Field(100_000, ge=0, description="At most this many bigrams, the highest PMI first "
                             "(MetaCLIP's list holds 100,646).")
    numbers: bool = Field(True, description='Add "0".."99", as MetaCLIP does.')
    wordnet: bool = Field(True, description="Add WordNet lemmas when Debian's wordnet-base is installed.")
    max_entries: int = Field(500_000, ge=1, description="At most this many entries (MetaCLIP's 500,000), for a "
                             "built list and for a user's match.entries_path alike; the rest are over_max_entries.")
    max_entry_chars: int = Field(200, ge=1, description="Longer entries are skipped as too_long (built lists and "
                                 "user files alike).")

    @field_validator("language")
    @classmethod
    def _words_between_spaces(cls, language: str) -> str:
        """Matching is MetaCLIP's: an entry matches between spaces or punctuation. Captions in these languages do
        not separate their words, so a list of their words would match almost nothing, every pair dropped as
        no_match: an error here, not a build that silently keeps only the captions mixed with spaced words."""
        if language.split("-")[0].lower() in UNSPACED_LANGUAGES:
            raise ValueError(f"language {language!r} writes words without spaces between them; matching (MetaCLIP's "
                             "rule) finds entries only between spaces or punctuation, so its unigrams would match "
                             "almost no caption: not supported")
        return language

    @model_validator(mode="after")
    def _wordfreq_has_the_list(self) -> QueryListConfig:
        """wordfreq's ``large`` list covers 21 languages only: a language it lacks is an error when the config is
        read, not a ``LookupError`` in the match stage after extract and filter have run."""
        try:
            import langcodes
            from wordfreq import available_languages
        except ImportError:  # the curate extra is not installed: the match stage says so itself
            return self
        available = sorted(available_languages(self.wordlist))
        if langcodes.closest_match(self.language, available, max_distance=60)[0] == "und":
            raise ValueError(f"wordfreq has no {self.wordlist!r} word list for language {self.language!r}; it has "
                             f"{', '.join(available)}")
        return self


@dataclass
class QueryList:
    entries: list[str]
    sources: list[str]  # the source that contributed each entry
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    kept_per_source: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    @property
    def version(self) -> str:
        """Content hash: the same entries in the same order give the same version."""
        return hashlib.sha256("\n".join(self.entries).encode("utf-8")).hexdigest()[:16]


def wordfreq_unigrams(language: str, min_zipf: float, wordlist: str = "large") -> list[str]:
    """wordfreq's words at or above ``min_zipf``, most frequent first; digits-only tokens left out.

    Each word's Zipf value is its own listed frequency, rounded as ``zipf_frequency`` rounds it. ``zipf_frequency``
    tokenises every word again first: the same values for the words of the list (tests/test_querylist.py compares
    them), eight times the time (2 s of every English build), and for Chinese and Japanese it needs jieba or MeCab."""
    from wordfreq import freq_to_zipf, get_frequency_dict, iter_wordlist

    frequency = get_frequency_dict(language, wordlist)
    out = []
    for word in iter_wordlist(language, wordlist=wordlist):
        if round(freq_to_zipf(frequency[word]), 2) < min_zipf:
            break  # iter_wordlist is sorted by frequency
        if any(ch.isalpha() for ch in word):
            out.append(word)
    return out


def wordnet_lemmas(root: Path = WORDNET_DIR) -> list[str]:
    """Lemmas of WordNet's index files (``index.noun`` …), underscores as spaces; [] when absent."""
    out: list[str] = []
    for name in WORDNET_FILES:
        path = root / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or not line.strip():
                    continue  # the licence header lines start with two spaces
                out.append(line.split(" ", 1)[0].replace("_", " "))
    return out


def read_user_file(path: str | Path, max_chars: int = 200) -> tuple[list[str], Counter]:
    """Entries of a user file: MetaCLIP's ``metadata.json`` (a JSON list of strings) or text, one per line."""
    return load_entries(path, max_chars=max_chars)


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens for bigram statistics (letters only; apostrophes inside words kept)."""
    return _TOKEN.findall(text.lower())


def count_ngrams(texts: Iterable[str]) -> tuple[Counter, Counter]:
    """(unigram counts, bigram counts) over texts; the pure version of :func:`spark_ngram_counts`."""
    uni: Counter = Counter()
    bi: Counter = Counter()
    for text in texts:
        toks = tokens(text or "")
        uni.update(toks)
        bi.update(f"{a} {b}" for a, b in pairwise(toks))
    return uni, bi


def bigram_pmi(count: int, count_a: int, count_b: int, n_uni: int, n_bi: int) -> float:
    """log2 PMI of a bigram from its counts: one function for the driver's and Spark's counting, so that both give
    the same floats and so the same order (the JVM's ``log2`` differs from Python's in the last bit at times, and
    equal PMIs are then ordered otherwise)."""
    return math.log2((count / n_bi) / ((count_a / n_uni) * (count_b / n_uni)))


def pmi_bigrams(
    uni: dict[str, int], bi: dict[str, int], *, min_count: int, min_pmi: float, limit: int
) -> list[tuple[str, float]]:
    """Bigrams by log2 PMI = log2(p(ab) / (p(a) p(b))), best first, ties broken by count then text."""
    n_uni = sum(uni.values())
    n_bi = sum(bi.values())
    if not n_uni or not n_bi:
        return []
    scored = []
    for gram, c in bi.items():
        if c < min_count:
            continue
        a, b = gram.split(" ", 1)
        pmi = bigram_pmi(c, uni[a], uni[b], n_uni, n_bi)
        if pmi >= min_pmi:
            scored.append((gram, pmi, c))
    scored.sort(key=lambda x: (-x[1], -x[2], x[0]))
    return [(g, p) for g, p, _ in scored[:limit]]


def spark_pmi_bigrams(
    df: Any, *, min_count: int, min_pmi: float, limit: int, text_col: str = "text"
) -> list[tuple[str, float]]:
    """:func:`pmi_bigrams` computed by Spark over a DataFrame's texts: counts aggregated with 64-bit
    sums and joined on the executors; only the selected bigrams reach the driver."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    def grams(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            uni, bi = count_ngrams(t for t in batch.column(0).to_pylist() if t)
            yield pa.RecordBatch.from_pydict(
                {
                    "gram": [*uni, *bi],
                    "n": [1] * len(uni) + [2] * len(bi),
                    "count": [*uni.values(), *bi.values()],
                }
            )

    counts = (
        df.select(text_col)
        .mapInArrow(grams, "gram string, n long, count long")
        .groupBy("gram", "n")
        .agg(F.sum("count").alias("count"))
    ).cache()
    try:
        totals = {r["n"]: r["total"] for r in counts.groupBy("n").agg(F.sum("count").alias("total")).collect()}
        n_uni, n_bi = totals.get(1, 0), totals.get(2, 0)
        if not n_uni or not n_bi:
            return []
        uni = counts.filter("n = 1").select("gram", "count")
        parts = F.split("gram", " ")
        bi = counts.filter((F.col("n") == 2) & (F.col("count") >= min_count)).select(
            "gram", "count", parts[0].alias("a"), parts[1].alias("b")
        )
        ua = uni.withColumnRenamed("gram", "a").withColumnRenamed("count", "ca")
        ub = uni.withColumnRenamed("gram", "b").withColumnRenamed("count", "cb")

        def scored(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                c, ca, cb = (batch.column(k).to_pylist() for k in ("count", "ca", "cb"))
                pmi = [bigram_pmi(*x, n_uni, n_bi) for x in zip(c, ca, cb, strict=True)]
                yield pa.RecordBatch.from_pydict({"gram": batch.column("gram"), "count": batch.column("count"),
                                                  "pmi": pa.array(pmi, pa.float64())})

        best = (
            bi.join(ua, "a")
            .join(ub, "b")
            .select("gram", "count", "ca", "cb")
            .mapInArrow(scored, "gram string, count long, pmi double")
            .filter(F.col("pmi") >= min_pmi)
            .orderBy(F.desc("pmi"), F.desc("count"), "gram")
            .limit(limit)
            .select("gram", "pmi")
            .collect()
        )
        return [(r["gram"], float(r["pmi"])) for r in best]
    finally:
        counts.unpersist()


def assemble(sources: dict[str, list[str]], cfg: QueryListConfig) -> QueryList:
    """Deduplicate (first source in SOURCE_ORDER wins), drop blank/too-long entries, cap."""
    entries: list[str] = []
    origin: list[str] = []
    seen: set[str] = set()
    skipped: Counter = Counter()
    candidates = {name: len(sources.get(name, [])) for name in SOURCE_ORDER if name in sources}
    kept: Counter = Counter()
    for name in SOURCE_ORDER:
        for raw in sources.get(name, []):
            entry = " ".join(raw.split())
            if not entry:
                skipped["blank"] += 1
            elif len(entry) > cfg.max_entry_chars:
                skipped["too_long"] += 1
            elif entry in seen:
                skipped[f"duplicate_in_{name}"] += 1
            elif len(entries) >= cfg.max_entries:
                skipped["over_max_entries"] += 1
            else:
                seen.add(entry)
                entries.append(entry)
                origin.append(name)
                kept[name] += 1
    if not entries:
        raise ValueError("the query list is empty: every source gave nothing")
    return QueryList(entries, origin, candidates, dict(kept), skipped)


def build_querylist(
    cfg: QueryListConfig,
    *,
    user_files: list[str] | None = None,
    bigrams: list[str] | None = None,
) -> QueryList:
    """Gather every enabled source and :func:`assemble` them; ``bigrams`` come from
    :func:`spark_pmi_bigrams` (or :func:`pmi_bigrams`) over the corpus."""
    sources: dict[str, list[str]] = {}
    if cfg.numbers:
        sources["numbers"] = [str(i) for i in range(100)]
    user: list[str] = []
    for path in user_files or []:
        found, skipped = read_user_file(path, cfg.max_entry_chars)
        log.info("user file %s: %d entries, skipped %s", path, len(found), dict(skipped))
        user += found
    if user:
        sources["user"] = user
    if cfg.wordnet:
        lemmas = wordnet_lemmas()
        if lemmas:
            sources["wordnet"] = lemmas
        else:
            log.info("WordNet not found at %s (Debian package wordnet-base); skipped", WORDNET_DIR)
    sources["unigrams"] = wordfreq_unigrams(cfg.language, cfg.min_zipf, cfg.wordlist)
    if cfg.bigrams and bigrams:
        sources["bigrams"] = bigrams
    return assemble(sources, cfg)


def write_querylist(ql: QueryList, folder: str | Path, cfg: QueryListConfig, provenance: dict[str, Any]) -> Path:
    """``entries.txt`` (one per line: what matching reads) and ``manifest.json`` (version, sources, counts)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "entries.txt").write_text("".join(f"{e}\n" for e in ql.entries), encoding="utf-8")
    (out / "sources.tsv").write_text(
        "".join(f"{i}\t{s}\t{e}\n" for i, (e, s) in enumerate(zip(ql.entries, ql.sources, strict=True))),
        encoding="utf-8",
    )
    manifest = {
        "version": ql.version,
        "entries": len(ql.entries),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "witbuild_version": __version__,
        "candidates_per_source": ql.candidates_per_source,
        "kept_per_source": ql.kept_per_source,
        "skipped": dict(ql.skipped),
        "config": cfg.model_dump(),
        "provenance": provenance,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out / "entries.txt"
