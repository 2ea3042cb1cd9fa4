"""Models move both ways between this trainer and open_clip, checked against open_clip's own ``CLIP`` class.

The reference is open_clip 3.3's ``model.py`` from its wheel as published (tests/helpers/reference_wheels.py).
Export: a run trained with CLIP's tokenizer, exported by ``trainer/export_openclip.py`` as a user runs it, loads
into open_clip's ``CLIP`` built from the exported ``open_clip_config.json`` with ``strict=True`` and gives the
same embeddings as the checkpoint, for texts tokenised by open_clip's own tokenizer. Import: open_clip's
ViT-B-32 and ViT-B-16, as its own model JSONs define them, give our model the same embeddings (the micro
reference of tests/test_clip_score.py, at full size and without a stored file).
"""

from __future__ import annotations

import gzip
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

    # the vocabulary file the export writes is CLIP's: the merges open_clip's own file lists, line for line
    def merges(path) -> list[str]:
        return gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1: 49152 - 256 - 2 + 1]

    assert merges(out / VOCAB_FILE) == merges(Path(reference.__file__).parent / VOCAB_FILE)
    exported_vocab = simple(bpe_path=str(out / VOCAB_FILE), context_length=77)
    assert torch.equal(exported_vocab(CAPTIONS), simple(context_length=77)(CAPTIONS))
    assert torch.equal(load_clip_bpe(out / VOCAB_FILE, 77)(CAPTIONS), simple(context_length=77)(CAPTIONS))

    # read back: evaluate.py and clip_score take the folder and give the checkpoint's figures
    labelled = digits_folder(tmp_path / "digits")
    figures = []
    for checkpoint in (run_dir, out):
        result = tmp_path / f"eval-{checkpoint.name}.json"
        proc = run(str(EVALUATE), "--checkpoint", str(checkpoint), "--zeroshot", str(labelled), "--data",
                   str(tmp_path / "shards"), "--out", str(result))  # the run's holdout: its last shard
        assert proc.returncode == 0, proc.stderr[-3000:]
        figures.append(json.loads(result.read_text()))
    assert figures[1]["step"] == figures[0]["step"] == 3
    assert figures[1]["retrieval"]["pairs"] == figures[0]["retrieval"]["pairs"] == 32  # the held-out shard
    assert "includes_trained_pairs" not in figures[1]["retrieval"]
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


@torch.no_grad()
def test_under_bf16_autocast_each_block_keeps_open_clips_dtype(reference, monkeypatch):
    """Under bf16 autocast the image tower's residual stream is bf16 and the text tower's float32, block by block, in
    ours as in open_clip's ``CLIP`` with the same weights. CUDA's autocast computes ``layer_norm`` in float32 and
    returns float32 (torch's autocast op reference); CPU's keeps the input's dtype. This machine has no CUDA, so its
    policy is applied to ``F.layer_norm`` for both models: a LayerNorm that does not cast back widens the image stream
    to float32 at ``ln_pre``, twice the bytes per block on a GPU, and differs from open_clip's numbers."""
    import torch.nn.functional as F

    layer_norm = F.layer_norm
    monkeypatch.setattr(F, "layer_norm", lambda x, *a, **k: layer_norm(x.float(), *a, **k))
    cfg = ModelConfig.from_dict(json.loads((ROOT / "trainer" / "configs" / "models" / "tiny.json").read_text()))
    ours = CLIP(cfg).eval()
    theirs = reference.CLIP(**openclip_model_config(cfg)).eval()
    theirs.load_state_dict(openclip_state_dict(ours.state_dict()), strict=True)
    x = images(cfg.vision_cfg.image_size, 2)
    tokens = torch.randint(1, cfg.text_cfg.vocab_size - 1, (2, cfg.text_cfg.context_length),
                           generator=torch.Generator().manual_seed(2))
    seen = {}
    for name, model, blocks in (("ours", ours, [*ours.visual.transformer.blocks, *ours.text.transformer.blocks]),
                                ("theirs", theirs, [*theirs.visual.transformer.resblocks,
                                                    *theirs.transformer.resblocks])):
        dtypes = seen[name] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out, d=dtypes: d.append(out.dtype)) for b in blocks]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_image(x), model.encode_text(tokens)
        for h in hooks:
            h.remove()
    vision, text = cfg.vision_cfg.layers, cfg.text_cfg.layers
    assert seen["theirs"] == [torch.bfloat16] * vision + [torch.float32] * text
    assert seen["ours"] == seen["theirs"]


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


