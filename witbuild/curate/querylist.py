"""The query list ("metadata" in MetaCLIP's words): the entries captions are matched against.

CLIP's 500,000 queries were words frequent in English Wikipedia, high-PMI bigrams, popular
Wikipedia titles and WordNet synsets; MetaCLIP rebuilt them the same way. Offline, this module
builds the same kinds of sources from what is at hand: wordfreq's English frequencies (unigrams),
PMI bigrams counted with Spark over the candidate texts (or a user corpus), user files (Wikipedia
titles, MetaCLIP's ``metadata.json``), WordNet lemmas from Debian's ``wordnet-base`` when it is
installed (English lists only), and "0".."99". The result is deduplicated, capped, and written with its provenance.

wordfreq's words are in its own folded form (``preprocess_text``: ``groß`` is ``gross``); matching folds captions
the same way (:func:`witbuild.curate.match.fold`), and bigrams are counted over the captions as matching splits and
folds them, so every entry is in the form matching compares.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from witbuild import __version__
from witbuild.curate.match import fold, folding_name, is_cased, load_entries, prepare_text

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("index.noun", "index.verb", "index.adj", "index.adv")  # the lemmas' files, in this order
# Order matters: when the list is capped, earlier sources keep their entries.
SOURCE_ORDER = ("numbers", "user", "wordnet", "unigrams", "bigrams")
_WORD_JOINER = re.compile("['\u2019-]")  # apostrophes and the hyphen join the parts of one word
SAME_LANGUAGE_DISTANCE = 9
"""langcodes' distance up to which wordfreq's list is the language asked for: a region (pt-BR → pt, 5), Norwegian
→ Bokmål (1), Croatian → Serbo-Croatian (9); not Nynorsk → Bokmål (20), Basque → Spanish (20), Urdu → English
(44), which wordfreq would serve with only a logged warning."""


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
        "large", description="wordfreq list: 'large' (321,180 English words in wordfreq 3.1), 'best' or 'small'.")
    bigrams: bool = Field(True, description="Add PMI bigrams counted over the corpus (needs a corpus).")
    bigram_min_count: int = Field(5, ge=1, description="Bigrams seen fewer times are not considered.")
    bigram_min_pmi: float = Field(6.0, description="Minimum log2 PMI of a bigram.")
    max_bigrams: int = Field(100_000, ge=0, description="At most this many bigrams, the highest PMI first "
                             "(MetaCLIP's list holds 100,646).")
    numbers: bool = Field(True, description='Add "0".."99", as MetaCLIP does.')
    wordnet: bool = Field(True, description="Add WordNet lemmas when Debian's wordnet-base is installed (English "
                          "lists only: its lemmas are English).")
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
        read, not a ``LookupError`` in the match stage after extract and filter have run, nor another language's
        list that wordfreq serves in its place (:func:`wordfreq_language`)."""
        with contextlib.suppress(ImportError):  # the curate extra is not installed: the match stage says so itself
            wordfreq_language(self.language, self.wordlist)
        return self


def wordfreq_language(language: str, wordlist: str) -> str:
    """The language of the wordfreq list that serves ``language`` (``pt`` for ``pt-BR``). wordfreq itself serves the
    closest language it has, however far (Urdu gets English, Basque Spanish, Afrikaans Dutch) with only a logged
    warning: a list of another language is a ValueError here, naming the list wordfreq would have used and the
    ``wordlist`` that has the language, if one has."""
    import langcodes
    from wordfreq import available_languages

    available = sorted(available_languages(wordlist))
    served, distance = langcodes.closest_match(language, available, max_distance=60)
    if distance <= SAME_LANGUAGE_DISTANCE:
        return served
    why = f"wordfreq has no {wordlist!r} word list for language {language!r}"
    if served != "und":
        why += f": it would use its {served!r} list instead"
    has_it = [other for other in ("best", "large", "small") if other != wordlist and langcodes.closest_match(
        language, sorted(available_languages(other)), max_distance=SAME_LANGUAGE_DISTANCE)[0] != "und"]
    if has_it:
        raise ValueError(f"{why}; set querylist.wordlist: {has_it[0]}, which has {language!r}")
    raise ValueError(f"{why}; it has {', '.join(available)}")


@dataclass
class QueryList:
    entries: list[str]
    sources: list[str]  # the source that contributed each entry
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    kept_per_source: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)  # for the manifest: the wordfreq list's language, WordNet

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


