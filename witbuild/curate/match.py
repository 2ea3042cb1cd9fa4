"""MetaCLIP substring matching of captions against a query list (the "metadata"), with a token trie.

MetaCLIP's ``substr_matching`` (metaclip/metaclip1/substr_matching.py) pads the caption with spaces, puts spaces
around each of ``, . ; : ? ! ``` `` (comma, period, semicolon, colon, question mark, exclamation mark and
backtick; note: backtick, not double quote), turns tab/newline/CR into spaces, and then reports every entry ``e``
for which ``f" {e} "`` is a substring. That is a word-boundary match without a tokenizer: "new york" matches
"I love New York." only case-insensitively, "york" matches it too, and "ork" does not.

The naive loop costs |entries| substring searches per caption, hopeless for 500k entries. :class:`Matcher` uses
the fact that every key ``f" {e} "`` starts and ends with a space: with ``S`` the spaced caption and
``S.split(" ")`` its tokens ``t_0 .. t_m`` (split on U+0020 only, empty tokens kept), ``" X "`` is a substring of
``S`` exactly when ``X == " ".join(t_j .. t_{k-1})`` for some ``1 <= j < k <= m``, i.e. when the tokens of ``X``
(``X.split(" ")``) are a run of the caption's tokens that is not its first or last one (those are the padding's).
So the keys go into a trie over tokens (a token id per distinct key token, a node per token prefix of a key), and
matching walks it from every caption token: one dict lookup per caption token, then integer lookups only while the
run is still the prefix of some key. The result is the same set as the loop, overlapping matches included
(:func:`naive_match` is that loop, kept as the reference for tests).

:meth:`Matcher.match_batch` does the walk for thousands of captions at once: they are joined with a separator
character that occurs in no key (and in none of the captions), spaced and split in one go (spacing replaces single
characters, so spacing the joined text equals joining the spaced captions; folding too, see :func:`fold`), the
tokens looked up in one pass, and the trie walked level by level with numpy.

Entries that contain the wrapped punctuation ("St. Louis", "e.g.") can never match in MetaCLIP, because the
caption's punctuation is spaced out and the entry's is not. With ``space_entries=True`` (the default) entries
are spaced the same way, so "St. Louis" matches "... in St. Louis." ; ``space_entries=False`` is MetaCLIP
verbatim. Both :class:`Matcher` and :func:`naive_match` take the option, and agree for either value.

MetaCLIP matches case-sensitively, which suits metadata that spells case out (Wikipedia titles), but a
list of lower-cased words (wordfreq's, which ``witbuild querylist build`` uses) then misses every capitalised
mention: "Golden Retriever puppy" matches neither "golden" nor "retriever". The default rule, "smart" (as editors'
smart case), matches an entry without capitals against the caption folded and an entry with capitals as
written (:class:`Matcher` walks one folded trie and checks a cased entry's hits against the caption as
written; :class:`SmartCaseMatcher` does it with two automata for the aho-corasick engine); ``case_sensitive=True``
is MetaCLIP's rule.

Folding (:func:`fold`) is wordfreq's ``preprocess_text`` for the query list's language, the form wordfreq's words
are stored in: case folding (``Straße`` is ``strasse``, a final ``ς`` is ``σ``), Turkish dotted and dotless i,
Arabic and Hebrew vowel marks and tatweel removed, Serbian in Latin letters, NFKC outside the Latin, Greek and
Cyrillic scripts. Captions and the uncased entries' keys are folded alike, token by token, so folding never moves
a token boundary.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import chain, repeat
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

METACLIP_PUNCT = ",.;:?!`"
"""The characters MetaCLIP's ``spacing`` wraps in spaces, in its order."""
_CHARS_TO_SPACE = ("\t", "\n", "\r")

SKIP_BLANK = "blank"
SKIP_DUPLICATE = "duplicate"
SKIP_TOO_LONG = "too_long"
SKIP_INVALID_UTF8 = "invalid_utf8"
SKIP_OVER_MAX_ENTRIES = "over_max_entries"
SKIP_NOT_A_STRING = "not_a_string"

_CHUNK = 4096  # captions per vectorised chunk in Matcher.match_batch
# Separator candidates for joining a chunk's captions: the first one found in no key (and no punct) is used.
_SEP_CANDIDATES = "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\ufdd0\uffff"
_NO_TOKEN = -1  # a caption token that is no token of any key
_BOUNDARY = -2  # the separator between joined captions
_EDGE_SHIFT = 32  # a trie edge's code: parent node << _EDGE_SHIFT | token id


