"""MetaCLIP substring matching: both matchers against MetaCLIP's rule written out in this file, and query list
loading."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from witbuild.curate.match import (
    METACLIP_PUNCT,
    CaseRule,
    MatchConfig,
    Matcher,
    build_matcher,
    case_variants,
    load_entries,
    make_matcher,
    matcher_from_config,
    naive_match,
    naive_match_batch,
    spacing,
    warn_case_variants,
    warn_spaced_entries,
)

# MetaCLIP's rule (facebookresearch/MetaCLIP, metaclip/metaclip1/substr_matching.py), written out here with nothing
# taken from witbuild.curate.match: pad the caption with one space each side, put spaces around each of
# , . ; : ? ! ` (a backtick, not a double quote), turn tab, newline and carriage return into spaces; entry i matches
# when " entry " is a substring of the result. Case-sensitive unless told otherwise (then both sides lower-cased).
# With space_entries (witbuild's option, on by default) an entry is spaced like a caption and only that padding (one
# space each side) dropped before its key is made: "Mr." becomes " Mr .  ", as "Mr." reads in a spaced caption.
# witbuild's "smart" rule, written out the same way: an entry with a letter that str.lower changes is looked for as
# written; every other entry in the spaced caption lower-cased.
_WRAPPED = [",", ".", ";", ":", "?", "!", "`"]


def _metaclip_spacing(text: str) -> str:
    spaced = f" {text} "
    for p in _WRAPPED:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return spaced


def metaclip_rule(captions: list[str], entries: list[str], case_sensitive: bool | str,
                  space_entries: bool) -> list[list[int]]:
    keys, lowered = [], []
    for entry in entries:
        key = f" {_metaclip_spacing(entry)[1:-1]} " if space_entries else f" {entry} "
        if case_sensitive is False:
            key = key.lower()
        keys.append(key)
        lowered.append(case_sensitive is False or (case_sensitive == "smart" and entry.lower() == entry))
    out = []
    for caption in captions:
        spaced = _metaclip_spacing(caption)
        texts = (spaced, spaced.lower())
        out.append([i for i, key in enumerate(keys) if key in texts[lowered[i]]])
    return out


def test_the_rule_written_here_on_hand_examples() -> None:
    assert _metaclip_spacing("I love New York.") == " I love New York .  "
    assert _metaclip_spacing('say "hi";ok`x`') == ' say "hi" ; ok ` x `  '  # a double quote is not spaced
    entries = ["New York", "new york", "York", "ork", "St. Louis", '"hi"', "hi"]
    assert metaclip_rule(["I love New York."], entries, True, True) == [[0, 2]]
    assert metaclip_rule(["I love New York."], entries, False, True) == [[0, 1, 2]]
    assert metaclip_rule(["in St. Louis, say \"hi\""], entries, True, True) == [[4, 5]]
    assert metaclip_rule(["in St. Louis, say \"hi\""], entries, True, False) == [[5]]  # "St. Louis" unspaced
    assert metaclip_rule(["Mr. Smith", "Mr.Smith", "Mr."], ["Mr.", "Mr"], True, True) == [[0, 1], [1], [0, 1]]
    assert metaclip_rule(["I love New York.", "NEW YORK"], entries, "smart", True) == [[0, 1, 2], [1]]

SPECIAL_ENTRIES = [
    "new", "new york", "york", "new york city", "york city", "city", "New York", "NEW YORK",
    "St. Louis", "Mr.", "e.g.", "U.S.A.", "what?", "wow!", "a, b", "AC/DC", "C++", "rock'n'roll", '"quoted"',
    "`tick`", "x;y", "a:b", "café", "München", "東京", "東京タワー", "タワー", "Москва", "😀", "I ❤ NY", "🇫🇷",
    "the", "a", "an", "of the", "the the", "cat", "cats", "Cat", "big cat", "cat cat", "New", "York",
    "(", ")", "[test]", ".*", "^$", "\\d+",
]  # fmt: skip

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "an", "ber", "dor", "el", "fin"]
PUNCT = [",", ".", ";", ":", "?", "!", "`", '"', "'", "-", "/", "(", ")", "...", "!!"]
EXTRA_TOKENS = ["🙂", "👍🏽", "naïve", "Ünïcödé", "日本", "東京タワーの夜景", "Straße", "İstanbul", "ǅ", "ß", "ﬁ"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))


def _entries(rng: random.Random, n: int) -> list[str]:
    entries = list(SPECIAL_ENTRIES) + [str(i) for i in range(100)]
    while len(entries) < n:
        k = rng.choice([1, 1, 1, 2, 2, 3])
        words = [_word(rng) for _ in range(k)]
        if rng.random() < 0.2:
            words[0] = words[0].capitalize()
        if rng.random() < 0.05:
            words[-1] += rng.choice([".", ",", "!", "'s", "-x"])
        entries.append(" ".join(words))
    return entries


def _captions(rng: random.Random, entries: list[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        tokens: list[str] = []
        for _ in range(rng.randint(0, 14)):
            r = rng.random()
            if r < 0.35:
                tok = rng.choice(entries)  # an entry verbatim: many (overlapping) matches
            elif r < 0.6:
                tok = _word(rng)
            elif r < 0.7:
                tok = str(rng.randint(0, 150))
            elif r < 0.78:
                tok = rng.choice(EXTRA_TOKENS)
            else:
                tok = rng.choice(entries)[: rng.randint(1, 6)]  # a prefix: near misses
            case = rng.random()
            if case < 0.1:
                tok = tok.upper()
            elif case < 0.2:
                tok = tok.title()
            tokens.append(tok)
            if rng.random() < 0.3:
                tokens[-1] += rng.choice(PUNCT)
            if rng.random() < 0.1:
                tokens[-1] = rng.choice(PUNCT) + tokens[-1]
        sep = rng.choice([" ", " ", " ", "", "  ", "\t", "\n"])
        out.append(sep.join(tokens) if rng.random() < 0.2 else " ".join(tokens))
    return out


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    rng = random.Random(20240601)
    entries = _entries(rng, 2500)
    captions = _captions(rng, entries, 2500)
    return entries, captions


@pytest.fixture(scope="module")
def expected(corpus: tuple[list[str], list[str]]):
    """MetaCLIP's matches of the corpus per (case_sensitive, space_entries), each worked out once."""
    entries, captions = corpus
    cache: dict[tuple[bool | str, bool], list[list[int]]] = {}

    def get(case_sensitive: bool | str, space_entries: bool) -> list[list[int]]:
        if (case_sensitive, space_entries) not in cache:
            cache[case_sensitive, space_entries] = metaclip_rule(captions, entries, case_sensitive, space_entries)
        return cache[case_sensitive, space_entries]

    return get


