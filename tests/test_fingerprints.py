"""A re-run never reuses stale work: stage fingerprints, the query list as its own artifact, the registry's
claim on every config field."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from witbuild.config import BuildConfig, load_config
from witbuild.demo.web import generate_pages, write_warc
from witbuild.fingerprint import changes, flatten, stage_fingerprints
from witbuild.pipeline import run_build
from witbuild.stages.registry import EXECUTION_ONLY, QUERYLIST_CONFIG, REGISTRY

# --------------------------------------------------------------------------------------------
# Pure: every config field changes some stage's fingerprint, unless it only changes how a build runs


def test_every_config_field_is_claimed_by_a_stage() -> None:
    cfg = BuildConfig(output="o", input={"paths": [], "seeds": ["https://example.org/"]})
    claimed = set(EXECUTION_ONLY) | set(QUERYLIST_CONFIG)
    for st in REGISTRY:
        claimed |= set(st.config_keys(cfg))
    leaves = flatten(cfg.model_dump(mode="json"))
    unclaimed = [k for k in leaves if not any(k == c or k.startswith(c + ".") for c in claimed)]
    assert unclaimed == [], f"config fields no stage fingerprint holds: {unclaimed}"


def test_how_fast_a_crawl_runs_and_who_runs_it_redo_nothing() -> None:
    """The crawl's pace, its contact and witbuild's version in the User-Agent change nothing fetched (the crawl
    WARC's name leaves them out too); the robots.txt token and the page budget do."""
    crawl = {"paths": [], "seeds": ["https://example.org/"]}
    base = stage_fingerprints(BuildConfig(output="o", input=crawl))
    same = stage_fingerprints(BuildConfig(output="o", input=crawl, crawl={"delay_seconds": 0.001,
                                                                          "contact": "mailto:x@example.org"}))
    assert same == base
    assert "witbuild/" in BuildConfig(output="o", input=crawl).crawl.user_agent_header  # the version is still sent
    for change in ({"user_agent": "otherbot"}, {"max_pages_per_host": 7}):
        other = stage_fingerprints(BuildConfig(output="o", input=crawl, crawl=change))
        assert other["extract"].digest != base["extract"].digest, change


def test_one_input_file_spelt_several_ways_is_one_fingerprint(tmp_path) -> None:
    """``web/./a``, ``web//a`` and a folder named with or without its slash are the files they name: resuming with
    another spelling redoes nothing (it redid every stage, the download included)."""
    web = tmp_path / "web"
    web.mkdir()
    (web / "a.warc.gz").write_bytes(b"aaa")
    spellings = [[str(web / "a.warc.gz")], [f"{web}/./a.warc.gz"], [f"{web}//a.warc.gz"]]
    digests = {stage_fingerprints(BuildConfig(output="o", input={"paths": p}))["finalize"].digest for p in spellings}
    assert len(digests) == 1
    folders = [[str(web)], [f"{web}/"], [f"{web}/."]]
    digests = {stage_fingerprints(BuildConfig(output="o", input={"paths": p}))["finalize"].digest for p in folders}
    assert len(digests) == 1


def test_a_relative_folder_input_keeps_its_files_relative(tmp_path, monkeypatch) -> None:
    """A folder's files are named under the folder as given, as a glob's are: the same relative input in a clone
    elsewhere is the same fingerprint (a folder gave absolute names, so every clone redid every stage)."""
    from witbuild.fingerprint import input_files

    for root in (tmp_path / "one", tmp_path / "two"):
        (root / "web").mkdir(parents=True)
        (root / "web" / "a.warc.gz").write_bytes(b"aaa")
    monkeypatch.chdir(tmp_path / "one")
    here = input_files(["web"])
    assert here == {"web/a.warc.gz": 3} == input_files(["web/*.warc.gz"])
    monkeypatch.chdir(tmp_path / "two")
    assert input_files(["web/"]) == here


def test_set_like_lists_in_any_order_are_one_fingerprint() -> None:
    a = stage_fingerprints(cfg_of(network={"allow_addresses": ["127.0.0.1", "10.1.0.0/16"]},
                                  langid={"allowed": ["en"]}))
    b = stage_fingerprints(cfg_of(network={"allow_addresses": ["10.1.0.0/16", "127.0.0.1"]},
                                  langid={"allowed": ["en", "en"]}))
    assert a == b


def test_the_language_model_counts_by_its_bytes_not_its_path(tmp_path: Path) -> None:
    """The default model named by its own path, or a copy of it, redoes nothing (it redid filter and every stage
    after it, the download included); another model redoes filter."""
    from witbuild.text.langid import default_model_path

    model = default_model_path()
    copy = tmp_path / "copy.ftz"
    copy.write_bytes(model.read_bytes())
    base = stage_fingerprints(cfg_of())
    assert stage_fingerprints(cfg_of(langid={"model_path": str(model)})) == base
    assert stage_fingerprints(cfg_of(langid={"model_path": str(copy)})) == base
    copy.write_bytes(model.read_bytes() + b"\0")
    other = stage_fingerprints(cfg_of(langid={"model_path": str(copy)}))
    assert other["filter"].digest != base["filter"].digest
    assert changes(base["filter"], other["filter"]) == ["langid_model changed"]


def test_scoring_settings_redo_nothing_while_scoring_is_off(tmp_path: Path) -> None:
    """With no checkpoint, the batch size and device of scoring change nothing; with one, they are the scoring's
    (a default build's digests are those it had before: the settings are spelt at their defaults)."""
    base = stage_fingerprints(cfg_of())
    assert base["finalize"].config["clip_score.batch_size"] == 64
    idle = {"batch_size": 8, "device": "cpu", "semdedup_clusters": 3, "semdedup_seed": 5}
    assert stage_fingerprints(cfg_of(clip_score=idle)) == base
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    scoring = stage_fingerprints(cfg_of(clip_score={"checkpoint": str(ckpt), "model_json": "m", "bpe_vocab": "v"}))
    batched = stage_fingerprints(cfg_of(clip_score={"checkpoint": str(ckpt), "model_json": "m", "bpe_vocab": "v",
                                                    "batch_size": 8}))
    assert changes(scoring["finalize"], batched["finalize"]) == ["clip_score.batch_size 64 → 8"]


def cfg_of(**kw: object) -> BuildConfig:
    return BuildConfig(**{"output": "o", "input": {"paths": ["web.warc.gz"]}, **kw})


def test_fingerprints_chain_and_name_what_changed() -> None:
    a = stage_fingerprints(cfg_of())
    b = stage_fingerprints(cfg_of(filter={"min_words": 5}))
    assert [n for n in a if a[n].digest != b[n].digest] == ["filter", "match", "balance", "dedup", "download",
                                                             "finalize"]
    assert changes(a["filter"], b["filter"]) == [f"filter.min_words {a['filter'].config['filter.min_words']} → 5"]
    assert changes(a["match"], b["match"]) == ["querylist changed"]  # its list is built over the new pool
    assert stage_fingerprints(cfg_of(output="other", spark={"master": "local[1]"})) == a  # how, not what


def test_a_new_dedup_setting_redoes_finalize_only() -> None:
    a = stage_fingerprints(cfg_of())
    b = stage_fingerprints(cfg_of(dedup={"phash_threshold": a["finalize"].config["dedup.phash_threshold"] + 1}))
    assert [n for n in a if a[n].digest != b[n].digest] == ["finalize"]


def test_a_query_list_built_here_follows_wordnet_and_wordfreq(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """The same config builds another list where WordNet is installed, or wordfreq's lists are another version:
    match is redone, and says the query list changed, rather than matching against a list of another machine."""
    import importlib.metadata

    from witbuild.curate import querylist

    monkeypatch.setattr(querylist, "WORDNET_DIR", tmp_path)  # no WordNet here
    base = stage_fingerprints(cfg_of())
    (tmp_path / "index.noun").write_text("cat n 1 1 @ 1 0 02121620\n")
    with_wordnet = stage_fingerprints(cfg_of())
    assert [n for n in base if base[n].digest != with_wordnet[n].digest] == ["match", "balance", "dedup",
                                                                              "download", "finalize"]
    assert changes(base["match"], with_wordnet["match"]) == ["querylist changed"]
    entries = tmp_path / "entries.txt"
    entries.write_text("cat\n")
    unread = [cfg_of(querylist={"wordnet": False}), cfg_of(match={"entries_path": str(entries)})]
    before = [stage_fingerprints(c)["match"] for c in unread]
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0" if name == "wordfreq" else real(name))
    assert stage_fingerprints(cfg_of())["match"].digest != with_wordnet["match"].digest
    (tmp_path / "index.noun").unlink()
    assert stage_fingerprints(unread[0])["match"] != before[0]  # wordfreq's lists are still read
    assert stage_fingerprints(unread[1])["match"] == before[1]  # a user's list: neither is read
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert stage_fingerprints(unread[0])["match"] == before[0]  # WordNet not asked for: its files are not read


def test_a_raised_rule_redoes_its_stage_and_those_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage whose code now makes another output from the same input is redone, and says why; rule 1 is in no
    fingerprint, so the stages whose rule never moved keep the digests of builds made before rules existed."""
    import dataclasses

    from witbuild.fingerprint import Fingerprint
    from witbuild.stages import registry

    a = stage_fingerprints(cfg_of())
    assert registry.stage("balance").rule == 2 and a["balance"].external == {"rule": "2"}
    assert all("rule" not in fp.external for name, fp in a.items() if registry.stage(name).rule == 1)
    raised = tuple(dataclasses.replace(st, rule=st.rule + 1) if st.name == "dedup" else st for st in REGISTRY)
    monkeypatch.setattr("witbuild.fingerprint.REGISTRY", raised)
    b = stage_fingerprints(cfg_of())
    assert [n for n in a if a[n].digest != b[n].digest] == ["dedup", "download", "finalize"]
    assert changes(a["dedup"], b["dedup"]) == ["its rule changed (1 → 2)"]
    before_rules = Fingerprint(a["balance"].config, a["balance"].input)  # a balance stage made under rule 1
    assert changes(before_rules, a["balance"]) == ["its rule changed (1 → 2)"]


# --------------------------------------------------------------------------------------------
# Real builds (Spark local[2], in this process)

QUERIES_A = ["cat", "dog", "house", "red", "old", "bridge", "lake", "photo", "garden", "boat"]
QUERIES_B = ["blue", "green", "tree", "car"]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("web")
    write_warc(list(generate_pages(200, seed=5)), d / "web.warc.gz")
    (d / "a.txt").write_text("\n".join(QUERIES_A) + "\n", encoding="utf-8")
    (d / "b.txt").write_text("\n".join(QUERIES_B) + "\n", encoding="utf-8")
    return d


def config(web: Path, out: Path, *sets: str) -> BuildConfig:
    return load_config(inputs=[str(web / "web.warc.gz")], output=str(out), sets=["balance.t=40", *sets])


def skipped(results: list) -> dict[str, bool]:
    return {r.name: r.skipped for r in results}


def matched_entries(out: Path) -> set[str]:
    entries = (out / "querylist" / "entries.txt").read_text(encoding="utf-8").splitlines()
    ids = {i for row in pq.read_table(out / "stages" / "match", columns=["matched"]).to_pylist()
           for i in row["matched"]}
    return {entries[i] for i in ids}


def digest_tree(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.parquet")):
        h.update(pq.read_table(p).to_string().encode())  # the data, not the writer's file names
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.spark
def test_query_list_follows_the_config(spark, web: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    run_build(spark, config(web, out, f"match.entries_path={web / 'a.txt'}"), until_stage="match")
    assert matched_entries(out) <= set(QUERIES_A) and matched_entries(out)
    # --from-stage with another entries file: the list is rebuilt from b.txt
    run_build(spark, config(web, out, f"match.entries_path={web / 'b.txt'}"), until_stage="match",
              from_stage="match")
    assert matched_entries(out) <= set(QUERIES_B) and matched_entries(out)
    # the same path, new content: match is redone (extract and filter are not), and the log says why
    (web / "b.txt").write_text("\n".join(QUERIES_A[:3]) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(spark, config(web, out, f"match.entries_path={web / 'b.txt'}"), until_stage="match")
    assert skipped(results) == {"extract": True, "filter": True, "match": False}
    assert matched_entries(out) <= set(QUERIES_A[:3])
    assert "querylist: entries_file changed: redoing match" in caplog.text
    (web / "b.txt").write_text("\n".join(QUERIES_B) + "\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.spark
def test_changed_filter_redoes_exactly_the_affected_stages(spark, web: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    sets = (f"match.entries_path={web / 'a.txt'}",)
    first = run_build(spark, config(web, out, *sets), until_stage="balance")
    assert not any(skipped(first).values())
    before = {name: digest_tree(out / "stages" / name) for name in ("extract", "filter", "match", "balance")}
    # an unchanged re-run skips everything and leaves the same bytes
    again = run_build(spark, config(web, out, *sets), until_stage="balance")
    assert all(skipped(again).values())
    assert {name: digest_tree(out / "stages" / name) for name in before} == before
    # a stage left half-done (a killed build), then a changed filter: extract kept, the rest redone
    (out / "stages" / "_tmp" / "dedup").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="witbuild.pipeline"):
        results = run_build(spark, config(web, out, *sets, "filter.min_words=4"), until_stage="dedup")
    assert skipped(results) == {"extract": True, "filter": False, "match": False, "balance": False,
                                "dedup": False}
    assert "filter.min_words 3 → 4: redoing filter, match, balance, dedup" in caplog.text
    kept = pq.read_table(out / "stages" / "filter", columns=["text"]).column("text").to_pylist()
    assert kept and all(len(t.split()) >= 4 for t in kept)
    assert digest_tree(out / "stages" / "extract") == before["extract"]
    saved = json.loads((out / "stages" / "filter" / "_fingerprint.json").read_text())
    assert saved["config"]["filter.min_words"] == 4
    # a changed balance setting, later: only balance and what follows
    results = run_build(spark, config(web, out, *sets, "filter.min_words=4", "balance.seed=7"), until_stage="dedup")
    assert skipped(results) == {"extract": True, "filter": True, "match": True, "balance": False, "dedup": False}


def test_a_killed_download_resumes_only_under_the_same_config(tmp_path: Path) -> None:
    from witbuild import layout
    from witbuild.pipeline import resumes, save_fingerprint
    from witbuild.stages.registry import stage

    fps = stage_fingerprints(cfg_of())
    other = stage_fingerprints(cfg_of(download={"image_size": 128}))
    out = str(tmp_path)
    assert not resumes(stage("download"), out, fps["download"])  # nothing left behind
    save_fingerprint(layout.stage_resume_fingerprint(out, "download"), fps["download"])
    assert resumes(stage("download"), out, fps["download"])
    assert not resumes(stage("download"), out, other["download"])
    assert changes(fps["download"], other["download"]) == ["download.image_size 256 → 128"]
    # beside the temporary folder, never in it: img2dataset takes every *.json in its folder for a finished shard
    assert not layout.stage_resume_fingerprint(out, "download").startswith(layout.stage_tmp_dir(out, "download") + "/")
    save_fingerprint(layout.stage_resume_fingerprint(out, "filter"), fps["filter"])
    assert not resumes(stage("filter"), out, fps["filter"])  # only resumable stages go on from a folder


# --------------------------------------------------------------------------------------------
# Fingerprints recorded by an older witbuild: respelt, not redone; reasons that name their stage


def _finished_stage(out: Path, name: str, fp) -> None:
    """A finished stage folder as the pipeline leaves one, recorded under ``fp``."""
    from witbuild.pipeline import write_fingerprint
    from witbuild.stage_files import write_listing

    folder = out / "stages" / name
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").touch()
    (folder / "_counts.json").write_text('{"rows_in": 1, "rows_out": 1}')
    write_fingerprint(str(folder), fp)
    write_listing(str(folder))


def _old_spelling(fp, **config):
    from witbuild.fingerprint import Fingerprint

    return Fingerprint({**fp.config, **config}, fp.input, fp.external, fp.input_files)


def test_a_fingerprint_in_an_older_spelling_is_respelt_not_redone(tmp_path: Path) -> None:
    """The default model recorded by its path, scoring settings recorded while nothing scored: the stages and the
    ones chained to them stand, their fingerprints rewritten (an upgrade redid them, download included, and logged
    ``langid.model_path "/…/lid.176.ftz" → null`` as if the setting were gone)."""
    from witbuild.fingerprint import Fingerprint, respelled
    from witbuild.pipeline import first_stale_stage, recorded_fingerprint
    from witbuild.text.langid import default_model_path

    expected = stage_fingerprints(cfg_of())
    old_filter = _old_spelling(expected["filter"], **{"langid.model_path": str(default_model_path())})
    old_match = Fingerprint(expected["match"].config, old_filter.digest, expected["match"].external)
    old_finalize = _old_spelling(expected["finalize"], **{"clip_score.batch_size": 8, "clip_score.device": "cpu"})
    assert changes(old_filter, expected["filter"]) == [] and changes(old_finalize, expected["finalize"]) == []
    assert respelled(old_filter).digest == expected["filter"].digest != old_filter.digest
    out = tmp_path / "out"
    for name, fp in (("extract", expected["extract"]), ("filter", old_filter), ("match", old_match)):
        _finished_stage(out, name, fp)
    assert first_stale_stage(str(out), expected) is None
    assert recorded_fingerprint(str(out / "stages" / "filter")).digest == expected["filter"].digest
    assert recorded_fingerprint(str(out / "stages" / "match")).digest == expected["match"].digest


def test_a_stale_stage_names_itself_and_the_later_rules_that_changed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``its rule changed`` said which stage; a later stage whose rule changed too went unmentioned."""
    from witbuild.fingerprint import Fingerprint
    from witbuild.pipeline import first_stale_stage

    expected = stage_fingerprints(cfg_of())
    old = {n: Fingerprint(fp.config, fp.input, {**fp.external, "rule": "1"}, fp.input_files)
           for n, fp in expected.items()}
    out = tmp_path / "out"
    for name in ("extract", "filter", "match"):
        _finished_stage(out, name, old[name] if name != "extract" else expected[name])
    stale = first_stale_stage(str(out), expected)
    rules = {n: fp.external.get("rule", "1") for n, fp in expected.items()}
    assert stale is not None and stale[0] == "filter"
    assert f"filter: its rule changed (1 → {rules['filter']})" in stale[1]
    assert f"match: its rule changed (1 → {rules['match']})" in stale[1]