CaseRule = bool | Literal["smart"]
"""How matching treats case: True (MetaCLIP), False (everything folded) or "smart" (:func:`is_cased`)."""

FOLDING_RULE = "wordfreq preprocess_text"
"""What :func:`fold` applies, as the query list's manifest records it (``"wordfreq preprocess_text, de"``)."""


def fold(text: str, language: str = "en") -> str:
    """The uncased form matching compares: wordfreq's ``preprocess_text`` for ``language``, the form of wordfreq's
    words (``Straße`` → ``strasse``, ``İstanbul`` → ``istanbul`` in Turkish, ``كَلِمَة`` → ``كلمة``), so that a
    list built from wordfreq finds its words as captions write them. Folding keeps the U+0020 tokens of ``text``
    as they are: a token that it would give a space (NFKC makes one of a no-break space, ``¨`` or ``ﷺ``) is kept
    as written, so the spaced caption and its folded form line up token for token. Folding leaves wordfreq's
    words as they are (tests/test_non_english_querylist.py), so an entry's key is the word."""
    return _folder(language)(text)


def folding_name(language: str) -> str:
    """How captions are folded for a list of ``language``, as its manifest records it."""
    return f"{FOLDING_RULE}, {language}"


@lru_cache(maxsize=64)
def _folder(language: str) -> Callable[[str], str]:
    """The folding function of a language: ``str.casefold`` after NFC where that is all wordfreq does (English,
    German, Greek, Russian … on NFC text), wordfreq itself for the others (it costs more)."""
    if casefold_is_folding(language):
        return _casefold
    from wordfreq.preprocess import preprocess_text

    @lru_cache(maxsize=1 << 16)
    def token(tok: str) -> str:
        folded = preprocess_text(tok, language)
        return tok if " " in folded else folded

    def folder(text: str) -> str:
        # Every step of preprocess_text works within the runs between spaces (a space is a normalisation starter
        # that composes with nothing; the other steps map single characters) and never removes a space: unless
        # it adds one, the whole text folds as its tokens do, one call instead of one per token.
        folded = preprocess_text(text, language)
        if folded.count(" ") == text.count(" "):
            return folded
        return " ".join(map(token, text.split(" ")))

    return folder


def _casefold(text: str) -> str:
    """wordfreq's ``preprocess_text`` for a language it only case-folds (NFC, then ``str.casefold``)."""
    return (text if text.isascii() else unicodedata.normalize("NFC", text)).casefold()


def casefold_is_folding(language: str) -> bool:
    """Whether wordfreq's ``preprocess_text`` for ``language`` is NFC and ``str.casefold`` only: no NFKC,
    transliteration, mark removal, dotless i or comma/cedilla fixes. English needs no wordfreq to say so."""
    if language == "en":
        return True
    from wordfreq.language_info import get_language_info

    info = get_language_info(language)
    return info["normal_form"] == "NFC" and not any(
        info[step] for step in ("transliteration", "remove_marks", "dotless_i", "diacritics_under"))


def is_cased(entry: str) -> bool:
    """Whether an entry spells case out (has a letter that lower-casing changes): under the "smart" rule it matches
    only as written; any other entry matches a caption folded (:func:`fold`: ``straße`` matches ``STRASSE``)."""
    return entry != entry.lower()


class MatchConfig(BaseModel):
    """Query list and matching options."""

    model_config = ConfigDict(extra="forbid")

    entries_path: str | None = Field(
        None, description="The query list: a UTF-8 text file, one entry per line, or a .json file holding a JSON "
        "list of strings (MetaCLIP's metadata.json).")
    case_sensitive: CaseRule = Field(
        "smart",
        description="smart: an entry written without capitals matches its words in any case ('dog' matches "
        "'Dog' and 'DOG'), an entry with capitals only as written ('Apple' not 'apple'), so a list of "
        "lower-cased words (witbuild querylist build) misses no capitalised caption and a list that "
        "spells case out keeps its distinctions; true: MetaCLIP's rule, case-sensitive for every entry "
        "(with space_entries false, MetaCLIP's curation with its metadata.json); false: captions and entries "
        "folded. Folding is wordfreq's for querylist.language (case folding: 'Straße' matches 'strasse'; Turkish "
        "i; Arabic and Hebrew vowel marks dropped), the form of its words.",
    )
    space_entries: bool = Field(
        True,
        description="Space out punctuation inside entries as in captions, so "
        "'St. Louis' can match; False: MetaCLIP verbatim (such entries never match).",
    )
    punct: str = Field(METACLIP_PUNCT, description="Characters wrapped in spaces before matching (MetaCLIP's).")
    engine: Literal["tokens", "aho-corasick"] = Field(
        "tokens",
        description="tokens: a token trie walked with numpy over batches (about 3x faster); aho-corasick: a "
        "pyahocorasick automaton over the spaced keys. Both return exactly MetaCLIP's matches.",
    )


