"""CLIP's tokenizer (``trainer.tokenizer.load_clip_bpe``, Hugging Face ``tokenizers``) against open_clip's own.

The reference is ``open_clip/tokenizer.py`` and CLIP's vocabulary file from the open-clip-torch 3.3.0 wheel as
published, run as open_clip runs it. CLIP scores filter the pool (``clip_score.min``) and ``kind: clip`` trains
on these ids, so a caption tokenised otherwise than open_clip tokenises it scores otherwise than the checkpoint's
users measured. Texts: every Unicode character in context, and phrases of the 3,000 commonest words of wordfreq's
42 languages in four casings, with entities, odd spaces and mojibake.
"""

from __future__ import annotations

import json
import pickle
import random
import unicodedata

import pytest
import torch

from tests.helpers.reference_wheels import extract, load_module
from trainer.tokenizer import CLIP_END, CLIP_PATTERN, TextTokenizer, clip_clean, load_clip_bpe, train_bpe

TOKENIZER = "open_clip/tokenizer.py"
VOCAB = "open_clip/bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, open_clip's SimpleTokenizer), both from the wheel's vocabulary file, context 77."""
    files = extract("open_clip_torch", [TOKENIZER, VOCAB], tmp_path_factory.mktemp("open_clip"))
    reference = load_module(files[TOKENIZER], "open_clip_reference_tokenizer")
    return load_clip_bpe(files[VOCAB], 77), reference.SimpleTokenizer(bpe_path=str(files[VOCAB]), context_length=77)


def bpe_ids(tok: TextTokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.tok.encode_batch([clip_clean(t) for t in texts], add_special_tokens=False)]


def differing(ours: list[list[int]], theirs: list[list[int]], texts: list[str]) -> list[str]:
    return [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]


def test_every_character_tokenises_as_open_clip_tokenises_it(pair):
    """Each code point assigned in this Python's Unicode tables (14.0 in 3.11) inside a word, alone, and
    upper-cased: U+0345 (which CLIP's case-insensitive regex matches with no class) was the one that differed.
    Characters assigned since are letters to the ``regex`` module open_clip uses (its own, newer tables) and
    not to ``tokenizers``' regex: open_clip's ids for them depend on the installed ``regex`` release."""
    ours, ref = pair
    texts = []
    for c in range(0x09, 0x110000):
        ch = chr(c)
        if unicodedata.category(ch) not in ("Cs", "Cn", "Co"):
            texts.append(f"ab{ch}cd {ch} {ch.upper()}x")
    assert len(texts) > 140_000
    bad = differing(bpe_ids(ours, texts), [ref.encode(t) for t in texts], texts)
    assert not bad, f"{len(bad)} differ, e.g. {[t[2] for t in bad[:10]]}"


def phrases(seed: int = 1, per_language: int = 40) -> list[str]:
    import wordfreq

    rng = random.Random(seed)
    out = []
    for lang in sorted(wordfreq.available_languages()):
        words = wordfreq.top_n_list(lang, 3000)
        for _ in range(per_language):
            case = rng.choice([str, str.upper, str.title, str.capitalize])
            sep = rng.choice([" ", "  ", ", ", " - ", "\t", " &amp; ", "&nbsp;", "\u00a0", " | ", "\n"])
            text = case(sep.join(rng.sample(words, rng.randint(1, 40))))
            out += [text, text.encode("utf-8").decode("latin-1")]  # and its mojibake, which ftfy repairs
    return out


def test_captions_in_42_languages_give_open_clips_ids_and_tensor(pair):
    """Upper-case Greek ends its words in Σ: a per-character lowercase made it σ where Python's makes ς, and
    open_clip's ids differed for 114 of these phrases (all Greek) before the cleaning became open_clip's."""
    ours, ref = pair
    texts = phrases()
    assert {"el", "ja", "ar", "hi", "ru"} <= {lang for lang in __import__("wordfreq").available_languages()}
    bad = differing(bpe_ids(ours, texts), [ref.encode(t) for t in texts], texts)
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"
    assert torch.equal(ours(texts), ref(texts))  # the padded tensors, long phrases cut to 77 with the end token


def test_greek_capitals_end_in_final_sigma(pair):
    ours, ref = pair
    assert bpe_ids(ours, ["ΟΔΟΣ ΑΘΗΝΑΣ"]) == [ref.encode("ΟΔΟΣ ΑΘΗΝΑΣ")]
    assert clip_clean("ΟΔΟΣ  ΑΘΗΝΑΣ") == "οδος αθηνας"