def is_word(token: str) -> bool:
    """Whether a token is a word for bigram statistics: letters with their combining marks (Devanagari vowel signs,
    Arabic harakat: ``[^\\W\\d_]`` cut ``लड़का`` into ``लड`` and ``क``), in parts joined by apostrophes or hyphens
    ("don't", "petit-déjeuner", kept whole as matching keeps them); no digits or other symbols."""
    if token.isalpha():
        return True
    return all(part and all(ch.isalpha() or unicodedata.category(ch)[0] == "M" for ch in part)
               for part in _WORD_JOINER.split(token))


def word_runs(text: str, language: str = "en") -> list[list[str]]:
    """The words of a caption as matching sees them, in runs of adjacent words: the tokens of the caption spaced and
    folded for ``language`` (:func:`witbuild.curate.match.prepare_text`) that are words (:func:`is_word`) and that
    an entry can hold as they are: uncased, and unchanged when folded again (wordfreq removes Arabic marks before it
    case-folds, so an Arabic list's folding of ``İstanbul`` still holds the dot that the entry's own folding drops).
    Any other token (punctuation, a number) ends a run, as it ends a match: a bigram of two words of a run matches
    the caption it was counted from."""
    folded = prepare_text(text, case_sensitive=False, language=language)
    runs: list[list[str]] = []
    run: list[str] = []
    for tok, again in zip(folded.split(" "), fold(folded, language).split(" "), strict=True):
        if tok and tok == again and not is_cased(tok) and is_word(tok):
            run.append(tok)
        elif run:
            runs.append(run)
            run = []
    return runs


def tokens(text: str, language: str = "en") -> list[str]:
    """The words of a caption (:func:`word_runs`), folded as matching folds captions."""
    return [w for run in word_runs(text, language) for w in run]


def count_ngrams(texts: Iterable[str], language: str = "en") -> tuple[Counter, Counter]:
    """(unigram counts, bigram counts) over texts, bigrams within :func:`word_runs`; the pure version of
    :func:`spark_pmi_bigrams`."""
    uni: Counter = Counter()
    bi: Counter = Counter()
    for text in texts:
        for run in word_runs(text or "", language):
            uni.update(run)
            bi.update(f"{a} {b}" for a, b in pairwise(run))
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
    df: Any, *, min_count: int, min_pmi: float, limit: int, text_col: str = "text", language: str = "en"
) -> list[tuple[str, float]]:
    """:func:`pmi_bigrams` computed by Spark over a DataFrame's texts (words folded for ``language``): counts
    aggregated with 64-bit sums and joined on the executors; only the selected bigrams reach the driver."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    def grams(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            uni, bi = count_ngrams((t for t in batch.column(0).to_pylist() if t), language)
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
    :func:`spark_pmi_bigrams` (or :func:`pmi_bigrams`) over the corpus, counted for ``cfg.language``."""
    served = wordfreq_language(cfg.language, cfg.wordlist)
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
    wordnet, note = wordnet_source(cfg)
    if wordnet:
        sources["wordnet"] = wordnet
    sources["unigrams"] = wordfreq_unigrams(cfg.language, cfg.min_zipf, cfg.wordlist)
    if cfg.bigrams and bigrams:
        sources["bigrams"] = bigrams
    ql = assemble(sources, cfg)
    ql.notes.update({"wordfreq_language": served, "wordnet": note})
    return ql


def is_english(language: str) -> bool:
    """Whether a list of ``language`` is English (``en``, ``en-GB``): WordNet's lemmas belong in no other."""
    return language.split("-")[0].lower() == "en"


def wordnet_source(cfg: QueryListConfig) -> tuple[list[str], str]:
    """WordNet's lemmas for the list, and what the manifest says of them. Only an English list gets them: in another
    language's list they are English words, and ahead of its own in SOURCE_ORDER, the cap cut that language's
    rarer words for them (147k lemmas: 27,675 German words, 142,703 Russian)."""
    if not cfg.wordnet:
        return [], "not added: querylist.wordnet is off"
    if not is_english(cfg.language):
        return [], f"not added: WordNet's lemmas are English, and querylist.language is {cfg.language}"
    lemmas = wordnet_lemmas()
    if not lemmas:
        log.info("WordNet not found at %s (Debian package wordnet-base); skipped", WORDNET_DIR)
        return [], f"not added: not found at {WORDNET_DIR} (Debian package wordnet-base)"
    return lemmas, "added"


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
        "caption_folding": folding_name(ql.notes.get("wordfreq_language", cfg.language)),
        **ql.notes,
        "config": cfg.model_dump(),
        "provenance": provenance,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out / "entries.txt"