def _space_chars(text: str, punct: str) -> str:
    """:func:`spacing` without the padding: each ``punct`` char wrapped in spaces, then tab/newline/CR to spaces.
    Each step replaces single characters, so spacing a concatenation equals concatenating the spaced parts."""
    for c in punct:
        text = text.replace(c, f" {c} ")
    for c in _CHARS_TO_SPACE:
        text = text.replace(c, " ")
    return text


def spacing(text: str, punct: str = METACLIP_PUNCT) -> str:
    """MetaCLIP's ``spacing``: pad with one space each side, wrap each ``punct`` char in spaces, then turn tab,
    newline and carriage return into spaces."""
    return _space_chars(f" {text} ", punct)


def entry_key(
    entry: str, *, case_sensitive: bool = True, space_entries: bool = True, punct: str = METACLIP_PUNCT,
    language: str = "en",
) -> str:
    """The string searched for in a spaced caption: ``f" {entry} "``, the entry spaced like a caption first when
    ``space_entries`` (its own padding dropped, so the key has one space each side as in MetaCLIP), folded for
    ``language`` unless ``case_sensitive``."""
    if space_entries:
        entry = spacing(entry, punct)[1:-1]
    key = f" {entry} "
    return key if case_sensitive else fold(key, language)


def prepare_text(text: str, *, case_sensitive: bool = True, punct: str = METACLIP_PUNCT, language: str = "en") -> str:
    """A caption as matched: :func:`spacing`, folded for ``language`` unless ``case_sensitive``."""
    spaced = spacing(text, punct)
    return spaced if case_sensitive else fold(spaced, language)


def naive_match(
    text: str,
    entries: Sequence[str],
    case_sensitive: CaseRule = True,
    *,
    space_entries: bool = True,
    punct: str = METACLIP_PUNCT,
    language: str = "en",
) -> list[int]:
    """MetaCLIP's loop, literally: ids of the entries whose key is a substring of the spaced caption. O(entries);
    the reference :class:`Matcher` is tested against."""
    return naive_match_batch([text], entries, case_sensitive, space_entries=space_entries, punct=punct,
                             language=language)[0]


def naive_match_batch(
    texts: Iterable[str],
    entries: Sequence[str],
    case_sensitive: CaseRule = True,
    *,
    space_entries: bool = True,
    punct: str = METACLIP_PUNCT,
    language: str = "en",
) -> list[list[int]]:
    """:func:`naive_match` per text, with the entry keys built once (as MetaCLIP's global ``spaced_metadata``).
    An entry matched as written (every one under True, a cased one under "smart") has its key looked for in the
    spaced caption, any other its folded key in the spaced caption folded."""
    as_written = [case_sensitive is True or (case_sensitive == "smart" and is_cased(e)) for e in entries]
    keys = [entry_key(e, case_sensitive=w, space_entries=space_entries, punct=punct, language=language)
            for e, w in zip(entries, as_written, strict=True)]
    out = []
    for text in texts:
        spaced = spacing(text, punct)
        folded = fold(spaced, language) if not all(as_written) else spaced
        out.append([i for i, key in enumerate(keys) if key in (spaced if as_written[i] else folded)])
    return out


def keys_to_ids(entries: Sequence[str], case_sensitive: bool, space_entries: bool, punct: str,
                ids: Sequence[int] | None = None, language: str = "en") -> dict[str, list[int]]:
    """Each matching key ``" entry "`` and the ids of the entries that share it (``ids[i]`` for entry i, default
    i); empty entries are an error (their key would match any caption with two spaces in a row)."""
    ids_by_key: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        if not e or not e.strip():
            raise ValueError(f"query list entry {i if ids is None else ids[i]} is empty or only whitespace")
        key = entry_key(e, case_sensitive=case_sensitive, space_entries=space_entries, punct=punct, language=language)
        ids_by_key.setdefault(key, []).append(i if ids is None else ids[i])
    return ids_by_key


