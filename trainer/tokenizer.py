"""Text tokenizers: a byte-level BPE trained on the dataset's own captions, or CLIP's BPE vocabulary.

Both are Hugging Face ``tokenizers`` pipelines (Rust, batched), serialised as one JSON string
that travels inside every checkpoint, so a checkpoint always decodes with the tokenizer it was
trained with. Output: a (batch, context_length) int64 tensor, start token, text, end token,
then padding; the text tower pools at ``eot_id``.
"""

from __future__ import annotations

import gzip
import html
import json
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, START, END = "<pad>", "<start>", "<end>"
CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenisation: contractions, runs of letters, single digits, runs of other symbols. CLIP compiles it
# case-insensitively on lowercased text, where that matters once: the long s (ſ) folds to s, so "'ſ" is "'s".
CLIP_PATTERN = r"""'[sſ]|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_MERGES = 49152 - 256 - 2  # merges CLIP uses from its vocabulary file (49,408 tokens in all)


class TextTokenizer:
    """A fixed-length batch tokenizer around a ``tokenizers.Tokenizer``."""

    def __init__(self, tok: Tokenizer, context_length: int, eot: str, pad_id: int = 0, clean: str | None = None):
        # a caption is text, never control: "<|endoftext|>" or "<end>" written in an alt text is spelt out in BPE
        # pieces, as open_clip spells it, not turned into the end token the text tower pools at (which would cut
        # the caption there); the start and end tokens come from the post-processor alone. Not serialised by
        # ``tokenizers``, so set on every load.
        tok.encode_special_tokens = True
        if clean == "clip":  # all of the cleaning is clip_clean's; a JSON saved earlier also gets today's split
            tok.normalizer = None
            tok.pre_tokenizer = clip_pre_tokenizer()
        self.tok = tok
        self.clean = clean
        self.context_length = context_length
        self.eot_id = tok.token_to_id(eot)
        self.pad_id = pad_id
        if self.eot_id is None:
            raise ValueError(f"tokenizer has no end token {eot!r}")
        self._eot = eot

    def __reduce__(self):
        """Pickled (to loader workers, Spark executors) through the JSON, so ``__init__`` sets again what
        ``tokenizers`` does not carry."""
        return TextTokenizer.from_json, (self.to_json(),)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if self.clean == "clip":
            texts = [clip_clean(t) for t in texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(self.tok.encode_batch(list(texts))):
            ids = enc.ids
            if len(ids) > self.context_length:  # cut the text, keep the end token the tower pools at
                ids = [*ids[:self.context_length - 1], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: list[int]) -> str:
        """The text of one row: its tokens up to the end token (what follows is padding, and CLIP pads with id 0,
        which is "!"), CLIP's word ends as spaces, as open_clip's ``decode`` writes them."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids[1:]:
            ids = ids[: ids.index(self.eot_id, 1)]
        if self.clean != "clip":
            return self.tok.decode(ids, skip_special_tokens=True)
        start = self.tok.token_to_id(CLIP_START)
        pieces = "".join(self.tok.id_to_token(i) or "" for i in ids if i not in (start, self.eot_id))
        byte_of = {c: b for b, c in zip(_byte_order(), _bytes_to_unicode(), strict=True)}
        return bytes(byte_of[c] for c in pieces).decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def to_json(self) -> str:
        return json.dumps({"tokenizer": json.loads(self.tok.to_str()), "context_length": self.context_length,
                           "eot": self._eot, "pad_id": self.pad_id, "clean": self.clean})

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        d = json.loads(text)
        return cls(Tokenizer.from_str(json.dumps(d["tokenizer"])), d["context_length"], d["eot"], d["pad_id"],
                   d.get("clean"))

    def save(self, path: str | Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        return cls.from_json(Path(path).read_text())


def train_bpe(texts: Iterable[str], vocab_size: int, context_length: int, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE (GPT-2 style: any byte sequence encodes, no unknown token) fitted to ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, START, END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}", special_tokens=[(START, tok.token_to_id(START)), (END, tok.token_to_id(END))])
    return TextTokenizer(tok, context_length, END, pad_id=tok.token_to_id(PAD))


_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


def _byte_order() -> list[int]:
    """The bytes in CLIP's (and GPT-2's) vocabulary order: the printable ones first."""
    return _PRINTABLE + [b for b in range(256) if b not in _PRINTABLE]


def _bytes_to_unicode() -> list[str]:
    """CLIP's printable stand-in for each byte of :func:`_byte_order`: a printable byte stands for itself."""
    return [chr(b) for b in _PRINTABLE] + [chr(256 + i) for i in range(256 - len(_PRINTABLE))]


def read_clip_merges(path: str | Path) -> list[tuple[str, ...]]:
    """The merges CLIP uses from its vocabulary file (a smaller model's file may hold fewer); a file that cannot be
    read (a truncated or corrupt gzip) or is no merges file is a ``ValueError`` naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"CLIP vocabulary {path} cannot be read: {exc}") from None
    merges = [tuple(line.split()) for line in lines[1: CLIP_MERGES + 1] if line.strip()]
    odd = next((i for i, m in enumerate(merges, 2) if len(m) != 2), None)
    if not merges or odd is not None:
        where = f"line {odd} is not a pair of symbols" if odd is not None else "it holds no merges"
        raise ValueError(f"CLIP vocabulary {path} is not a BPE merges file like bpe_simple_vocab_16e6.txt: {where}")
    return merges


def load_clip_bpe(path: str | Path, context_length: int = 77) -> TextTokenizer:
    """CLIP's tokenizer from its ``bpe_simple_vocab_16e6.txt.gz``: the same 49,408 ids as OpenAI's.

    The text is cleaned by :func:`clip_clean` (ftfy, HTML unescaped twice, whitespace, lowercase), split
    with CLIP's regex and marked at word ends with ``</w>``; padded with id 0, pooled at the end token, the
    largest id. The ids equal open_clip's ``SimpleTokenizer``'s (tests/test_clip_tokenizer_reference.py).
    """
    merges = read_clip_merges(path)
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [CLIP_START, CLIP_END]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>",
                               continuing_subword_prefix="", unk_token=None))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([CLIP_START, CLIP_END])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_START} $A {CLIP_END}",
        special_tokens=[(CLIP_START, vocab.index(CLIP_START)), (CLIP_END, vocab.index(CLIP_END))])
    return TextTokenizer(tok, context_length, CLIP_END, pad_id=0, clean="clip")


def clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """CLIP's split (its regex's matches kept, the rest dropped), each piece as GPT-2's printable bytes."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def clip_clean(text: str) -> str:
    """CLIP's text cleaning before BPE, step for step as open_clip's tokenizer does it: ftfy, HTML entities
    unescaped twice, whitespace runs made one space, then Python's lowercase, which ends a word's sigma in ς
    (a per-character lowercase leaves σ, and "ΟΔΟΣ" another token). U+0345, the one character CLIP's split regex
    matches with none of its classes (compiled case-insensitively, it folds to the letter ι), separates tokens
    there and is dropped, so it becomes a space here."""
    try:
        import ftfy
    except ImportError:  # a declared dependency of the train extra: without it every mojibake caption differs
        raise ImportError("CLIP's tokenizer needs ftfy (pip install 'witbuild[train]')") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower().replace("\u0345", " ")