def tiny_folder(folder: Path, clip_vocab: Path, **edit) -> Path:
    """A small open_clip folder (CLIP's vocabulary, tiny towers) with ``edit`` applied to its config."""
    cfg = ModelConfig.from_dict(json.loads((ROOT / "trainer" / "configs" / "models" / "tiny.json").read_text()))
    cfg.text_cfg.vocab_size, cfg.text_cfg.eot_id = 49408, None
    folder.mkdir(parents=True)
    torch.save(openclip_state_dict(CLIP(cfg).state_dict()), folder / WEIGHTS_FILE)
    config = {"model_cfg": openclip_model_config(cfg),
              "preprocess_cfg": {"size": cfg.vision_cfg.image_size, "mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                                 "resize_mode": "shortest"}}
    for path, value in edit.items():
        *parents, key = path.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    (folder / VOCAB_FILE).write_bytes(Path(clip_vocab).read_bytes())
    return folder


@pytest.mark.parametrize(("edit", "reason"), [
    ({"model_cfg__quick_gelu": True}, "quick_gelu"),
    ({"preprocess_cfg__mean": [0.5, 0.5, 0.5]}, "preprocess_cfg.mean"),
    ({"preprocess_cfg__resize_mode": "squash"}, "resize_mode"),
    ({"preprocess_cfg__interpolation": "bilinear"}, "interpolation"),
    ({"preprocess_cfg__size": 336}, "preprocess_cfg.size"),
    ({"model_cfg__vision_cfg__layers": [3, 4, 6, 3]}, "not a model this trainer implements"),
    ({"model_cfg__text_cfg__hf_tokenizer_name": "bert-base-uncased"}, "Hugging Face tokenizer"),
    ({"model_cfg__text_cfg__pool_type": "last"}, "pool_type"),
    ({"model_cfg": [1, 2]}, "no model config"),
])
def test_a_folder_this_model_would_read_wrong_is_refused_with_the_reason(clip_vocab, tmp_path, edit, reason):
    """Each of these loads in open_clip; here each would have loaded as another model or scored through another
    preprocessing (a LAION model normalised with 0.5, OpenAI's weights with QuickGELU), or crashed."""
    folder = tiny_folder(tmp_path / "model", clip_vocab, **edit)
    with pytest.raises(ValueError, match=reason):
        load_openclip_folder(folder)
    proc = run(str(EVALUATE), "--checkpoint", str(folder))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and reason in proc.stderr, proc.stderr[-2000:]


def test_a_folder_with_the_settings_open_clip_writes_by_default_loads(clip_vocab, tmp_path):
    folder = tiny_folder(tmp_path / "model", clip_vocab, model_cfg__quick_gelu=False, preprocess_cfg__size=[48, 48])
    model, tokenizer = load_openclip_folder(folder)
    assert model.cfg.vision_cfg.image_size == 48 and tokenizer.vocab_size == 49408


def test_replacing_the_model_in_a_scoring_folder_redoes_finalize(clip_vocab, tmp_path):
    """The finalize fingerprint reads the folder's files by content: a model exported again under the same path
    (or another one downloaded there) is not taken for the one that scored."""
    from witbuild.config import BuildConfig
    from witbuild.fingerprint import _finalize_external

    folder = tiny_folder(tmp_path / "model", clip_vocab)
    cfg = BuildConfig.model_validate({"input": {"paths": ["x.warc.gz"]}, "output": str(tmp_path / "out"),
                                      "clip_score": {"checkpoint": str(folder)}})
    before = _finalize_external(cfg)
    assert before["clip_checkpoint"] != "<unset>"
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, folder / WEIGHTS_FILE)
    assert _finalize_external(cfg)["clip_checkpoint"] != before["clip_checkpoint"]
