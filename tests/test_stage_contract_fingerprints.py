"""Fingerprints follow what a build reads and nothing else: the files an input glob matches (added, removed,
resized), never the settings declared execution-only. Pure: configs and temporary files, no Spark."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from witbuild.config import BuildConfig
from witbuild.fingerprint import MISSING, Fingerprint, changes, flatten, input_files, stage_fingerprints
from witbuild.stages.registry import EXECUTION_ONLY, REGISTRY, STAGE_NAMES


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def web(tmp_path: Path) -> Path:
    """A folder of two WARC files and one file the glob does not match."""
    d = tmp_path / "web"
    write(d / "a.warc.gz", b"aaa")
    write(d / "b.warc.gz", b"bbbb")
    write(d / "notes.txt", b"not an input")
    return d


def glob_cfg(web: Path, **kw: object) -> BuildConfig:
    return BuildConfig(**{"output": "o", "input": {"paths": [str(web / "*.warc.gz")]}, **kw})


def changed_stages(a: dict[str, Fingerprint], b: dict[str, Fingerprint]) -> list[str]:
    return [n for n in a if a[n].digest != b[n].digest]


# --------------------------------------------------------------------------------------------
# The input files a glob matches


def test_the_first_stage_records_every_matched_file_with_its_size(web: Path) -> None:
    fps = stage_fingerprints(glob_cfg(web))
    assert fps["extract"].input_files == {str(web / "a.warc.gz"): 3, str(web / "b.warc.gz"): 4}
    assert all(fps[n].input_files is None for n in STAGE_NAMES[1:])  # they chain to it through `input`


def test_a_file_added_to_the_glob_redoes_every_stage_and_says_which(web: Path) -> None:
    before = stage_fingerprints(glob_cfg(web))
    write(web / "c.warc.gz", b"cc")
    after = stage_fingerprints(glob_cfg(web))
    assert changed_stages(before, after) == list(STAGE_NAMES)
    assert changes(before["extract"], after["extract"]) == [f"input files added: {web / 'c.warc.gz'}"]


def test_a_file_removed_from_the_glob_is_named(web: Path) -> None:
    before = stage_fingerprints(glob_cfg(web))
    (web / "b.warc.gz").unlink()
    after = stage_fingerprints(glob_cfg(web))
    assert changed_stages(before, after) == list(STAGE_NAMES)
    assert changes(before["extract"], after["extract"]) == [f"input files removed: {web / 'b.warc.gz'}"]


def test_a_file_rewritten_with_another_size_is_named_with_both_sizes(web: Path) -> None:
    before = stage_fingerprints(glob_cfg(web))
    write(web / "a.warc.gz", b"a" * 1500)
    after = stage_fingerprints(glob_cfg(web))
    assert changes(before["extract"], after["extract"]) == [
        f"input files changed: {web / 'a.warc.gz'} (3 bytes → 1,500 bytes)"]


def test_a_copy_or_a_fresh_checkout_of_the_same_files_is_no_change(web: Path, tmp_path: Path) -> None:
    """Modification times are not part of the fingerprint: a clone or a plain copy sets new ones."""
    before = stage_fingerprints(glob_cfg(web))
    for f in web.iterdir():
        os.utime(f, (1, 1))
    assert stage_fingerprints(glob_cfg(web)) == before
    copy = tmp_path / "copy"
    shutil.copytree(web, copy / "web")  # the same files elsewhere: the names differ, so that is a change
    moved = stage_fingerprints(glob_cfg(copy / "web"))
    assert moved["extract"].digest != before["extract"].digest
    shutil.rmtree(web)
    shutil.copytree(copy / "web", web)  # copied back under the same names, with new times
    assert stage_fingerprints(glob_cfg(web)) == before


def test_many_changes_are_summed_up_not_listed_one_by_one(web: Path) -> None:
    before = stage_fingerprints(glob_cfg(web))
    for i in range(10):
        write(web / f"new-{i:02d}.warc.gz", b"x")
    said = changes(before["extract"], stage_fingerprints(glob_cfg(web))["extract"])
    assert said == [f"input files added: {web / 'new-00.warc.gz'}, {web / 'new-01.warc.gz'}, "
                    f"{web / 'new-02.warc.gz'} and 7 more"]


def test_a_missing_input_is_recorded_not_raised(tmp_path: Path, web: Path) -> None:
    """Fingerprints are computed by tools that read a finished build too; extract reports a missing input."""
    files = input_files([str(tmp_path / "nowhere" / "*.warc.gz"), str(web / "a.warc.gz"), "https://e.org/x.warc"])
    assert files == {str(tmp_path / "nowhere" / "*.warc.gz"): MISSING, str(web / "a.warc.gz"): 3,
                     "https://e.org/x.warc": None}


def test_a_folder_input_is_expanded_like_extract_expands_it(web: Path) -> None:
    files = input_files([str(web)])  # a folder: the archives inside, not notes.txt
    assert sorted(files) == [str(web / "a.warc.gz"), str(web / "b.warc.gz")]


def test_input_files_survive_the_round_trip_through_the_stage_folder(web: Path) -> None:
    fp = stage_fingerprints(glob_cfg(web))["extract"]
    again = Fingerprint.from_dict(fp.to_dict())
    assert again == fp and again.digest == fp.digest == fp.to_dict()["digest"]


def test_a_fingerprint_from_before_input_files_were_recorded_says_so(web: Path) -> None:
    new = stage_fingerprints(glob_cfg(web))["extract"]
    old = Fingerprint.from_dict({k: v for k, v in new.to_dict().items() if k != "input_files"})
    assert old.digest != new.digest  # never taken for the same inputs: nothing says they are
    assert changes(old, new) == ["input files not recorded (made by an older witbuild, which fingerprinted the "
                                 "input paths only)"]


def test_a_crawl_only_build_keeps_its_fingerprints() -> None:
    """No input files: no listing in any fingerprint, so the digests are what they were."""
    cfg = BuildConfig(output="o", input={"paths": [], "seeds": ["https://example.org/"]})
    fps = stage_fingerprints(cfg)
    assert all(fp.input_files is None for fp in fps.values())
    assert "input_files" not in fps["extract"].to_dict()


def test_an_edited_seed_list_redoes_the_crawl(tmp_path: Path) -> None:
    seeds = write(tmp_path / "seeds.txt", b"https://example.org/\n")
    cfg = BuildConfig(output="o", input={"paths": [], "seeds_file": str(seeds)})
    before = stage_fingerprints(cfg)
    write(seeds, b"https://example.org/\nhttps://example.net/\n")
    assert changed_stages(before, stage_fingerprints(cfg)) == list(STAGE_NAMES)


# --------------------------------------------------------------------------------------------
# Execution-only settings are in no fingerprint, even under a section a stage claims

#: Another value for each execution-only setting (a test fails when a new one has none here).
OTHER_VALUE = {
    "output": {"output": "elsewhere"},
    "spark": {"spark": {"master": "local[1]", "app_name": "x", "conf": {"spark.ui.enabled": "false"}}},
    "download.thread_count": {"download": {"thread_count": 3}},
    "download.subjob_size": {"download": {"subjob_size": 7}},
    "crawl.warc_dir": {"crawl": {"warc_dir": "/somewhere/else"}},
    "crawl.delay_seconds": {"crawl": {"delay_seconds": 0.001}},
    "crawl.contact": {"crawl": {"contact": "mailto:crawl@example.org"}},
}


def seeded(**kw: object) -> BuildConfig:
    """Paths and seeds: every section is claimed (the crawl's only when the build crawls)."""
    return BuildConfig(**{"output": "o", "input": {"paths": ["web.warc.gz"], "seeds": ["https://example.org/"]},
                          **kw})


def test_every_execution_only_setting_has_a_test_value() -> None:
    assert sorted(OTHER_VALUE) == sorted(EXECUTION_ONLY)


@pytest.mark.parametrize("key", EXECUTION_ONLY)
def test_an_execution_only_setting_changes_no_fingerprint(key: str) -> None:
    base, other = seeded(), seeded(**OTHER_VALUE[key])
    assert any(k == key or k.startswith(key + ".")
               for k, v in flatten(other.model_dump(mode="json")).items()
               if flatten(base.model_dump(mode="json")).get(k) != v), "the test value must differ"
    assert stage_fingerprints(other) == stage_fingerprints(base)


def test_no_fingerprint_holds_an_execution_only_key() -> None:
    for st, fp in zip(REGISTRY, stage_fingerprints(seeded()).values(), strict=True):
        held = [k for k in fp.config if any(k == e or k.startswith(e + ".") for e in EXECUTION_ONLY)]
        assert held == [], f"{st.name} fingerprints {held}"


def test_a_killed_download_resumes_with_another_thread_count(tmp_path: Path) -> None:
    from witbuild import layout
    from witbuild.pipeline import resumes, save_fingerprint
    from witbuild.stages.registry import stage

    out = str(tmp_path)
    save_fingerprint(layout.stage_resume_fingerprint(out, "download"), stage_fingerprints(seeded())["download"])
    fewer_threads = stage_fingerprints(seeded(download={"thread_count": 2, "subjob_size": 10}))["download"]
    assert resumes(stage("download"), out, fewer_threads)
