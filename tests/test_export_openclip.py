"""Models move both ways between this trainer and open_clip, checked against open_clip's own ``CLIP`` class.

The reference is open_clip 3.3's ``model.py`` from its wheel as published (tests/helpers/reference_wheels.py).
Export: a run trained with CLIP's tokenizer, exported by ``trainer/export_openclip.py`` as a user runs it, loads
into open_clip's ``CLIP`` built from the exported ``open_clip_config.json`` with ``strict=True`` and gives the
same embeddings as the checkpoint, for texts tokenised by open_clip's own tokenizer. Import: open_clip's
ViT-B-32 and ViT-B-16, as its own model JSONs define them, give our model the same embeddings (the micro
reference of tests/test_clip_score.py, at full size and without a stored file).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers.reference_wheels import extract, open_clip_models
from tests.helpers.shards import write_shards
from trainer.evaluate import load_checkpoint
from trainer.export_openclip import WEIGHTS_FILE, openclip_model_config, openclip_state_dict
from trainer.model import CLIP, ModelConfig
from trainer.openclip_weights import CONFIG_FILE, VOCAB_FILE, load_openclip_folder
from trainer.tokenizer import load_clip_bpe

EXPORT = ROOT / "trainer" / "export_openclip.py"
EVALUATE = ROOT / "trainer" / "evaluate.py"
TRAIN = ROOT / "trainer" / "train.py"
VOCAB = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CAPTIONS = ["a handwritten digit seven", "the number 3 written in ink", "ΟΔΟΣ <|endoftext|> sign", ""]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return open_clip_models(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def clip_vocab(tmp_path_factory):
    return extract("open_clip_torch", [VOCAB], tmp_path_factory.mktemp("vocab"))[VOCAB]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def trained_run(tmp_path, *sets: str):
    data = tmp_path / "shards"
    write_shards(data, n_shards=2, per_shard=32)
    out = tmp_path / "run"
    proc = run(str(TRAIN), "--data", str(data), "--config", "tiny-cpu", "--output", str(out), "--set", "steps=3",
               "--set", "data.batch_size=16", "--set", "data.workers=1", "--set", "optim.warmup_steps=1",
               "--set", "eval.retrieval=false", *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def images(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_an_exported_run_is_open_clips_model_with_the_same_embeddings(reference, clip_vocab, tmp_path):
    run_dir = trained_run(tmp_path, "--set", "tokenizer.kind=clip", "--set", f"tokenizer.clip_vocab_path={clip_vocab}")
    out = tmp_path / "exported"
    proc = run(str(EXPORT), "--checkpoint", str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"local-dir:{out}" in proc.stdout
    config = json.loads((out / CONFIG_FILE).read_text())
    theirs = reference.CLIP(**config["model_cfg"]).eval()
    theirs.load_state_dict(torch.load(out / WEIGHTS_FILE, weights_only=True), strict=True)
    ours, tokenizer, _ = load_checkpoint(run_dir)
    size = config["preprocess_cfg"]["size"]
    assert size == ours.cfg.vision_cfg.image_size and config["preprocess_cfg"]["resize_mode"] == "shortest"

    simple = importlib.import_module(f"{reference.__package__}.tokenizer").SimpleTokenizer  # its own vocabulary
    their_tokens = simple(context_length=config["model_cfg"]["text_cfg"]["context_length"])(CAPTIONS)
    assert torch.equal(their_tokens, tokenizer(CAPTIONS))
    x = images(size)
    torch.testing.assert_close(theirs.encode_image(x, normalize=True), ours.encode_image(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs.encode_text(their_tokens, normalize=True), ours.encode_text(their_tokens),
                               rtol=1e-4, atol=1e-5)
    assert theirs.logit_scale.item() == pytest.approx(ours.logit_scale.item())

    # the vocabulary file the export writes is CLIP's for both tokenizers
    exported_vocab = simple(bpe_path=str(out / VOCAB_FILE), context_length=77)
    assert torch.equal(exported_vocab(CAPTIONS), simple(context_length=77)(CAPTIONS))
    assert torch.equal(load_clip_bpe(out / VOCAB_FILE, 77)(CAPTIONS), simple(context_length=77)(CAPTIONS))

    # read back: evaluate.py and clip_score take the folder and give the checkpoint's figures
    labelled = digits_folder(tmp_path / "digits")
    figures = []
    for checkpoint in (run_dir, out):
        result = tmp_path / f"eval-{checkpoint.name}.json"
        proc = run(str(EVALUATE), "--checkpoint", str(checkpoint), "--zeroshot", str(labelled), "--data",
                   str(tmp_path / "shards"), "--holdout-fraction", "0.5", "--out", str(result))
        assert proc.returncode == 0, proc.stderr[-3000:]
        figures.append(json.loads(result.read_text()))
    assert figures[1]["step"] is None and figures[1]["retrieval"]["pairs"] == figures[0]["retrieval"]["pairs"] > 10
    for part in ("zeroshot", "linear_probe", "retrieval"):
        for key, value in figures[0][part].items():
            if isinstance(value, float):
                assert figures[1][part][key] == pytest.approx(value, abs=1e-6), (part, key)
    from witbuild.curate.clip_score import ClipScoreConfig, load_scorer

    pictures = [(tmp_path / "digits" / "3" / "0.png").read_bytes(), (tmp_path / "digits" / "7" / "0.png").read_bytes()]
    scores = [load_scorer(ClipScoreConfig(checkpoint=str(c), device="cpu")).score(pictures, CAPTIONS[:2])[0]
              for c in (run_dir, out)]
    assert scores[1] == pytest.approx(scores[0], abs=1e-5)


def digits_folder(folder: Path, per_class: int = 6) -> Path:
    """sklearn's digits 3 and 7 as a labelled folder, with the prompts zero-shot reads."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    for label in (3, 7):
        (folder / str(label)).mkdir(parents=True)
        picks = [i for i, t in enumerate(data.target) if t == label][:per_class]
        for n, i in enumerate(picks):
            pixels = (data.images[i] * 255 / 16).astype("uint8")
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / str(label) / f"{n}.png")
    (folder / "zeroshot.json").write_text(json.dumps({"classnames": {"3": "three", "7": "seven"},
                                                      "templates": ["a handwritten {}", "the digit {}"]}))
    return folder