@pytest.mark.parametrize("engine", ["tokens", "aho-corasick"])
@pytest.mark.parametrize("case_sensitive", [True, False, "smart"])
@pytest.mark.parametrize("space_entries", [True, False])
def test_matcher_equals_metaclip_rule(corpus: tuple[list[str], list[str]], expected, case_sensitive: bool | str,
                                      space_entries: bool, engine: str):
    entries, captions = corpus
    matcher = make_matcher(entries, MatchConfig(case_sensitive=case_sensitive, space_entries=space_entries,
                                                engine=engine))
    got = matcher.match_batch(captions)
    want = expected(case_sensitive, space_entries)
    mismatches = [(c, g, w) for c, g, w in zip(captions, got, want, strict=True) if g != w]
    assert not mismatches, f"{len(mismatches)} captions differ, e.g. {mismatches[:3]}"
    assert [matcher.match(c) for c in captions[:100]] == want[:100]  # one at a time as in a batch
    # the comparison is only worth something if the captions really match, often several overlapping entries
    n_matched = [len(w) for w in want]
    assert sum(n > 0 for n in n_matched) > 0.8 * len(captions)
    assert sum(n >= 5 for n in n_matched) > 0.2 * len(captions)
    assert len({e for w in want for e in w}) > 0.5 * len(entries)
    ids = {e: i for i, e in enumerate(entries)}
    overlapping = [w for w in want if {ids["new"], ids["new york"], ids["york"]} <= set(w)]
    assert overlapping, "no caption matched the overlapping entries new / new york / york"