class Matcher:
    """Substring matcher over a fixed entry list (a token trie, see the module docstring); build once per process,
    then match many captions.

    Entries that share a key (e.g. "Apple" and "apple" when not case-sensitive) are all reported. Empty or
    whitespace-only entries are rejected: their key would match any caption with two spaces in a row. ``ids``:
    the id reported for each entry (default its index), for a matcher over part of a list. ``language``: whose
    folding (:func:`fold`) the uncased side uses.

    Under the "smart" rule with both kinds of entry, one trie holds every key folded and the caption is walked
    folded once; a hit of a cased entry is then kept only if the caption's tokens as written are the entry's
    (folding keeps the tokens, so the two token lists line up). A list of one kind is one of the plain rules.
    """

    def __init__(
        self,
        entries: Sequence[str],
        case_sensitive: CaseRule = True,
        *,
        space_entries: bool = True,
        punct: str = METACLIP_PUNCT,
        ids: Sequence[int] | None = None,
        language: str = "en",
    ) -> None:
        self.entries = list(entries)
        self.case_sensitive = case_sensitive
        self.space_entries = space_entries
        self.punct = punct
        self.language = language
        self._id_space = max(ids, default=-1) + 1 if ids is not None else len(self.entries)
        cased = [case_sensitive == "smart" and is_cased(e) for e in self.entries]
        self._fold = case_sensitive is False or (case_sensitive == "smart" and not all(cased))
        ids_by_key = keys_to_ids(self.entries, not self._fold, space_entries, punct, ids, language)
        # smart, mixed list: the tokens each cased entry's hit must have as written
        self._as_written: dict[int, list[str]] = {
            i if ids is None else ids[i]: entry_key(e, space_entries=space_entries, punct=punct)[1:-1].split(" ")
            for i, e in enumerate(self.entries) if cased[i] and self._fold}
        self._id_cased = np.zeros(self._id_space, dtype=bool)
        self._id_cased[list(self._as_written)] = True
        self._empty = not ids_by_key
        self._build_trie(ids_by_key)
        logger.info("matcher built: %d entries, %d distinct keys", len(self.entries), len(ids_by_key))

    def _build_trie(self, ids_by_key: dict[str, list[int]]) -> None:
        """Token ids (``_tok``), trie nodes (one per token prefix of a key) and their edges, as numpy arrays."""
        tok: dict[str, int] = {}
        first: dict[int, int] = {}  # token id -> node of the one-token prefix
        edges: dict[int, int] = {}  # node << _EDGE_SHIFT | token id -> child node
        has_children: list[bool] = []
        key_nodes: list[int] = []
        for key in ids_by_key:
            parts = key[1:-1].split(" ")
            t = tok.setdefault(parts[0], len(tok))
            node = first.get(t)
            if node is None:
                node = first[t] = len(has_children)
                has_children.append(False)
            for part in parts[1:]:
                t = tok.setdefault(part, len(tok))
                has_children[node] = True
                code = node << _EDGE_SHIFT | t
                child = edges.get(code)
                if child is None:
                    child = edges[code] = len(has_children)
                    has_children.append(False)
                node = child
            key_nodes.append(node)
        n_tokens, n_nodes = len(tok), len(has_children)
        self._first_node = np.full(n_tokens, -1, dtype=np.int64)
        self._first_node[np.fromiter(first.keys(), np.int64, len(first))] = np.fromiter(first.values(), np.int64)
        self._has_children = np.array(has_children, dtype=bool)
        # a node's entry ids: _ids[_node_start[node] : _node_start[node] + _node_len[node]] (length 0: not a key)
        lens = np.fromiter(map(len, ids_by_key.values()), np.int64, len(ids_by_key))
        self._ids = np.fromiter(chain.from_iterable(ids_by_key.values()), np.int64, int(lens.sum()))
        self._node_len = np.zeros(n_nodes, dtype=np.int64)
        self._node_start = np.zeros(n_nodes, dtype=np.int64)
        key_nodes_arr = np.array(key_nodes, dtype=np.int64)
        self._node_len[key_nodes_arr] = lens
        self._node_start[key_nodes_arr] = np.cumsum(lens) - lens
        self._single_ids = bool(lens.size == 0 or lens.max() == 1)
        # edges as sorted codes node << _EDGE_SHIFT | token id (exact integers: searched with np.searchsorted)
        if n_tokens >= 1 << _EDGE_SHIFT or n_nodes >= 1 << (63 - _EDGE_SHIFT):
            raise ValueError(f"query list too large: {n_tokens:,} distinct tokens, {n_nodes:,} token prefixes")
        codes = np.fromiter(edges.keys(), np.int64, len(edges))
        order = np.argsort(codes)
        self._edge_codes = codes[order]
        self._edge_child = np.fromiter(edges.values(), np.int64, len(edges))[order]
        # the separator that joins captions in match_batch: in no key, so it never extends a match
        all_keys = "".join(ids_by_key)
        self._sep = next((c for c in _SEP_CANDIDATES if c not in all_keys and c not in self.punct), None)
        if self._sep is not None:
            tok[self._sep] = _BOUNDARY
        self._tok = tok
        self._scalar: tuple | None = None  # match()'s plain-Python copy of the trie, built on first use

    def __len__(self) -> int:
        return len(self.entries)

    def _scalar_tables(self) -> tuple:
        if self._scalar is None:
            ids = self._ids.tolist()
            node_ids: list[list[int] | None] = [
                ids[s : s + n] if n else None
                for s, n in zip(self._node_start.tolist(), self._node_len.tolist(), strict=True)
            ]
            edges = dict(zip(self._edge_codes.tolist(), self._edge_child.tolist(), strict=True))
            self._scalar = (self._first_node.tolist(), edges, node_ids, self._has_children.tolist())
        return self._scalar

    def match(self, text: str) -> list[int]:
        """Sorted unique ids of the entries matched in ``text``."""
        if self._empty or not text:
            return []
        first, edges, node_ids, has_children = self._scalar_tables()
        spaced = spacing(text, self.punct)
        toks = (fold(spaced, self.language) if self._fold else spaced).split(" ")
        tids = list(map(self._tok.get, toks, repeat(_NO_TOKEN)))
        tids[0] = tids[-1] = _NO_TOKEN  # the padding's tokens start or end no match
        as_written = self._as_written
        written = spaced.split(" ") if as_written else toks
        found: list[int] = []
        for j in range(1, len(tids) - 1):
            t = tids[j]
            if t < 0:
                continue
            node = first[t]
            k = j + 1
            while node >= 0:
                ids = node_ids[node]
                if ids:
                    found += [i for i in ids if i not in as_written or written[j:k] == as_written[i]]
                t = tids[k]
                if t < 0 or not has_children[node]:
                    break
                node = edges.get(node << _EDGE_SHIFT | t, -1)
                k += 1
        return sorted(set(found)) if len(found) > 1 else found

    def match_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        """:meth:`match` per text (None: no match), vectorised over chunks of captions."""
        texts = texts if isinstance(texts, list) else list(texts)
        if self._empty:
            return [[] for _ in texts]
        if self._sep is None:
            return [self.match(t) if t else [] for t in texts]
        # Nothing here makes reference cycles; pausing the collector saves it from traversing the growing list of
        # results (and every other live object) over and over during a large batch.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            out: list[list[int]] = []
            for start in range(0, len(texts), _CHUNK):
                out += self._match_chunk(texts[start : start + _CHUNK])
            return out
        finally:
            if gc_was_enabled:
                gc.enable()

    def _match_chunk(self, texts: list[str | None]) -> list[list[int]]:
        n = len(texts)
        sep = self._sep
        if not n or sep is None:
            return [self.match(t) if t else [] for t in texts]
        raw = f"{sep} {f' {sep} '.join([t if t else '' for t in texts])} {sep}"
        if raw.count(sep) != n + 1:  # some captions contain the separator: those go one by one
            own = [bool(t) and sep in t for t in texts]
            rest = iter(self._match_chunk([t for t, o in zip(texts, own, strict=True) if not o]))
            return [self.match(t) if o else next(rest) for t, o in zip(texts, own, strict=True)]
        spaced = _space_chars(raw, self.punct)
        toks = (fold(spaced, self.language) if self._fold else spaced).split(" ")
        tids = np.fromiter(map(self._tok.get, toks, repeat(_NO_TOKEN)), np.int64, len(toks))
        bounds = np.flatnonzero(tids == _BOUNDARY)  # n + 1 of them, the first at 0 and the last at the end

        # level 1: every caption token that starts a key; then extend runs one token at a time along the edges
        pos = np.flatnonzero(tids >= 0)
        node = self._first_node[tids[pos]]
        ok = node >= 0
        pos, node = pos[ok], node[ok]
        hit_pos: list[np.ndarray] = []
        hit_node: list[np.ndarray] = []
        edge_codes, edge_child = self._edge_codes, self._edge_child
        step = 1
        while pos.size:
            is_key = self._node_len[node] > 0
            hit_pos.append(pos[is_key])
            hit_node.append(node[is_key])
            more = self._has_children[node]
            pos, node = pos[more], node[more]
            if not pos.size:
                break
            nxt = tids[pos + step]  # a boundary (or unknown) token ends the run; the last token is a boundary
            ok = nxt >= 0
            pos, code = pos[ok], node[ok] << _EDGE_SHIFT | nxt[ok]
            order = np.argsort(code)
            pos, code = pos[order], code[order]
            i = np.searchsorted(edge_codes, code)
            np.minimum(i, edge_codes.size - 1, out=i)
            found = edge_codes[i] == code
            pos, node = pos[found], edge_child[i[found]]
            step += 1

        hpos = np.concatenate(hit_pos) if hit_pos else pos
        if not hpos.size:
            return [[] for _ in range(n)]
        hnode = np.concatenate(hit_node)
        cap = np.searchsorted(bounds, hpos) - 1
        if self._single_ids:
            ids = self._ids[self._node_start[hnode]]
        else:
            lens = self._node_len[hnode]
            cap, hpos = np.repeat(cap, lens), np.repeat(hpos, lens)
            within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            ids = self._ids[np.repeat(self._node_start[hnode], lens) + within]
        if self._as_written:
            cap, ids = self._keep_as_written(spaced, hpos, cap, ids)
        n_entries = self._id_space
        comb = cap * n_entries + ids
        comb.sort()
        if comb.size > 1:
            comb = comb[np.concatenate(([True], comb[1:] != comb[:-1]))]
        cap = comb // n_entries
        flat = (comb - cap * n_entries).tolist()
        ends = np.cumsum(np.bincount(cap, minlength=n)).tolist()
        return list(map(flat.__getitem__, map(slice, [0, *ends[:-1]], ends)))

    def _keep_as_written(self, spaced: str, hpos: np.ndarray, cap: np.ndarray,
                         ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The hits (caption, id) without those of cased entries whose tokens in ``spaced`` (the chunk spaced, not
        folded) differ from the entry's as written."""
        check = np.flatnonzero(self._id_cased[ids])
        if not check.size:
            return cap, ids
        written = spaced.split(" ")
        as_written = self._as_written
        wrong = [i for i, p, e in zip(check.tolist(), hpos[check].tolist(), ids[check].tolist(), strict=True)
                 if written[p : p + len(as_written[e])] != as_written[e]]
        if not wrong:
            return cap, ids
        keep = np.ones(ids.size, dtype=bool)
        keep[wrong] = False
        return cap[keep], ids[keep]


class AhoCorasickMatcher:
    """The same matches from a pyahocorasick automaton over the keys ``f" {entry} "`` (MetaCLIP's rule read
    literally: substring search in the spaced caption). Simpler than :class:`Matcher`, about 3x slower."""

    def __init__(
        self,
        entries: Sequence[str],
        case_sensitive: bool = True,
        *,
        space_entries: bool = True,
        punct: str = METACLIP_PUNCT,
        ids: Sequence[int] | None = None,
        language: str = "en",
    ) -> None:
        import ahocorasick

        self.entries = list(entries)
        self.case_sensitive = case_sensitive
        self.punct = punct
        self.language = language
        ids_by_key = keys_to_ids(self.entries, case_sensitive, space_entries, punct, ids, language)
        self._automaton = ahocorasick.Automaton()
        for key, key_ids in ids_by_key.items():
            self._automaton.add_word(key, tuple(key_ids))
        if ids_by_key:
            self._automaton.make_automaton()
        self._empty = not ids_by_key

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str | None) -> list[int]:
        """Sorted unique ids of the entries matched in ``text``."""
        if self._empty or not text:
            return []
        spaced = prepare_text(text, case_sensitive=self.case_sensitive, punct=self.punct, language=self.language)
        found: set[int] = set()
        for _end, ids in self._automaton.iter(spaced):
            found.update(ids)
        return sorted(found)

    def match_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        return [self.match(t) for t in texts]


