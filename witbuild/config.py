"""The one configuration model of a build: loaded from YAML, overridden from the command line,
validated up front, and saved next to the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from witbuild import __version__
from witbuild.curate.balance import BalanceConfig
from witbuild.curate.clip_score import ClipScoreConfig
from witbuild.curate.match import MatchConfig
from witbuild.curate.querylist import QueryListConfig
from witbuild.dedup.urls import DedupConfig
from witbuild.download import DownloadConfig
from witbuild.network import NetworkConfig
from witbuild.sources.urls import IMAGE_URL_ATTRS
from witbuild.stages.registry import STAGE_NAMES as STAGES
from witbuild.text.filters import FilterConfig
from witbuild.text.langid import LangIdConfig
from witbuild.yaml_io import ConfigError, apply_sets, read_raw_config

#: (section, key, new place, why) of settings that moved: an old config gets an error naming the new key.
MOVED_KEYS = (
    ("match", "max_entries", "querylist.max_entries", "one setting for built lists and user files"),
    ("match", "max_entry_chars", "querylist.max_entry_chars", "one setting for built lists and user files"),
    ("extract", "max_text_chars", "filter.max_chars", "one truncation setting, applied once"),
    ("crawl", "allow_addresses", "network.allow_addresses", "one policy for the crawl and the download stage"),
)

__all__ = ["STAGES", "BuildConfig", "apply_sets", "load_config", "read_raw_config", "split_inputs"]

WARC_SUFFIXES = (".warc", ".warc.gz", ".wat", ".wat.gz", ".warc.wat.gz", ".arc.gz")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    paths: list[str] = Field(
        default_factory=list,
        description="WARC (.warc, .warc.gz) and WAT (.warc.wat.gz) files or globs; local paths or any fsspec URL.",
    )
    seeds: list[str] = Field(default_factory=list, description="Seed page URLs for the live crawl.")
    seeds_file: str | None = Field(None, description="A text file with one seed URL per line.")


class ExtractConfig(_Section):
    url_attrs: list[str] = Field(
        default_factory=lambda: list(IMAGE_URL_ATTRS),
        description="<img> attributes tried in order; the first that gives a usable http(s) URL wins "
        "(for srcset attributes, the largest candidate). Lazy loaders' attributes come before src and srcset, "
        "which hold the loader's placeholder until a script swaps them.",
    )
    text_attrs: list[str] = Field(default_factory=lambda: ["alt", "title"], description="<img> attributes read as "
                                  "the caption, in order; the first that is not empty wins.")
    keep_empty_text: bool = Field(False, description="Keep images without alt/title text (text is '').")
    max_page_bytes: int = Field(5_000_000, ge=1024, description="HTML beyond this many bytes is not parsed.")
    batch_rows: int = Field(8192, ge=1, description="Rows per Arrow batch handed back to Spark.")

    @field_validator("url_attrs")
    @classmethod
    def _known_url_attrs(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in IMAGE_URL_ATTRS]
        if bad or not v:
            raise ValueError(f"url_attrs must be a non-empty subset of {sorted(IMAGE_URL_ATTRS)}; got {v}")
        return v


class CrawlConfig(_Section):
    user_agent: str = Field("witbuild", description="Product token of the crawler's User-Agent (witbuild's own "
                            "is sent with witbuild's version: not a setting, so a new release redoes no crawl).")
    contact: str = Field(
        "https://github.com/witbuild/witbuild",
        description="How site owners reach whoever runs the crawl (a URL or mailto:); sent in the User-Agent.",
    )
    max_depth: int = Field(2, ge=0, description="Link hops from a seed; 0 fetches the seeds only.")
    max_pages_per_host: int = Field(1000, ge=1, description="Pages fetched from one host at most (robots.txt "
                                    "not counted); the rest of its links are page_budget_reached.")
    delay_seconds: float = Field(
        1.0, ge=0, description="Minimum gap between requests to one host (robots Crawl-delay wins if larger)."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection to a host.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds to wait for each read of a response.")
    total_timeout: float = Field(30.0, gt=0, description="Wall-clock cap on one response, against slow drips.")
    max_page_bytes: int = Field(5_000_000, ge=1024, description="Bodies are cut at this size (WARC-Truncated: length).")
    max_redirects: int = Field(5, ge=0, description="Redirects followed from one URL (each hop address-checked).")
    respect_robots: bool = Field(True, description="Fetch each host's robots.txt first and honour its rules for "
                                 "the crawler's product token (and its Crawl-delay).")
    warc_dir: str | None = Field(None, description="Where the crawl's WARC files go; default <output>/crawl.")

    @property
    def user_agent_header(self) -> str:
        product = f"witbuild/{__version__}" if self.user_agent == "witbuild" else self.user_agent
        return f"{product} (+{self.contact})"

    @property
    def robots_token(self) -> str:
        """The product token robots.txt groups are matched against: the User-Agent without its version."""
        return self.user_agent.split("/", 1)[0].strip() or "witbuild"


class SparkConfig(_Section):
    master: str | None = Field(None, description="Spark master URL; None keeps spark-submit's --master (or local[*]).")
    app_name: str = Field("witbuild", description="The Spark application's name, as its UI and logs show it.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark settings, e.g. "
                                 "--set spark.conf.spark.sql.shuffle.partitions=8.")

    @field_validator("conf", mode="before")
    @classmethod
    def _dotted_keys(cls, v: Any) -> Any:
        """Spark's keys hold dots, which ``--set`` reads as sections: ``{spark: {sql: {...}}}`` is joined back into
        ``spark.sql....``; numbers and booleans become the strings Spark takes (YAML's ``true``: ``"true"``)."""
        if not isinstance(v, dict):
            return v
        flat: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, value in d.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(value, dict):
                    walk(key, value)
                elif isinstance(value, bool):
                    flat[key] = str(value).lower()
                elif isinstance(value, int | float):
                    flat[key] = str(value)
                else:
                    flat[key] = value
        walk("", v)
        return flat


class BuildConfig(_Section):
    output: str = Field(..., description="Build output folder (local path or fsspec URL).")
    input: InputConfig = Field(default_factory=InputConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    network: NetworkConfig = Field(
        default_factory=NetworkConfig,
        description="Addresses the crawl and the download stage may reach besides public ones (witbuild/network.py).",
    )
    filter: FilterConfig = Field(default_factory=FilterConfig)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    querylist: QueryListConfig = Field(
        default_factory=QueryListConfig,
        description="How the query list is built when match.entries_path is not given "
        "(wordfreq unigrams + PMI bigrams over the filtered pool + 0..99), written to <output>/querylist/.",
    )
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    clip_score: ClipScoreConfig = Field(
        default_factory=ClipScoreConfig,
        description="Score every final sample with a CLIP checkpoint and keep the best-aligned ones (finalize).",
    )
    spark: SparkConfig = Field(default_factory=SparkConfig)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """A key that moved gets an error naming its new place, not a bare 'extra inputs are not permitted'."""
        if not isinstance(data, dict):
            return data
        for section, key, new, why in MOVED_KEYS:
            old = data.get(section)
            if isinstance(old, dict) and key in old:
                raise ValueError(f"{section}.{key} moved to {new} ({why}): write {new} instead "
                                 f"(or --set {new}=...)")
        return data

    @model_validator(mode="after")
    def _has_input(self) -> BuildConfig:
        if not (self.input.paths or self.input.seeds or self.input.seeds_file):
            raise ValueError("no input: give input.paths (WARC/WAT files or globs) and/or input.seeds")
        return self

    def dump_yaml(self) -> str:
        return yaml.safe_dump({"witbuild_version": __version__, **self.model_dump(mode="json")}, sort_keys=False)


def split_inputs(values: list[str]) -> tuple[list[str], list[str]]:
    """``--input`` values as (files or globs, seed URLs): an http(s) URL that does not name a
    WARC/WAT file is a seed page."""
    paths, seeds = [], []
    for v in values:
        lower = v.lower().split("?", 1)[0]
        if lower.startswith(("http://", "https://")) and not lower.endswith(WARC_SUFFIXES):
            seeds.append(v)
        else:
            paths.append(v)
    return paths, seeds


def load_config(
    path: str | Path | None = None,
    *,
    inputs: list[str] | None = None,
    output: str | None = None,
    sets: list[str] | None = None,
) -> BuildConfig:
    """Config from a YAML file (optional) with command-line overrides applied, validated."""
    raw = read_raw_config(path, sets)
    for flag, key, value in (("--input", "input", inputs), ("--output", "output", output)):
        if value and any(s.split("=", 1)[0].strip().split(".")[0] == key for s in sets or []):
            raise ConfigError(f"{flag} replaces the config's {key}: give {flag} or --set {key}..., not both")
    if inputs:  # the whole input section: a seeds_file left from the config would crawl besides the files given
        paths, seeds = split_inputs(inputs)
        raw["input"] = {"paths": paths, "seeds": seeds}
    if output is not None:
        raw["output"] = output
    return BuildConfig.model_validate(raw)
