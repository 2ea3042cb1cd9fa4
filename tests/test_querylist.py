"""Query list building: sources, PMI bigrams (pure and Spark agree), dedup and cap, provenance, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from witbuild.curate.querylist import (
    QueryListConfig,
    assemble,
    build_querylist,
    count_ngrams,
    pmi_bigrams,
    read_user_file,
    spark_pmi_bigrams,
    wordfreq_unigrams,
    wordnet_lemmas,
    write_querylist,
)

CORPUS = [
    "New York is a big city", "I love New York in spring", "New York pizza is the best",
    "a red fox in the snow", "the red fox jumps", "ice cream in the park", "ice cream truck",
    "we ate ice cream", "the park in New York", "snow in the city",
] * 3


def test_unigrams_follow_wordfreq_threshold():
    from wordfreq import zipf_frequency

    words = wordfreq_unigrams("en", 4.0)
    assert words[:3] == ["the", "to", "and"]
    assert all(zipf_frequency(w, "en", wordlist="large") >= 4.0 for w in words)
    assert len(wordfreq_unigrams("en", 3.0)) > len(words)


@pytest.mark.parametrize(("language", "min_zipf"), [("en", QueryListConfig().min_zipf), ("de", 2.5)])
def test_unigrams_are_the_words_zipf_frequency_puts_over_the_threshold(language, min_zipf):
    """The list read from wordfreq's frequency table is, word for word and in order, what wordfreq's own
    ``zipf_frequency`` keeps (the English one is the default query list's 195,771 unigrams)."""
    from wordfreq import iter_wordlist, zipf_frequency

    reference = []
    for word in iter_wordlist(language, wordlist="large"):
        if zipf_frequency(word, language, wordlist="large") < min_zipf:
            break
        if any(ch.isalpha() for ch in word):
            reference.append(word)
    assert wordfreq_unigrams(language, min_zipf) == reference


@pytest.mark.parametrize(("language", "first"), [("zh", "的"), ("ja", "の")])
def test_chinese_and_japanese_unigrams_need_no_word_segmenter(language, first):
    """zipf_frequency segments Chinese with jieba and Japanese with MeCab, neither installed with witbuild."""
    words = wordfreq_unigrams(language, 4.0)
    assert words[0] == first and len(words) > 1000 and not any(w.isdigit() for w in words)


@pytest.mark.parametrize("language", ["zh", "ja", "zh-Hant", "th"])
def test_a_language_written_without_spaces_is_refused_with_the_reason(language):
    """Their words match only between spaces, as MetaCLIP matches: a build would drop nearly every pair as no_match."""
    from witbuild.curate.match import MatchConfig, make_matcher

    with pytest.raises(ValueError, match="without spaces"):
        QueryListConfig(language=language)
    assert QueryListConfig(language="de").language == "de"
    words = wordfreq_unigrams("zh", 3.0)  # what such a list would do: nothing found in a caption of common words
    assert make_matcher(words, MatchConfig()).match_batch(["一只狗在海滩上奔跑"]) == [[]]


# CORPUS counted by hand: its ten sentences hold 49 words and 39 adjacent word pairs, and each sentence is there
# three times. Lower-cased letters-only tokens ("I" is the word "i").
UNIGRAMS = {w: 3 * n for w, n in {
    "new": 4, "york": 4, "is": 2, "a": 2, "big": 1, "city": 2, "i": 1, "love": 1, "in": 5, "spring": 1, "pizza": 1,
    "the": 6, "best": 1, "red": 2, "fox": 2, "snow": 2, "jumps": 1, "ice": 3, "cream": 3, "park": 2, "truck": 1,
    "we": 1, "ate": 1}.items()}
BIGRAMS = {g: 3 * n for g, n in {
    "new york": 4, "york is": 1, "is a": 1, "a big": 1, "big city": 1,  # New York is a big city
    "i love": 1, "love new": 1, "york in": 1, "in spring": 1,  # I love New York in spring
    "york pizza": 1, "pizza is": 1, "is the": 1, "the best": 1,  # New York pizza is the best
    "a red": 1, "red fox": 2, "fox in": 1, "in the": 3, "the snow": 1,  # a red fox in the snow
    "the red": 1, "fox jumps": 1,  # the red fox jumps
    "ice cream": 3, "cream in": 1, "the park": 2,  # ice cream in the park
    "cream truck": 1, "we ate": 1, "ate ice": 1,  # ice cream truck; we ate ice cream
    "park in": 1, "in new": 1,  # the park in New York
    "snow in": 1, "the city": 1}.items()}  # snow in the city
N_UNI, N_BI = 3 * 49, 3 * 39
# PMI >= 4, best first: 5.944 (i love, we ate), 4.944 (red fox, a big, big city, fox jumps, pizza is), 4.359 (ice
# cream, ate ice, cream truck). Tied PMIs are equal floats (the same quotient), so ties go by count, then text: red
# fox (6) before the 3s, ice cream (9) before the 3s.
PMI_AT_LEAST_4 = ["i love", "we ate", "red fox", "a big", "big city", "fox jumps", "pizza is", "ice cream", "ate ice",
                  "cream truck"]


def test_ngram_counts_by_hand():
    assert sum(UNIGRAMS.values()) == N_UNI and sum(BIGRAMS.values()) == N_BI  # the tables add up
    uni, bi = count_ngrams(CORPUS)
    assert dict(uni) == UNIGRAMS
    assert dict(bi) == BIGRAMS


def test_pmi_by_hand():
    found = dict(pmi_bigrams(UNIGRAMS, BIGRAMS, min_count=3, min_pmi=-100, limit=1000))
    assert found.keys() == BIGRAMS.keys()  # every pair is seen at least 3 times
    # log2 p(ab) / (p(a) p(b)): p(new york) = 12/117, p(new) = p(york) = 12/147
    assert found["new york"] == pytest.approx(math.log2((12 / 117) / ((12 / 147) * (12 / 147))))  # 3.944
    assert found["new york"] == pytest.approx(3.944017, abs=1e-6)
    assert found["ice cream"] == pytest.approx(math.log2((9 / 117) / ((9 / 147) * (9 / 147))))  # 4.359
    assert found["in the"] == pytest.approx(math.log2((9 / 117) / ((15 / 147) * (18 / 147))))  # 2.622
    assert found["in new"] == pytest.approx(math.log2((3 / 117) / ((15 / 147) * (12 / 147))))  # 1.622
    assert "a big" not in dict(pmi_bigrams(UNIGRAMS, BIGRAMS, min_count=4, min_pmi=-100, limit=1000))  # seen 3 times
    best = PMI_AT_LEAST_4
    assert [g for g, _ in pmi_bigrams(UNIGRAMS, BIGRAMS, min_count=3, min_pmi=4.0, limit=100)] == best
    assert [g for g, _ in pmi_bigrams(UNIGRAMS, BIGRAMS, min_count=3, min_pmi=4.0, limit=3)] == best[:3]
    assert pmi_bigrams({}, {}, min_count=1, min_pmi=0, limit=10) == []


@pytest.mark.spark
def test_spark_pmi_equals_pure(spark):
    uni, bi = count_ngrams(CORPUS)
    pure = pmi_bigrams(uni, bi, min_count=3, min_pmi=2.0, limit=50)
    df = spark.createDataFrame([(t,) for t in CORPUS], "text string").repartition(3)
    got = spark_pmi_bigrams(df, min_count=3, min_pmi=2.0, limit=50)
    assert got == pure  # the same floats: one PMI function for both (the JVM's log2 differs in the last bit at times)
    assert [g for g, _ in got][: len(PMI_AT_LEAST_4)] == PMI_AT_LEAST_4  # the order worked out by hand


@pytest.mark.spark
def test_a_small_pool_counted_in_the_driver_gives_sparks_bigrams(spark, tmp_path, monkeypatch):
    """A build's filtered pool on this machine below DRIVER_MAX_PARQUET_BYTES has its bigrams counted in the driver
    (milliseconds against 5-6 s of Spark jobs); a larger one, or one on another file system, by Spark. Same list."""
    from witbuild import spark as ws
    from witbuild.curate import querylist_artifact as qa

    pool = tmp_path / "filter"
    captions = [*CORPUS, "", "New York at night"]
    spark.createDataFrame([(t, i) for i, t in enumerate(captions)], "text string, uid long").repartition(3) \
        .write.parquet(str(pool))
    (pool / "_counts.json").write_text("{}")  # the stage's own files beside the Parquet parts are not read
    cfg = QueryListConfig(bigram_min_count=3, bigram_min_pmi=2.0, max_bigrams=50)
    assert 0 < ws.local_parquet_bytes(str(pool)) == ws.driver_sized(str(pool)) < ws.DRIVER_MAX_PARQUET_BYTES
    assert ws.local_parquet_bytes("s3://bucket/pool") is None and ws.local_parquet_bytes(str(tmp_path / "no")) is None
    driver = qa.pool_pmi_bigrams(spark, str(pool), cfg)
    monkeypatch.setattr(ws, "DRIVER_MAX_PARQUET_BYTES", 0)
    counted_by_spark = qa.pool_pmi_bigrams(spark, str(pool), cfg)
    # "in the" and "fox in" have the same PMI on paper; the JVM's log2 put them in the other order
    assert driver == counted_by_spark and len(driver) == 28 and ("in the", 2.6630282874331206) in driver


def test_assemble_dedups_in_source_order_and_caps():
    cfg = QueryListConfig(max_entries=6, max_entry_chars=20)
    ql = assemble({"numbers": ["1", "2"], "user": ["cat", "  ", "x" * 50, "dog", "cat"],
                   "unigrams": ["dog", "fish", "bird", "cow"]}, cfg)
    assert ql.entries == ["1", "2", "cat", "dog", "fish", "bird"]
    assert ql.sources == ["numbers", "numbers", "user", "user", "unigrams", "unigrams"]
    assert dict(ql.skipped) == {"blank": 1, "too_long": 1, "duplicate_in_user": 1, "duplicate_in_unigrams": 1,
                                "over_max_entries": 1}
    assert ql.kept_per_source == {"numbers": 2, "user": 2, "unigrams": 2}
    assert ql.version == assemble({"numbers": ["1", "2"], "user": ["cat", "dog"],
                                   "unigrams": ["fish", "bird"]}, cfg).version
    with pytest.raises(ValueError, match="empty"):
        assemble({"user": [" "]}, cfg)


def test_user_files_text_and_metaclip_json(tmp_path):
    txt = tmp_path / "titles.txt"
    txt.write_bytes(b"Eiffel Tower\n\nEiffel Tower\n" + b"\xff\xfe bad\n" + b"Mont Blanc\n")
    entries, skipped = read_user_file(txt)
    assert entries == ["Eiffel Tower", "Mont Blanc"]
    assert skipped == {"blank": 1, "duplicate": 1, "invalid_utf8": 1}
    js = tmp_path / "metadata.json"
    js.write_text(json.dumps(["dog", "hot  dog", 3, "cat"]))
    entries, skipped = read_user_file(js)
    assert entries == ["dog", "hot dog", "cat"] and skipped == {"not_a_string": 1}
    (bad := tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="JSON list"):
        read_user_file(bad)


def test_wordnet_index_files(tmp_path):
    (tmp_path / "index.noun").write_text(
        "  1 This software and database is being provided\n"
        "hot_dog n 2 1 @ 2 0 07697537 07676602\n"
        "dog n 7 5 @ ~ #m #p %p 7 1 02084071\n")
    (tmp_path / "index.adj").write_text("red a 3 2 & = 3 0 00381097\n")
    assert wordnet_lemmas(tmp_path) == ["hot dog", "dog", "red"]
    real = Path("/usr/share/wordnet")
    if (real / "index.noun").is_file():  # Debian's wordnet-base, when installed
        assert len(wordnet_lemmas(real)) > 100_000


def test_build_and_write_with_provenance(tmp_path):
    cfg = QueryListConfig(min_zipf=5.0, wordnet=False)
    (user := tmp_path / "u.txt").write_text("Eiffel Tower\nthe\n")
    ql = build_querylist(cfg, user_files=[str(user)], bigrams=["new york", "the"])
    assert ql.entries[:102] == [str(i) for i in range(100)] + ["Eiffel Tower", "the"]
    assert ql.entries[-1] == "new york"
    path = write_querylist(ql, tmp_path / "ql", cfg, {"corpus": "test"})
    assert path.read_text(encoding="utf-8").splitlines() == ql.entries
    manifest = json.loads((tmp_path / "ql" / "manifest.json").read_text())
    assert manifest["version"] == ql.version and manifest["entries"] == len(ql.entries)
    assert manifest["kept_per_source"]["bigrams"] == 1
    assert manifest["skipped"]["duplicate_in_unigrams"] == 1 and manifest["skipped"]["duplicate_in_bigrams"] == 1
    assert manifest["provenance"] == {"corpus": "test"}
    assert manifest["caption_folding"] == "wordfreq preprocess_text, en" and manifest["wordfreq_language"] == "en"
    assert manifest["wordnet"] == "not added: querylist.wordnet is off"


@pytest.mark.slow
def test_cli_builds_a_list_from_a_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3))
    out = tmp_path / "ql"
    proc = subprocess.run([str(Path(sys.executable).parent / "witbuild"), "querylist", "build", str(out),
                           "--corpus", str(corpus), "--bigram-min-count", "3", "--bigram-min-pmi", "2",
                           "--max-entries", "200000", "--no-wordnet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_per_source"]["bigrams"] >= 1
    assert "ice cream" in (out / "entries.txt").read_text().splitlines()
    assert "version" in proc.stdout
    missing = subprocess.run([str(Path(sys.executable).parent / "witbuild"), "querylist", "build", str(out),
                              "--user-file", str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_the_query_list_lands_inside_the_output_however_it_is_spelled(tmp_path, monkeypatch):
    """``file:/x`` is the folder /x to Spark: the list went to a relative folder ``file:/x/querylist`` in the working
    directory instead, and a build resumed from another directory failed to find it. Another filesystem (here
    fsspec's memory one, as s3:// would be) gets it too, renamed into place."""
    import fsspec

    from witbuild.config import BuildConfig
    from witbuild.curate.querylist_artifact import prepare_querylist

    entries = tmp_path / "entries.txt"
    entries.write_text("cat\ndog\ncat\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    outputs = {f"file:{tmp_path}/a": tmp_path / "a", f"file://{tmp_path}/b": tmp_path / "b"}
    for output, folder in outputs.items():
        cfg = BuildConfig(output=output, input={"paths": ["web.warc.gz"]}, match={"entries_path": str(entries)})
        got, manifest = prepare_querylist(None, cfg, None)
        assert got == ["cat", "dog"] and manifest["entries"] == 2
        assert (folder / "querylist" / "entries.txt").read_text() == "cat\ndog\n"
        monkeypatch.chdir(tmp_path)  # resumed from elsewhere: the same list, not rebuilt
        assert prepare_querylist(None, cfg, None)[0] == ["cat", "dog"]
        monkeypatch.chdir(work)
    assert list(work.iterdir()) == []
    cfg = BuildConfig(output="memory://bucket/out", input={"paths": ["web.warc.gz"]},
                      match={"entries_path": str(entries)})
    assert prepare_querylist(None, cfg, None)[0] == ["cat", "dog"]
    memory = fsspec.filesystem("memory")
    assert memory.cat_file("/bucket/out/querylist/entries.txt") == b"cat\ndog\n"
    assert not memory.exists("/bucket/out/querylist.tmp")