# "'ſ" is CLIP's "'s" (its regex is case-insensitive and ſ folds to s); an entity for a combining mark in text
# with "<" in it (ftfy then leaves entities alone) stays decomposed, as open_clip leaves it
QUIRKS = ["it'ſ mine", "IT'ſ", "<3 Cafe&#769; au lait", "a < b: na&#239;ve", "<p>x&#837;y</p>"]


@pytest.mark.parametrize("text", QUIRKS)
def test_cleaning_quirks_follow_open_clip(pair, text):
    ours, ref = pair
    assert bpe_ids(ours, [text]) == [ref.encode(text)]


@pytest.mark.parametrize("text", ["<|endoftext|> a cat", "a dog <|startoftext|>", "prompt: <|endoftext|><|endoftext|>"])
def test_clips_control_tokens_written_in_a_caption_are_text(pair, text):
    """open_clip spells them out as text; they were its end token here, where the text tower pools, so the
    caption was cut there."""
    ours, ref = pair
    assert bpe_ids(ours, [text]) == [ref.encode(text)]
    ids = ours([text])[0].tolist()
    assert ids.count(ours.eot_id) == 1 and ids.count(ours.eot_id - 1) == 1 and ids[0] == ours.eot_id - 1


def test_open_clips_own_control_names_are_text_here_alone(pair):
    """open_clip 3.x names its control tokens ``<start_of_text>``/``<end_of_text>`` and turns those strings,
    written in a caption, into the control ids: there, and only there, the ids differ on purpose."""
    ours, ref = pair
    text = "a cat <end_of_text> on a mat"
    theirs = ref.encode(text)
    assert ref.eot_token_id in theirs  # open_clip cuts the caption at the word
    mine = ours([text])[0].tolist()
    assert mine.count(ours.eot_id) == 1 and mine.index(ours.eot_id) > len(theirs)  # ours keeps all of it


def test_a_trained_bpe_spells_its_control_names_out_too():
    """Also in a copy pickled to a loader worker or an executor: ``tokenizers`` pickles without the setting."""
    tok = train_bpe(["a cat on a mat", "a dog in the snow"] * 30, 300, 32)
    for copy in (tok, pickle.loads(pickle.dumps(tok))):
        ids = copy(["<end> a cat <start> <pad> on a mat"])[0].tolist()
        assert ids.count(copy.eot_id) == 1
        assert copy.decode(ids).strip() == "<end> a cat <start> <pad> on a mat"


def test_a_saved_tokenizer_loads_with_the_same_ids(pair):
    """Checkpoints carry the tokenizer as JSON; the literal-text setting is not in it and is set on load. A
    tokenizer saved before the cleaning moved into Python (its JSON with NFC, whitespace and lowercase
    normalisers) gives the same ids."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    ours, ref = pair
    texts = ["ΟΔΟΣ <|endoftext|> Fish &amp; chips", "Café  au lait", "x" * 300, *QUIRKS, "\u1c89 word"]
    loaded = TextTokenizer.from_json(ours.to_json())
    assert torch.equal(loaded(texts), ref(texts))
    old = TextTokenizer.from_json(ours.to_json())
    old.tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    old.tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN.replace("'[sſ]", "'s")), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    saved = json.loads(old.tok.to_str())
    assert saved["normalizer"] is not None and "'[sſ]" not in json.dumps(saved["pre_tokenizer"])
    old = TextTokenizer.from_json(json.dumps({**json.loads(ours.to_json()), "tokenizer": saved}))
    assert old._eot == CLIP_END
    assert torch.equal(old(texts), ref(texts))


def test_decoding_a_row_gives_open_clips_text(pair):
    """A row of ids back to text: up to the end token (CLIP pads with id 0, which is "!"), word ends as spaces."""
    ours, ref = pair
    texts = ["a handwritten digit seven", "Café au lait &amp; ΟΔΟΣ 😀", "it's 3D-printed!"]
    for row in ours(texts):
        ids = row.tolist()
        body = ids[1: ids.index(ours.eot_id)]
        assert ours.decode(ids) == ref.decode(body).strip() == ours.decode(body)
    assert ours.decode(ours(["a cat"])[0].tolist()) == "a cat"  # no "!" for the padding (id 0)
