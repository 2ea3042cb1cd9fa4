"""Query lists of other languages than English: captions folded as wordfreq folds its words, the language wordfreq
serves checked, bigrams counted over whole words in matching's form, WordNet for English lists only."""

from __future__ import annotations

import json
import random
import unicodedata
from itertools import pairwise

import pytest

from witbuild.curate import querylist as q
from witbuild.curate.match import (
    MatchConfig,
    build_matcher,
    casefold_is_folding,
    fold,
    make_matcher,
    naive_match_batch,
)
from witbuild.curate.querylist import QueryListConfig, count_ngrams, pmi_bigrams, tokens, word_runs
from witbuild.curate.querylist_artifact import folding_language
from witbuild.text.normalize import normalize_text

# Captions as the web writes them, and wordfreq's form of the words each must match (all in wordfreq's lists).
WRITTEN = {
    ("de", "large"): [("Die Straße im Winter", ["strasse"]), ("GROSSE STRASSE IM WINTER", ["grosse", "strasse"]),
                      ("Ein weißer Fußball", ["weisser", "fussball"]), ("Herzliche Grüße", ["grüsse"]),
                      ("Der Flug nach Berlin", ["flug"]), ("Der \ufb02ug nach Berlin", ["flug"])],
    ("el", "best"): [("Ο δρόμος της πόλης", ["τησ", "δρόμοσ", "πόλησ"]), ("ΟΔΟΣ ΕΡΜΟΥ ΣΤΗΝ ΑΘΗΝΑ", ["οδοσ", "αθηνα"]),
                     ("ένας όμορφος ουρανός", ["όμορφοσ", "ουρανόσ"])],
    ("tr", "best"): [("İstanbul Boğazı", ["istanbul", "boğazı"]), ("Işık ve ırmak", ["ışık", "ırmak"]),
                     ("ISTANBUL", []), ("Boğazı ve vadisi", ["boğazı", "vadisi"])],
    ("ar", "large"): [("قِطَّةٌ صَغِيرَةٌ تَنَامُ عَلَى الأَرِيكَةِ", ["قطة", "صغيرة", "تنام", "على", "الأريكة"]),
                      ("كلـــمة", ["كلمة"])],
    ("hi", "best"): [("एक लड़का किताब पढ़ रहा है", ["लड़का", "किताब", "पढ़"]), ("भारत का झंडा", ["भारत", "झंडा"])],
    ("ur", "best"): [("ایک لڑکا کتاب پڑھ رہا ہے", ["لڑکا", "کتاب", "پڑھ"])],
}
RULES = ("smart", False)

# A pool of several languages, English included, for the bigram tests.
POOL = [
    "A red fox in the snow, near New York.", "New York pizza is the best", "the red fox jumps",
    "Die Straße im Winter", "Die GROSSE STRASSE im Winter", "ein weißer Fußball auf der Straße",
    "Ο δρόμος της πόλης", "ο δρόμος της Αθήνας",
    "İstanbul Boğazı'nda gün batımı", "ISTANBUL BOĞAZI'NDA gece", "Işık ve ırmak",
    "قِطَّةٌ صَغِيرَةٌ تَنَامُ عَلَى الأَرِيكَةِ", "قطة صغيرة في الحديقة",
    "एक लड़का किताब पढ़ रहा है", "भारत का झंडा हवा में", "गंगा नदी के किनारे शाम",
    "ایک لڑکا کتاب پڑھ رہا ہے", "un petit-déjeuner complet, l'homme arrive", "Petit-déjeuner complet à Paris",
]


def _words(language: str, wordlist: str) -> list[str]:
    from wordfreq import iter_wordlist

    return list(iter_wordlist(language, wordlist))


@pytest.mark.parametrize(("language", "wordlist"), list(WRITTEN))
def test_wordfreq_words_match_captions_as_written(language: str, wordlist: str) -> None:
    """wordfreq's words are case-folded (``gross``), Turkish-i'd, stripped of Arabic vowel marks and tatweel; a
    caption lower-cased only never held them (``Straße``, ``της``, ``İstanbul``, ``قِطَّةٌ`` matched nothing)."""
    words = set(_words(language, wordlist))
    for rule in RULES:
        for caption, want in WRITTEN[(language, wordlist)]:
            assert set(want) <= words, want  # the entries are wordfreq's own words
            entries = [*want, "zzz"]
            text = normalize_text(caption)
            expected = list(range(len(want)))
            got = make_matcher(entries, MatchConfig(case_sensitive=rule), language).match_batch([text])[0]
            assert got == expected, (rule, caption, [entries[i] for i in got])