@pytest.mark.parametrize("case_sensitive", [True, False, "smart"])
@pytest.mark.parametrize("space_entries", [True, False])
def test_naive_loop_equals_metaclip_rule(corpus: tuple[list[str], list[str]], expected, case_sensitive: bool | str,
                                         space_entries: bool):
    """naive_match, the project's reference loop, is MetaCLIP's rule too."""
    entries, captions = corpus
    want = expected(case_sensitive, space_entries)
    assert naive_match_batch(captions, entries, case_sensitive, space_entries=space_entries) == want
    assert [naive_match(c, entries, case_sensitive, space_entries=space_entries) for c in captions[:50]] == want[:50]


def test_metaclip_spacing_semantics() -> None:
    assert spacing("I love New York.") == " I love New York .  "
    assert spacing('a,b;c:d?e!f`g"h') == ' a , b ; c : d ? e ! f ` g"h '
    assert spacing("tab\there\nnew") == " tab here new "
    assert METACLIP_PUNCT == ",.;:?!`"


def test_hand_examples() -> None:
    entries = ["new", "new york", "york", "New York", "love", "ork", "St. Louis", "0", "10", "😀", "big cat"]
    m = Matcher(entries)
    assert m.match("I love New York.") == [3, 4]  # New York, love; not new/york (case), not "ork" (inside a word)
    assert m.match("new york, new york!") == [0, 1, 2]
    assert m.match("Meet me in St. Louis.") == [6]  # entry spaced like the caption
    assert m.match("Route 10 and 100") == [8]  # "10" but not "0"; "100" is neither
    assert m.match("party 😀😀") == []  # emoji must stand alone like a word
    assert m.match("party 😀 time") == [9]
    assert m.match("a big  cat") == []  # whitespace is not normalised by the matcher
    assert m.match("") == [] and m.match_batch([None, "love"]) == [[], [4]]
    ci = Matcher(entries, case_sensitive=False)
    assert ci.match("I LOVE NEW YORK") == [0, 1, 2, 3, 4]  # "new york" and "New York" both
    verbatim = Matcher(entries, space_entries=False)
    assert verbatim.match("Meet me in St. Louis.") == []  # MetaCLIP: such entries can never match
    assert naive_match("Meet me in St. Louis.", entries, space_entries=False) == []


def test_smart_case_matches_plain_entries_in_any_case_and_cased_ones_as_written() -> None:
    """The default rule: a list of lower-case words misses no capitalised caption, and "Apple" stays a brand."""
    entries = ["golden retriever", "apple", "Apple", "new york", "New York", "us", "iPhone", "東京"]
    cfg = MatchConfig()
    assert cfg.case_sensitive == "smart"
    for engine in ("tokens", "aho-corasick"):
        m = make_matcher(entries, cfg.model_copy(update={"engine": engine}))
        assert m.match("Golden Retriever puppy") == [0]  # title case: nothing matched under MetaCLIP's rule
        assert m.match("GOLDEN RETRIEVER") == [0]
        assert m.match("Apple pie") == [1, 2]  # the word in any case, the brand as written
        assert m.match("apple pie") == [1]
        assert m.match("APPLE") == [1]
        assert m.match("I love New York.") == [3, 4]
        assert m.match("new york, new york!") == [3]
        assert m.match("Made in the US") == [5]
        assert m.match("an iphone case") == [] and m.match("an iPhone case") == [6]
        assert m.match("東京の夜") == [] and m.match("東京 tower") == [7]  # uncased scripts are plain entries
        assert m.match_batch(["", None, "Apple"]) == [[], [], [1, 2]]
        assert len(m) == len(entries)
    metaclip = Matcher(entries)  # case_sensitive=True: MetaCLIP's rule
    assert metaclip.match("Golden Retriever puppy") == [] and metaclip.match("Apple pie") == [2]
    assert naive_match("Golden Retriever puppy", entries, "smart") == [0]


