"""Every path and file name of a build folder, in one place.

A build folder looks like this (``<output>`` is ``BuildConfig.output``, local or any fsspec URL)::

    <output>/
      build_config.yaml            the resolved config of the last run (CONFIG_FILE)
      build_report.json            every stage's rows in/out and drops (REPORT_FILE), rewritten as each stage ends
      _build.lock                  locked by the build writing the folder: a second one is refused (LOCK_FILE)
      querylist/                   entries.txt + manifest.json: what match matched against (QUERYLIST_DIR)
      stages/<name>/               one finished stage: Parquet (or img2dataset shards), _SUCCESS,
                                   _counts.json (COUNTS_FILE), _fingerprint.json (FINGERPRINT_FILE),
                                   _files.json: every file it wrote, with its size (FILES_FILE)
      stages/_tmp/<name>/          a stage being written; renamed to stages/<name>/ when it has finished
      stages/balance/_entry_counts.parquet   per-entry counts before/after balancing (ENTRY_COUNTS_FILE)
      stages/finalize/             the dataset: {shard}.tar, index.parquet/ (INDEX_DIR), sizes.json (SIZES_FILE),
                                   near_duplicates.parquet/: removed near duplicates and what they duplicate
                                   (NEAR_DUPLICATES_DIR), semantic_duplicates.parquet/: samples semantic dedup
                                   removed (SEMANTIC_DUPLICATES_DIR; clip_score.semdedup_eps)

Code that reads or writes any of these names imports it from here, so that a change of layout is one edit.
"""

from __future__ import annotations

CONFIG_FILE = "build_config.yaml"
REPORT_FILE = "build_report.json"
LOCK_FILE = "_build.lock"
STAGES_DIR = "stages"
TMP_DIR = "_tmp"
QUERYLIST_DIR = "querylist"
QUERYLIST_ENTRIES = "entries.txt"
QUERYLIST_MANIFEST = "manifest.json"

SUCCESS_FILE = "_SUCCESS"
COUNTS_FILE = "_counts.json"
FINGERPRINT_FILE = "_fingerprint.json"
FILES_FILE = "_files.json"
ENTRY_COUNTS_FILE = "_entry_counts.parquet"

#: The files img2dataset writes for one downloaded shard: every row's metadata, the samples, and the stats it
#: writes last (a shard with its stats file is finished). The download stage and finalize both list shards by them.
SHARD_META_SUFFIX, SHARD_TAR_SUFFIX, SHARD_STATS_SUFFIX = ".parquet", ".tar", "_stats.json"

FINALIZE_STAGE = "finalize"
INDEX_DIR = "index.parquet"
SIZES_FILE = "sizes.json"
NEAR_DUPLICATES_DIR = "near_duplicates.parquet"
SEMANTIC_DUPLICATES_DIR = "semantic_duplicates.parquet"

#: Extensions an image member of a WebDataset sample may have (img2dataset writes jpg, png or webp; a user's
#: own shards may hold the others). Finalize and stats both read images by these.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif")


def local_path(name: str) -> str | None:
    """The path on this machine a name gives, as fsspec and Spark read it: a plain path as it is, ``file:/x`` and
    ``file:///x`` as ``/x``; None for another filesystem's URL (``s3://…``). Decided from the string alone: no
    filesystem package is imported or asked, and ``::`` in a file name is part of the name (fsspec would read it
    as a chain of URLs)."""
    if name.startswith("file:"):
        rest = name[len("file:"):]
        return "/" + rest.lstrip("/") if rest.startswith("/") else rest
    return None if "://" in name else name


def _join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def stage_dir(output: str, name: str) -> str:
    """Where a finished stage lives."""
    return _join(output, STAGES_DIR, name)


def stage_tmp_dir(output: str, name: str) -> str:
    """Where a stage writes until it has finished."""
    return _join(output, STAGES_DIR, TMP_DIR, name)


def stage_counts_dir(output: str, name: str) -> str:
    """Where a running stage's Spark tasks leave their counters."""
    return _join(output, STAGES_DIR, TMP_DIR, f"{name}.counts")


def stage_resume_fingerprint(output: str, name: str) -> str:
    """The fingerprint of a resumable stage's unfinished work, beside (not in) its temporary folder: the folder
    belongs to the tool that fills it (img2dataset reads every ``*.json`` there as a finished shard)."""
    return _join(output, STAGES_DIR, TMP_DIR, f"{name}.{FINGERPRINT_FILE.lstrip('_')}")


def querylist_dir(output: str) -> str:
    return _join(output, QUERYLIST_DIR)


def config_path(output: str) -> str:
    return _join(output, CONFIG_FILE)


def report_path(output: str) -> str:
    return _join(output, REPORT_FILE)


def lock_path(output: str) -> str:
    """The file a running build holds locked (the pid of its holder inside)."""
    return _join(output, LOCK_FILE)


def dataset_dir(output: str) -> str:
    """The finished dataset: the finalize stage's folder."""
    return stage_dir(output, FINALIZE_STAGE)

# Drop reasons that stats reads by name (the funnel's ``dropped`` keys). Rows the download stage drops before
# img2dataset sees them are in the funnel only, not in img2dataset's shard metadata.
BLOCKED_ADDRESS = "blocked_address"
ROBOTS_DISALLOWED = "robots_disallowed"
ROBOTS_UNREACHABLE = "robots_unreachable"
OPTED_OUT = "opted_out"
PRE_DOWNLOAD_DROPS = (BLOCKED_ADDRESS, ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE)
NOT_WRITTEN = "not_written"  # a row of a finished shard that img2dataset did not write into its metadata
#: The download stage's drops that no shard's metadata holds: only its counts tell of them.
DROPS_OUTSIDE_SHARD_METADATA = (*PRE_DOWNLOAD_DROPS, NOT_WRITTEN)