def test_a_run_with_its_own_bpe_is_refused_with_the_reason(tmp_path):
    run_dir = trained_run(tmp_path, "--set", "tokenizer.vocab_size=300")
    proc = run(str(EXPORT), "--checkpoint", str(run_dir), "--out", str(tmp_path / "exported"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "tokenizer.kind: clip" in proc.stderr
    assert not (tmp_path / "exported").exists()


@torch.no_grad()
def test_a_siglip_model_exports_with_its_bias(reference):
    """A SigLIP model carries ``logit_bias``; open_clip's ``CLIP`` makes that parameter from ``init_logit_bias``."""
    cfg = ModelConfig.from_dict(json.loads((ROOT / "trainer" / "configs" / "models" / "tiny.json").read_text()))
    cfg.init_logit_bias = -10.0
    ours = CLIP(cfg).eval()
    ours.logit_bias.fill_(-7.25)  # as training moved it
    ours.logit_scale.fill_(3.5)
    theirs = reference.CLIP(**openclip_model_config(cfg)).eval()
    theirs.load_state_dict(openclip_state_dict(ours.state_dict()), strict=True)
    assert (theirs.logit_bias.item(), theirs.logit_scale.item()) == (-7.25, 3.5)


@pytest.mark.slow  # two ViT-B models of ~150 M parameters each way
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
@torch.no_grad()
def test_open_clips_vit_b_configs_import_and_export_exactly(reference, clip_vocab, tmp_path, name):
    """open_clip's own JSON for ``name``, seeded random weights with every norm and bias perturbed (so that no
    parameter sits at a constant that would hide a mix-up), in a folder as the Hugging Face Hub holds open_clip
    models: ours read from it gives its embeddings, and ours exported gives back its state dict."""
    cfg_dict = json.loads((Path(reference.__file__).parent / "model_configs" / f"{name}.json").read_text())
    torch.manual_seed(0)
    theirs = reference.CLIP(**cfg_dict).eval()
    for key, p in theirs.named_parameters():
        if key.endswith(("bias", "weight")) and p.ndim == 1:
            p.add_(0.1 * torch.randn_like(p))
    hub = tmp_path / "hub"  # as the Hugging Face Hub holds open_clip models: no vocabulary file
    hub.mkdir()
    torch.save(theirs.state_dict(), hub / "open_clip_pytorch_model.bin")
    (hub / CONFIG_FILE).write_text(json.dumps({"model_cfg": cfg_dict, "preprocess_cfg": {}}))
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        load_openclip_folder(hub)
    ours, tokenizer = load_openclip_folder(hub, clip_vocab)
    assert tokenizer.vocab_size == cfg_dict["text_cfg"]["vocab_size"]
    x = images(cfg_dict["vision_cfg"]["image_size"], 2)
    tokens = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(2))
    tokens[:, 0], tokens[0, 9:], tokens[0, 9], tokens[1, 76] = 49406, 0, 49407, 49407
    torch.testing.assert_close(ours.encode_image(x), theirs.encode_image(x, normalize=True), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.encode_text(tokens), theirs.encode_text(tokens, normalize=True), rtol=1e-4,
                               atol=1e-5)
    back = openclip_state_dict(ours.state_dict())
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())
    assert openclip_model_config(ours.cfg)["vision_cfg"]["patch_size"] == cfg_dict["vision_cfg"]["patch_size"]