def case_variants(entries: Sequence[str]) -> list[tuple[str, ...]]:
    """Groups of entries that differ only in case and include a lower-case one ("apple", "Apple"), in list order:
    a list that spells case out this way (MetaCLIP's metadata) means to tell them apart, which the "smart" rule
    does not do for the lower-case entry (it matches "Apple" in a caption too)."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        groups.setdefault(e.lower(), []).append(e)
    return [tuple(g) for low, g in groups.items() if len(g) > 1 and low in g]


def warn_case_variants(entries: Sequence[str], rule: CaseRule) -> int:
    """Under the "smart" rule, log the entries of the list that differ only in case (:func:`case_variants`); the
    number of groups."""
    groups = case_variants(entries) if rule == "smart" else []
    if groups:
        logger.warning(
            "query list: %d groups of entries differ only in case (e.g. %s); under match.case_sensitive=smart the "
            "lower-case entry of each matches every casing; set match.case_sensitive=true for MetaCLIP's rule, "
            "which tells them apart", len(groups), ", ".join("/".join(g) for g in groups[:3]))
    return len(groups)


def warn_spaced_entries(entries: Sequence[str], cfg: MatchConfig) -> int:
    """Under MetaCLIP's case rule (``case_sensitive=true``) with ``space_entries``, log how many entries hold
    punctuation that MetaCLIP never matches ("St. Louis"): such a build is not MetaCLIP's curation; the number."""
    if cfg.case_sensitive is not True or not cfg.space_entries:
        return 0
    spaced = [e for e in entries if any(ch in cfg.punct for ch in e)]
    if spaced:
        logger.warning(
            "query list: %d entries hold punctuation (e.g. %s) that MetaCLIP's rule never matches; they match here "
            "because match.space_entries is on: set match.space_entries=false to reproduce MetaCLIP's curation",
            len(spaced), ", ".join(repr(e) for e in spaced[:3]))
    return len(spaced)