@pytest.mark.parametrize(("language", "wordlist"), list(WRITTEN))
def test_every_engine_and_the_reference_agree_on_other_languages(language: str, wordlist: str) -> None:
    """The token trie (one caption and batches, with the joined-separator trick), the aho-corasick automata and the
    naive loop give the same matches with folding, cased entries (smart case: as written) included."""
    rng = random.Random(7)
    captions = [normalize_text(c) for c, _ in WRITTEN[(language, wordlist)]] + [normalize_text(c) for c in POOL]
    vocab = sorted({t for c in captions for t in c.split()})
    entries = list(dict.fromkeys([*_words(language, wordlist)[:300], *vocab[:60], *(w.upper() for w in vocab[:20]),
                                  *(f"{a} {b}" for a, b in pairwise(vocab[:40])), "Straße", "İstanbul"]))
    captions += [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(200)]
    for rule in (*RULES, True):
        want = naive_match_batch(captions, entries, rule, language=language)
        assert any(want)
        for engine in ("tokens", "aho-corasick"):
            m = build_matcher(entries, rule, engine=engine, language=language)
            assert m.match_batch(captions) == want, (rule, engine)
            assert [m.match(c) for c in captions] == want, (rule, engine)


def test_cased_entries_still_match_only_as_written() -> None:
    """Smart case: an entry with capitals is looked for as written, whatever the folding of the others."""
    entries = ["Straße", "strasse", "İstanbul", "istanbul"]
    assert make_matcher(entries, MatchConfig(), "de").match_batch(["Straße", "STRASSE", "strasse"]) == [
        [0, 1], [1], [1]]
    assert make_matcher(entries, MatchConfig(), "tr").match_batch(["İstanbul", "İSTANBUL", "Istanbul"]) == [
        [2, 3], [3], []]


@pytest.mark.parametrize("language", ["en", "de", "el", "ru", "fr", "tr", "ro", "sh", "ar", "he", "fa", "ur", "hi",
                                      "bn", "ta", "ko"])
def test_fold_is_wordfreqs_preprocessing_and_keeps_the_tokens(language: str) -> None:
    """On NFC text, fold is preprocess_text exactly, except that a token NFKC would split ('¨', a no-break space,
    'ﷺ') is kept as written: matching's tokens are the caption's. casefold alone where wordfreq does no more."""
    from wordfreq.language_info import get_language_info
    from wordfreq.preprocess import preprocess_text

    info = get_language_info(language)
    only_casefold = info["normal_form"] == "NFC" and not any(
        info[k] for k in ("transliteration", "remove_marks", "dotless_i", "diacritics_under"))
    assert casefold_is_folding(language) is only_casefold
    rng = random.Random(language)
    chars = [chr(c) for c in range(0x20, 0x3000) if unicodedata.category(chr(c))[0] in "LMNPSZ"]
    chars += list("¨\u00a0ﷺ﹐ﬂßİIıςΣ") * 20
    for _ in range(2000):
        text = unicodedata.normalize("NFC", "".join(rng.choice(chars) if rng.random() < 0.75 else " "
                                                    for _ in range(rng.randint(1, 24))))
        folded = fold(text, language)
        by_token = [preprocess_text(t, language) for t in text.split(" ")]
        assert folded.split(" ") == [f if " " not in f else t for f, t in zip(by_token, text.split(" "), strict=True)]
        if preprocess_text(text, language).count(" ") == text.count(" "):
            assert folded == preprocess_text(text, language)
    assert fold("a\u00a0b ﷺ c﹐d", language).split(" ")[:2] == ["a\u00a0b", "ﷺ"]
    nfkc = info["normal_form"] == "NFKC"
    assert fold("c﹐d", language) == ("c,d" if nfkc else "c﹐d")  # inside its token: no new boundary


@pytest.mark.parametrize(("language", "wordlist"), [("de", "large"), ("el", "best"), ("tr", "best"), ("ar", "large"),
                                                    ("hi", "best"), ("ur", "best"), ("ru", "large"), ("sh", "best")])
def test_wordfreq_words_are_already_folded(language: str, wordlist: str) -> None:
    """Folding an entry of a list built from wordfreq leaves it as it is (as the list file holds it, and NFC as
    load_entries reads it): the key is the word."""
    words = _words(language, wordlist)
    assert [w for w in words if fold(w, language) != w or fold(unicodedata.normalize("NFC", w), language) != w] == []


# ---- 2. the language wordfreq serves


@pytest.mark.parametrize(("language", "served", "suggested"), [("ur", "en", "best"), ("eu", "es", None),
                                                               ("gl", "es", None), ("af", "nl", None),
                                                               ("hi", "und", "best"), ("nn", "nb", None)])