@pytest.mark.parametrize("engine", ["tokens", "aho-corasick"])
def test_smart_case_checks_every_token_of_a_cased_entry_as_written(engine: str) -> None:
    """A cased entry's hit needs each of its tokens as written, wherever in the run the case differs; lower-casing
    that changes a token's length (İ) or depends on context (final sigma) keeps the caption's tokens in line."""
    entries = ["New York City", "new", "İstanbul", "istanbul", "ΟΔΟΣ", "οδος", "Dr. Who", "who"]
    m = make_matcher(entries, MatchConfig(engine=engine))
    captions = ["New York city", "New york City", "New York City.", "İstanbul at night", "ISTANBUL", "ΟΔΟΣ ΤΕΣΤ",
                "οδος", "dr. who", "Dr. Who?", "NEW YORK CITY, new"]
    want = naive_match_batch(captions, entries, "smart")
    assert want == [[1], [1], [0, 1], [2], [3], [4, 5], [5], [7], [6, 7], [1]]
    assert m.match_batch(captions) == want
    assert [m.match(c) for c in captions] == want


@pytest.mark.parametrize("engine", ["tokens", "aho-corasick"])
@pytest.mark.parametrize("rule", ["smart", False])
def test_uncased_matching_case_folds_english_too(engine: str, rule: CaseRule) -> None:
    """One folding rule for every language, English included: wordfreq's, case folding (ß is ss, the ligature ﬂ is
    fl, every sigma σ), where lower-casing kept "Straße" and "ﬂower" from "strasse" and "flower"."""
    entries = ["strasse", "flower", "λεξισ", "dog"]
    captions = ["Straße in Berlin", "STRASSE", "a \ufb02ower", "λέξις ΛΕΞΙΣ λεξις", "Dog, DOG"]
    want = [[0], [0], [1], [2], [3]]
    assert naive_match_batch(captions, entries, rule) == want
    m = build_matcher(entries, rule, engine=engine)
    assert m.match_batch(captions) == want and [m.match(c) for c in captions] == want


def test_smart_case_with_only_cased_or_only_plain_entries() -> None:
    assert make_matcher(["Paris"], MatchConfig()).match_batch(["paris", "Paris"]) == [[], [0]]
    assert make_matcher(["paris"], MatchConfig()).match_batch(["paris", "PARIS"]) == [[0], [0]]
    assert make_matcher([], MatchConfig()).match_batch(["paris"]) == [[]]


def test_lists_that_spell_case_out_in_pairs_are_reported_under_smart_case(caplog) -> None:
    entries = ["apple", "Apple", "APPLE", "Paris", "new york", "New York", "US", "dog"]
    assert case_variants(entries) == [("apple", "Apple", "APPLE"), ("new york", "New York")]  # not Paris, US
    with caplog.at_level("WARNING", logger="witbuild.curate.match"):
        assert warn_case_variants(entries, "smart") == 2
        assert warn_case_variants(entries, True) == 0 and warn_case_variants(["dog", "Paris"], "smart") == 0
    assert len(caplog.records) == 1
    assert "2 groups" in caplog.text and "apple/Apple/APPLE" in caplog.text and "case_sensitive=true" in caplog.text


def test_duplicate_keys_report_every_entry() -> None:
    m = Matcher(["Apple", "apple", "APPLE", "pie"], case_sensitive=False)
    assert m.match("apple pie") == [0, 1, 2, 3]
    assert m.match("Apple Pie") == [0, 1, 2, 3]


def test_empty_entries_rejected_and_empty_matcher() -> None:
    with pytest.raises(ValueError, match="empty"):
        Matcher(["ok", "  "])
    assert Matcher([]).match("anything at all") == []


# ------------------------------------------------------------------------------------------ load_entries


def test_load_entries_skips_and_counts(tmp_path: Path) -> None:
    lines = [
        b"\xef\xbb\xbfnew york",  # BOM on the first line
        b"",
        b"   ",
        b"cat",
        b"cat",
        b"  cat  ",  # duplicate after stripping
        b"big\t  cat",  # inner whitespace collapsed
        b"x" * 10_000,
        b"caf\xc3\xa9",
        b"cafe\xcc\x81",  # NFD: a duplicate of the NFC line above
        b"bad \xff\xfe bytes",
        b"\xc3\x28",  # invalid continuation byte
        b"dog\r",  # CRLF line ending
    ]
    path = tmp_path / "queries.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    entries, skipped = load_entries(path)
    assert entries == ["new york", "cat", "big cat", "café", "dog"]
    assert skipped == {"blank": 2, "duplicate": 3, "too_long": 1, "invalid_utf8": 2}
    assert sum(skipped.values()) + len(entries) == len(lines)