class SmartCaseMatcher:
    """The "smart" case rule from two matchers of one engine (the aho-corasick one; :class:`Matcher` does it in one
    trie), each reporting the full list's ids: the cased entries (:func:`is_cased`) matched case-sensitively, the
    others folded; a caption's ids are the union. A list with only one kind runs one matcher."""

    def __init__(self, engine: type[Matcher | AhoCorasickMatcher], entries: Sequence[str], *,
                 space_entries: bool = True, punct: str = METACLIP_PUNCT, language: str = "en") -> None:
        self.entries = list(entries)
        cased = [is_cased(e) for e in self.entries]
        self._parts = []
        for as_written in (True, False):
            ids = [i for i, c in enumerate(cased) if c is as_written]
            if ids or (not self.entries and not as_written):
                self._parts.append(engine([self.entries[i] for i in ids], as_written, space_entries=space_entries,
                                          punct=punct, ids=ids, language=language))

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str | None) -> list[int]:
        """Sorted unique ids of the entries matched in ``text``."""
        return self.match_batch([text])[0]

    def match_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        texts = texts if isinstance(texts, list) else list(texts)
        if len(self._parts) == 1:
            return self._parts[0].match_batch(texts)
        cased, plain = (part.match_batch(texts) for part in self._parts)
        return [sorted(a + b) if a and b else a or b for a, b in zip(cased, plain, strict=True)]