def test_a_language_wordfreq_would_replace_is_an_error(language: str, served: str, suggested: str | None) -> None:
    """wordfreq serves the closest list it has with a logged warning: Urdu built an English list, Basque and
    Galician Spanish, Afrikaans Dutch. One error naming the list it would have used, and the wordlist that has
    the language."""
    with pytest.raises(ValueError, match=f"wordfreq has no 'large' word list for language '{language}'") as err:
        QueryListConfig(language=language)
    message = str(err.value)
    assert (f"it would use its '{served}' list instead" in message) is (served != "und")
    assert (f"querylist.wordlist: {suggested}" in message) if suggested else "querylist.wordlist" not in message


def test_the_language_served_is_in_the_manifest(tmp_path) -> None:
    for language, wordlist, served in [("ur", "best", "ur"), ("pt-BR", "large", "pt"), ("en", "large", "en")]:
        cfg = QueryListConfig(language=language, wordlist=wordlist, min_zipf=5.0, wordnet=False)
        ql = q.build_querylist(cfg)
        q.write_querylist(ql, tmp_path / language, cfg, {})
        manifest = json.loads((tmp_path / language / "manifest.json").read_text())
        assert manifest["wordfreq_language"] == served
        assert manifest["caption_folding"] == f"wordfreq preprocess_text, {served}"
        assert folding_language(manifest) == served
    assert folding_language({"config": {"language": "de"}}) == "de"  # a manifest written before it was recorded


# ---- 3. bigrams over whole words, folded


def test_tokens_keep_combining_marks_and_fold() -> None:
    assert tokens("एक लड़का किताब पढ़ रहा है", "hi") == ["एक", "लड़का", "किताब", "पढ़", "रहा", "है"]
    assert tokens("İstanbul Boğazı'nda", "tr") == ["istanbul", "boğazı'nda"]
    assert tokens("قِطَّةٌ صَغِيرَةٌ", "ar") == ["قطة", "صغيرة"]
    assert tokens("Die STRASSE, die Straße", "de") == ["die", "strasse", "die", "strasse"]
    assert tokens("un petit-déjeuner à 8h, l'homme", "fr") == ["un", "petit-déjeuner", "à", "l'homme"]
    assert word_runs("New York, big city. Dogs 2 cats") == [["new", "york"], ["big", "city"], ["dogs"], ["cats"]]


@pytest.mark.parametrize("language", ["en", "de", "el", "tr", "ar", "hi", "ur"])
def test_every_bigram_matches_the_captions_it_was_counted_from(language: str) -> None:
    """A bigram is two adjacent tokens of the caption spaced and folded as matching does it: found in every caption
    it was counted from (fragments such as 'i stanbul' or 'ह ई' never were)."""
    pool = [normalize_text(c) for c in POOL]
    for caption in pool:
        grams = sorted(count_ngrams([caption], language)[1])
        if grams:
            found = build_matcher(grams, "smart", language=language).match(caption)
            assert [grams[i] for i in found] == grams, caption
    uni, bi = count_ngrams(pool * 2, language)
    best = [g for g, _ in pmi_bigrams(uni, bi, min_count=2, min_pmi=0.0, limit=1000)]
    assert best
    matched = build_matcher(best, "smart", language=language).match_batch(pool)
    assert {best[i] for m in matched for i in m} == set(best)


@pytest.mark.spark
def test_spark_and_driver_count_the_same_non_english_bigrams(spark) -> None:
    captions = [normalize_text(c) for c in POOL] * 3
    for language in ("tr", "hi"):
        uni, bi = count_ngrams(captions, language)
        pure = pmi_bigrams(uni, bi, min_count=2, min_pmi=0.0, limit=500)
        df = spark.createDataFrame([(t,) for t in captions], "text string").repartition(3)
        assert q.spark_pmi_bigrams(df, min_count=2, min_pmi=0.0, limit=500, language=language) == pure
        assert "लड़का किताब" in dict(pure) and "ह ई" not in dict(pure)


# ---- 4. WordNet for English lists only


def test_wordnet_goes_into_english_lists_only(monkeypatch, tmp_path) -> None:
    lemmas = [f"english lemma {i}" for i in range(50)]
    monkeypatch.setattr(q, "wordnet_lemmas", lambda root=q.WORDNET_DIR: lemmas)
    english = q.build_querylist(QueryListConfig(min_zipf=5.0))
    assert english.kept_per_source["wordnet"] == 50 and english.notes["wordnet"] == "added"
    cfg = QueryListConfig(language="de", min_zipf=5.0)
    german = q.build_querylist(cfg)
    assert "wordnet" not in german.sources and "wordnet" not in german.candidates_per_source
    q.write_querylist(german, tmp_path, cfg, {})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["wordnet"] == "not added: WordNet's lemmas are English, and querylist.language is de"
    assert "English lists only" in QueryListConfig.model_fields["wordnet"].description