def test_load_entries_max_chars_and_max_entries(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("a\nbb\nccc\ndddd\n", encoding="utf-8")
    entries, skipped = load_entries(path, max_chars=3, max_entries=2)
    assert entries == ["a", "bb"]
    assert skipped == {"over_max_entries": 1, "too_long": 1}


def test_load_entries_without_valid_entries_raises(tmp_path: Path) -> None:
    path = tmp_path / "junk.txt"
    path.write_bytes(b"\n  \n\xff\xfe\n" + b"y" * 500 + b"\n")
    with pytest.raises(ValueError, match="no valid entries"):
        load_entries(path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no valid entries"):
        load_entries(empty)


def test_load_entries_reads_metaclip_json_as_a_list(tmp_path: Path) -> None:
    """MetaCLIP's metadata.json given as the list: its strings are the entries (read as lines, the file would be
    one entry that matches nothing, or none at all)."""
    path = tmp_path / "metadata.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(["dog", "hot  dog", 3, None, "cafe\u0301", "caf\u00e9", " ",
                                                    "x" * 300, "St. Louis"]).encode())
    entries, skipped = load_entries(path, max_entries=3)
    assert entries == ["dog", "hot dog", "café"]
    assert skipped == {"not_a_string": 2, "duplicate": 1, "blank": 1, "too_long": 1, "over_max_entries": 1}
    (path := tmp_path / "meta.JSON").write_text('"dog"')
    with pytest.raises(ValueError, match=r"expected a JSON list of strings .* found a JSON str"):
        load_entries(path)
    path.write_bytes(b'["caf\xe9"]')
    with pytest.raises(ValueError, match="not a JSON list of entries"):
        load_entries(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"no valid entries \(2 read; skipped: \{'not_a_string': 2\}\)"):
        load_entries(path)


@pytest.mark.parametrize(("rule", "space", "warned"), [(True, True, 2), (True, False, 0), ("smart", True, 0)])
def test_metaclip_rule_with_spaced_entries_warns(caplog, rule, space, warned) -> None:
    """MetaCLIP never matches an entry with punctuation inside; spaced entries do, so a build meant to reproduce
    MetaCLIP (case_sensitive=true) is told how many such entries its list holds."""
    cfg = MatchConfig(case_sensitive=rule, space_entries=space)
    entries = ["St. Louis", "dog", "Yahoo!", "rock 'n' roll"]
    with caplog.at_level(logging.WARNING, logger="witbuild.curate.match"):
        assert warn_spaced_entries(entries, cfg) == warned
    assert ("space_entries=false to reproduce MetaCLIP" in caplog.text) is bool(warned)
    texts = ["Arch in St. Louis.", "Yahoo! logo"]
    matcher = build_matcher(entries, rule, space_entries=space)
    assert [bool(m) for m in matcher.match_batch(texts)] == [space, space]


def test_matcher_from_config_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("new york\nyork\n", encoding="utf-8")
    cfg = MatchConfig(entries_path=str(path))
    m1 = matcher_from_config(cfg)
    assert matcher_from_config(cfg) is m1
    assert m1.match("I love new york") == [0, 1]
    assert matcher_from_config(MatchConfig(entries_path=str(path), case_sensitive=False)) is not m1
    assert matcher_from_config(cfg.model_copy(update={"engine": "aho-corasick"})) is not m1
    assert m1.match("I love New York") == [0, 1]  # the default, smart case
    assert matcher_from_config(cfg.model_copy(update={"case_sensitive": True})).match("I love New York") == []
    assert matcher_from_config(cfg, language="de") is not m1  # another language folds captions otherwise
    with pytest.raises(ValueError, match="entries_path"):
        matcher_from_config(MatchConfig())
    with pytest.raises(ValidationError):
        MatchConfig(case_sensitve=False)