AnyMatcher = Matcher | AhoCorasickMatcher | SmartCaseMatcher


def build_matcher(entries: Sequence[str], case_sensitive: CaseRule = "smart", *, engine: str = "tokens",
                  space_entries: bool = True, punct: str = METACLIP_PUNCT, language: str = "en") -> AnyMatcher:
    """The matcher of an engine ("tokens" or "aho-corasick") under a case rule, folding for ``language``."""
    kw = {"space_entries": space_entries, "punct": punct, "language": language}
    if engine == "tokens":
        return Matcher(entries, case_sensitive, **kw)
    if case_sensitive == "smart":
        return SmartCaseMatcher(AhoCorasickMatcher, entries, **kw)
    return AhoCorasickMatcher(entries, case_sensitive, **kw)


def make_matcher(entries: Sequence[str], cfg: MatchConfig, language: str = "en") -> AnyMatcher:
    """The matcher ``cfg`` describes for a list of ``language`` (its folding, :func:`fold`), built once per process
    by the caller."""
    return build_matcher(entries, cfg.case_sensitive, engine=cfg.engine, space_entries=cfg.space_entries,
                         punct=cfg.punct, language=language)


def load_entries(
    path: str | os.PathLike[str], max_chars: int = 200, max_entries: int | None = None
) -> tuple[list[str], Counter[str]]:
    """Read a query list: one entry per line, UTF-8, or, for a ``.json`` file, a JSON list of strings (MetaCLIP's
    ``metadata.json``). Returns the entries and a Counter of skipped entries by reason.

    Each entry is stripped, its inner whitespace collapsed and NFC-normalised (as captions are). Skipped:
    ``blank`` entries, ``duplicate`` entries (after that clean-up; the first one stays), entries longer than
    ``max_chars`` (``too_long``), lines that are not valid UTF-8 (``invalid_utf8``; a UTF-8 BOM is allowed), JSON
    items that are not strings (``not_a_string``), and valid entries beyond ``max_entries``
    (``over_max_entries``). Raises ValueError when no entry is left, or when a ``.json`` file is not a JSON list.
    """
    data = Path(path).read_bytes()
    skipped: Counter[str] = Counter()
    is_json = str(path).lower().endswith(".json")
    raw_entries = _json_items(path, data, skipped) if is_json else _lines(path, data, skipped)
    entries: list[str] = []
    seen: set[str] = set()
    total = sum(skipped.values())
    for line in raw_entries:
        total += 1
        entry = unicodedata.normalize("NFC", " ".join(line.split()))
        if not entry:
            skipped[SKIP_BLANK] += 1
        elif len(entry) > max_chars:
            skipped[SKIP_TOO_LONG] += 1
        elif entry in seen:
            skipped[SKIP_DUPLICATE] += 1
        elif max_entries is not None and len(entries) >= max_entries:
            skipped[SKIP_OVER_MAX_ENTRIES] += 1
        else:
            seen.add(entry)
            entries.append(entry)
    if not entries:
        raise ValueError(f"query list {path} has no valid entries ({total} read; skipped: {dict(skipped)})")
    if skipped:
        logger.warning("query list %s: %d entries, skipped %s", path, len(entries), dict(skipped))
    return entries, skipped


