"""CLIP scoring: open_clip weights in our model (against open_clip's own outputs), the scorer, its errors."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, VENV_BIN
from trainer.data import center_square, open_rgb, to_tensor
from trainer.model import CLIP, ModelConfig, load_model_config
from trainer.openclip_weights import load_openclip
from trainer.tokenizer import train_bpe
from witbuild.curate.clip_score import (
    ClipScoreConfig,
    decode_embedding,
    embedding_bytes,
    load_scorer,
    score_cutoff,
    semantic_duplicates,
)

MICRO = ROOT / "tests" / "data" / "openclip_micro"  # made by open_clip 3.3 itself: see make_reference.py there
TEXTS = ["a red star on white", "a handwritten digit seven", "three blue circles", "a green square",
         "a photo of a yellow triangle", "the digit two"] * 10


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    im = Image.new("RGB", size, colour)
    for x in range(0, size[0], 7):
        im.putpixel((x, x % size[1]), (255 - colour[0], 0, colour[2]))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def our_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint file as our trainer writes it (model, model_config, tokenizer): the tiny model, seeded."""
    tok = train_bpe(TEXTS, 300, 16)
    cfg = load_model_config("tiny").to_dict()
    cfg["text_cfg"].update(vocab_size=tok.vocab_size, context_length=16, eot_id=tok.eot_id)
    torch.manual_seed(0)
    model = CLIP(ModelConfig.from_dict(cfg))
    path = tmp_path_factory.mktemp("ckpt") / "step-00000010.pt"
    torch.save({"step": 10, "model": model.state_dict(), "model_config": cfg, "tokenizer": tok.to_json()}, path)
    return path


def test_openclip_state_dict_gives_open_clips_own_embeddings():
    """The reference was computed by open_clip from the same file: our model must reproduce it."""
    ref = torch.load(MICRO / "reference.pt", weights_only=True)
    model = load_openclip(MICRO / "state_dict.pt", load_model_config(str(MICRO / "model.json")))
    with torch.no_grad():
        img = model.encode_image(ref["images"])
        txt = model.encode_text(ref["tokens"])
    assert torch.allclose(img, ref["image_embeddings"], atol=1e-5)
    assert torch.allclose(txt, ref["text_embeddings"], atol=1e-5)
    assert torch.allclose(model.logit_scale.detach(), ref["logit_scale"])
    # the tolerance is far below how much the inputs' embeddings differ: a wrong mapping could not pass by chance
    for emb in (img, txt):
        assert (torch.cdist(emb, emb) + torch.eye(4)).min() > 100 * 1e-5


