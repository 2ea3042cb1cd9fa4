"""The one ordered list of a build's stages: what each reads, which config it depends on, what it writes.

Config validation, the pipeline, the job's CLI options, fingerprints and ``witbuild stats`` all read this list.
Adding a stage is one entry here plus its module under ``witbuild/stages/``; a new config field is claimed by
the stages whose output it changes (``tests/test_fingerprints.py`` fails for a field no stage claims and that
is not listed in :data:`EXECUTION_ONLY`), so no setting can change a build without redoing what it affects.

This module imports no stage code (the functions are named, not imported), so anything may import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from witbuild.config import BuildConfig

#: Settings that change how a build runs, never what it writes: no fingerprint holds them, even where a stage claims
#: their whole section (witbuild.fingerprint.config_slice leaves them out), so changing them neither redoes a stage
#: nor throws away a killed stage's resumable work.
EXECUTION_ONLY = ("output", "spark", "download.thread_count", "download.subjob_size", "crawl.warc_dir",
                  "crawl.delay_seconds", "crawl.contact")  # the crawl's pace and how site owners reach us
#: Paths whose files enter finalize's fingerprint by content (fingerprint._finalize_external), not by name: a copy
#: of the checkpoint elsewhere, or ``RUN`` for ``RUN/checkpoints/latest``, redoes no scoring.
BY_CONTENT = ("clip_score.checkpoint", "clip_score.model_json", "clip_score.bpe_vocab")
#: The query list's own inputs (witbuild/curate/querylist_artifact.py); match depends on its content.
QUERYLIST_CONFIG = ("querylist", "match.entries_path")


@dataclass(frozen=True)
class Stage:
    """One stage of a build.

    ``config`` holds dotted config keys or sections whose values change the stage's output; ``crawl_config``
    is added when the build crawls seeds (the crawl is then part of extract). ``resumable``: the stage's
    temporary folder survives a failed attempt (it resumes its own work). ``rule``: raised when the code makes
    another output from the same input and config, so that a stage finished under the old rule is redone (rule 1
    is in no fingerprint: stages finished before rules existed keep theirs).
    """

    name: str
    reads: str | None
    function: str  # "module:function", imported when the stage runs
    config: tuple[str, ...]
    schema: str | None = None  # schemas/<schema>.json of the stage's Parquet output
    crawl_config: tuple[str, ...] = ()
    resumable: bool = False
    rule: int = 1
    imports: tuple[str, ...] = ()  # slow libraries its run imports, imported ahead while earlier stages run
    warm_ups: tuple[str, ...] = ()  # "module:function"s called ahead, after the imports (numba's first compile)

    @property
    def module(self) -> str:
        return self.function.split(":")[0]

    def load(self) -> Callable[[Any], Any]:
        return getattr(importlib.import_module(self.module), self.function.split(":")[1])

    def config_keys(self, cfg: BuildConfig) -> tuple[str, ...]:
        crawls = bool(cfg.input.seeds or cfg.input.seeds_file)
        return self.config + (self.crawl_config if crawls else ())


#: The crawl settings that change what a crawl of a host fetches: in the crawl WARC's name and in extract's
#: fingerprint. Not among them: where the WARCs go, the contact, and delay_seconds (how fast, not what); the
#: user agent counts by its robots.txt token (``CrawlConfig.robots_token``), not its version.
CRAWL_CONTENT_SETTINGS = ("max_depth", "max_pages_per_host", "connect_timeout", "read_timeout", "total_timeout",
                          "max_page_bytes", "max_redirects", "respect_robots", "user_agent")

REGISTRY: tuple[Stage, ...] = (
    # rule 2: an <img> inside a <picture> that names no usable URL itself takes its picture's <source>
    # rule 3: srcset candidates with invalid descriptors are dropped, as the HTML standard and browsers drop them;
    # image URLs are resolved by the WHATWG URL standard, their queries written in the page's encoding
    # rule 4: a page that names no encoding is decoded as detected through the WHATWG label table (EUC-KR and
    # x-mac-cyrillic were UTF-8), as UTF-8 when its bytes are, else windows-1252; KOI8-U letters make KOI8-U
    # rule 5: the depth check follows the ends the parser implies (a page of 5,000 "<li><a href>" is 6 levels deep,
    # not 5,000, and is read); a WAT's lower-case content-language header gives the page language
    Stage("extract", None, "witbuild.stages.extract:run_extract", ("input", "extract"), "candidates",
          crawl_config=(*(f"crawl.{k}" for k in CRAWL_CONTENT_SETTINGS), "network"), rule=5),
    # rule 2: a bare domain is a URL only with its TLD in lower case ("ASP.NET" is a word); "90s" is a decade and
    # "ISO 9001" a standard, not camera settings
    # rule 3: Arabic's tatweel (a stretched word) is no repeated character
    Stage("filter", "extract", "witbuild.stages.filter:run_filter", ("filter", "langid"), "filtered", rule=3),
    # rule 2: entries without capitals and captions compared in wordfreq's folded form (its preprocess_text for the
    # list's language; English: str.casefold, not str.lower: "Straße" matches "strasse")
    Stage("match", "filter", "witbuild.stages.match:run_match", ("match",), "matched", rule=2),
    # rule 2: c_e and the draws over distinct (normalised URL, text) pairs, not rows
    Stage("balance", "match", "witbuild.stages.balance:run_balance", ("balance",), "balanced", rule=2),
    Stage("dedup", "balance", "witbuild.stages.dedup:run_dedup", ("dedup.one_text_per_image", "dedup.shuffle_seed",
                                                                  "dedup.exact_image"), "balanced"),
    # rule 2: X-Robots-Tag read rule by rule (``noai, unavailable_after: …``, ``img2dataset: noai``, ``none``); a
    # redirect's target obeys its host's robots.txt; an image whose decoding would take more than
    # download.max_image_memory is refused
    Stage("download", "dedup", "witbuild.stages.download:run_download",
          ("download", "network", "crawl.read_timeout", "crawl.total_timeout", "crawl.max_page_bytes"),
          resumable=True, rule=2, imports=("img2dataset",)),  # ~2 s: webdataset, torch, albumentations
    # rule 2: CLIP scores from open_clip's token ids (Python's lowercase, a final ς; control-token names in a
    # caption spelt out as text) and open_clip's evaluation view (images decoded in full, resized, then cropped)
    # rule 3: SemDeDup among the samples the score filter keeps (a removed duplicate's kept sample is in the
    # dataset); scores in float32 on a GPU too (bf16 autocast moved 16 of 679 samples across a keep_fraction cut);
    # decontamination decided first, by the near-duplicate rule (pHash and colour check), each evaluation image
    # hashed as the download stores it; near_duplicates.parquet v2 (duplicate_of_in_dataset)
    Stage("finalize", "download", "witbuild.stages.finalize:run_finalize", ("dedup", "clip_score"), "index",
          rule=3, warm_ups=("witbuild.dedup.colour_bound:warm_up",)),  # ~3 s in a fresh checkout, then cached
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
_BY_NAME = {s.name: s for s in REGISTRY}


def stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}") from None


def later_stages(name: str, until: str | None = None) -> tuple[str, ...]:
    """``name`` and every stage after it, up to ``until`` (inclusive)."""
    last = STAGE_NAMES.index(until) if until else len(STAGE_NAMES) - 1
    return STAGE_NAMES[STAGE_NAMES.index(name): last + 1]