def _lines(path: str | os.PathLike[str], data: bytes, skipped: Counter[str]) -> list[str]:
    """The UTF-8 lines of a text list; a line that is not UTF-8 is counted in ``skipped`` and left out."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    found = []
    for lineno, raw in enumerate(lines, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            found.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped[SKIP_INVALID_UTF8] += 1
            logger.debug("%s:%d: not UTF-8, skipped", path, lineno)
    return found


def _json_items(path: str | os.PathLike[str], data: bytes, skipped: Counter[str]) -> list[str]:
    """The strings of a JSON list (MetaCLIP's ``metadata.json``): read as lines, such a file would be one entry."""
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"query list {path}: not a JSON list of entries ({exc})") from None
    if not isinstance(items, list):
        raise ValueError(f"query list {path}: expected a JSON list of strings (MetaCLIP's metadata.json), "
                         f"found a JSON {type(items).__name__}")
    strings = [item for item in items if isinstance(item, str)]
    if len(strings) < len(items):
        skipped[SKIP_NOT_A_STRING] += len(items) - len(strings)
    return strings


@lru_cache(maxsize=4)
def _cached_matcher(
    path: str,
    mtime_ns: int,
    cfg_json: str,
    max_chars: int,
    max_entries: int | None,
    language: str,
) -> AnyMatcher:
    entries, _ = load_entries(path, max_chars=max_chars, max_entries=max_entries)
    return make_matcher(entries, MatchConfig.model_validate_json(cfg_json), language)


def matcher_from_config(cfg: MatchConfig, max_chars: int = 200, max_entries: int | None = None,
                        language: str = "en") -> AnyMatcher:
    """The matcher ``cfg`` describes for its ``entries_path``, built once per process (again when the file
    changes). The limits are the build's ``querylist.max_entry_chars``/``max_entries``; ``language`` its
    ``querylist.language`` (the folding)."""
    if cfg.entries_path is None:
        raise ValueError("match.entries_path is not set: no query list to match against")
    path = str(Path(cfg.entries_path).expanduser().resolve())
    return _cached_matcher(
        path,
        os.stat(path).st_mtime_ns,
        cfg.model_dump_json(exclude={"entries_path"}),
        max_chars,
        max_entries,
        language,
    )