def test_openclip_training_checkpoint_with_ddp_prefix_loads_the_same(tmp_path):
    state = torch.load(MICRO / "state_dict.pt", weights_only=True)
    wrapped = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    cfg = load_model_config(str(MICRO / "model.json"))
    a, b = load_openclip(MICRO / "state_dict.pt", cfg), load_openclip(wrapped, cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_openclip_state_dict_of_another_architecture_is_an_error(tmp_path):
    spec = json.loads((MICRO / "model.json").read_text())
    spec["vision_cfg"]["layers"] = 3
    spec["text_cfg"]["width"] = 48
    other = tmp_path / "other.json"
    other.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"does not match the model config: missing: visual\.transformer\.blocks\.2"):
        load_openclip(MICRO / "state_dict.pt", load_model_config(str(other)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot load as a torch state dict"):
        load_openclip(junk, load_model_config(str(MICRO / "model.json")))


def test_score_is_the_trainers_own_cosine(our_checkpoint):
    scorer = load_scorer(ClipScoreConfig(checkpoint=str(our_checkpoint), batch_size=3))
    images = [_jpeg((40 * i, 200 - 30 * i, 90), (96 + 8 * i, 64 + 16 * i)) for i in range(5)]
    texts = TEXTS[:5]
    scores, emb = scorer.score(images, texts)
    model, tok = scorer.model, scorer.tokenizer
    size = model.cfg.vision_cfg.image_size
    with torch.no_grad():
        want_img = model.encode_image(torch.stack([to_tensor(center_square(open_rgb(b), size)) for b in images]))
        want = (want_img * model.encode_text(tok(texts))).sum(1)
    assert np.allclose(scores, want.numpy(), atol=1e-5)
    assert np.allclose(emb, want_img.numpy(), atol=1e-5)
    assert len({round(s, 4) for s in scores}) == 5  # distinct pairs, distinct scores
    stored = decode_embedding(embedding_bytes(emb[0]))
    assert stored.shape == (model.cfg.embed_dim,) and np.allclose(stored, emb[0], atol=2e-3)


def test_an_undecodable_image_gets_no_score_and_the_rest_do(our_checkpoint):
    scorer = load_scorer(ClipScoreConfig(checkpoint=str(our_checkpoint), batch_size=2))  # a batch of bad ones too
    scores, emb = scorer.score([_jpeg((200, 10, 10)), b"\xff\xd8 truncated jpeg", b"", b"GIF89a", _jpeg((9, 9, 9))],
                               TEXTS[:5])
    assert [s is not None for s in scores] == [True, False, False, False, True]
    assert emb.shape == (2, scorer.embed_dim)


def test_open_clip_checkpoint_scores_through_the_clip_tokenizer(tmp_path):
    """An open_clip state dict with its model JSON and a CLIP BPE vocabulary file is a scorer too."""
    vocab = tmp_path / "bpe.txt.gz"
    with gzip.open(vocab, "wt") as fh:
        fh.write("#version: 0.2\nr e\ns t\nre d</w>\nst a\nsta r</w>\n")
    spec = json.loads((MICRO / "model.json").read_text())  # the micro model: 600 ids, ≥ 512 + 5 merges + 2
    cfg = ClipScoreConfig(checkpoint=str(MICRO / "state_dict.pt"), model_json=str(MICRO / "model.json"),
                          bpe_vocab=str(vocab))
    scorer = load_scorer(cfg)
    assert scorer.tokenizer.vocab_size <= spec["text_cfg"]["vocab_size"]
    scores, _ = scorer.score([_jpeg((200, 10, 10)), _jpeg((10, 10, 200))], ["red star", "blue star"])
    assert all(s is not None and -1.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("case", ["missing", "junk", "state_dict_without_json", "wrong_json"])
def test_a_bad_checkpoint_is_an_error_before_spark_starts(tmp_path, case, our_checkpoint):
    """``spark-submit`` exits 2 with one ``error:`` line, and no Spark session was started."""
    ckpt = {"missing": tmp_path / "nope.pt", "junk": tmp_path / "junk.pt",
            "state_dict_without_json": MICRO / "state_dict.pt", "wrong_json": MICRO / "state_dict.pt"}[case]
    if case == "junk":
        ckpt.write_bytes(b"\x00" * 64)
    sets = ["--set", f"clip_score.checkpoint={ckpt}", "--set", "clip_score.keep_fraction=0.3"]
    if case == "wrong_json":
        sets += ["--set", "clip_score.model_json=tiny", "--set", f"clip_score.bpe_vocab={our_checkpoint}"]
    warc = tmp_path / "in.warc.gz"
    warc.write_bytes(b"")
    proc = subprocess.run([str(VENV_BIN / "python"), str(ROOT / "jobs" / "build_wit.py"), "--input", str(warc),
                           "--output", str(tmp_path / "out"), *sets], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: clip_score."), proc.stderr[-2000:]
    assert "SparkContext" not in proc.stderr and not (tmp_path / "out" / "stages").exists()


def test_settings_that_need_a_checkpoint_say_so():
    with pytest.raises(ValueError, match=r"need clip_score\.checkpoint"):
        ClipScoreConfig(keep_fraction=0.3)
    with pytest.raises(ValueError, match=r"both clip_score\.model_json and clip_score\.bpe_vocab"):
        ClipScoreConfig(checkpoint="x.pt", model_json="tiny")


def test_keep_fraction_cutoff_keeps_the_best_fraction():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.2, 0.05, 1001).astype(np.float32).astype(np.float64)
    for fraction in (0.3, 0.5, 0.999, 1.0, 0.0001):
        cut = score_cutoff(scores, fraction)
        assert (scores >= cut).sum() == int(np.ceil(1001 * fraction))
    assert (np.array([0.1, 0.5, 0.5, 0.5, 0.9]) >= score_cutoff(np.array([0.1, 0.5, 0.5, 0.5, 0.9]), 0.4)).sum() == 4


def test_semantic_duplicates_keep_one_of_each_group_without_chains():
    """Planted groups of near-identical embeddings: one of each group stays, every removal names a kept member
    within the threshold, and a chain a~b~c with a far from c does not remove both b and c."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    keys, rows = [], []
    for g, v in enumerate(base):
        for j in range(4):  # 4 copies, cosine > 0.999 to their group's vector
            keys.append(f"g{g}-{j}")
            rows.append(v + 0.01 * rng.normal(size=16) / 4)
    found = semantic_duplicates(keys, np.array(rows), eps=0.01)
    removed = {k for k, _, _ in found}
    assert len(found) == 15 and all(k.split("-")[0] == kept.split("-")[0] for k, kept, _ in found)
    assert not removed & {kept for _, kept, _ in found}
    assert all(s > 0.99 for _, _, s in found)
    assert semantic_duplicates(keys[::-1], np.array(rows[::-1]), eps=0.01) == found  # input order does not matter
    # a chain: a~b (0.995), b~c (0.995), a vs c (0.98): b goes, c stays with a or the other way round, never both
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.1), np.sin(0.1), 0.0])
    c = np.array([np.cos(0.2), np.sin(0.2), 0.0])
    chain = semantic_duplicates(["a", "b", "c"], np.stack([a, b, c]), eps=0.01)
    assert len(chain) == 1 and chain[0][0] == "b"
