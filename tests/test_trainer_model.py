"""The CLIP model: shapes, pooling at the end token, gradient checkpointing, and the FLOP count MFU uses."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers.tiny_batch import make_batch, make_model
from trainer.model import CLIP, MODEL_DIR, ModelConfig, forward_flops_per_sample, load_model_config


def test_named_configs_load_and_unknown_names_fail():
    cfg = load_model_config("vit-b-32")
    assert (cfg.embed_dim, cfg.vision_cfg.width, cfg.vision_cfg.patch_size, cfg.text_cfg.context_length) == \
        (512, 768, 32, 77)
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_model_config("vit-z-99")


def test_features_are_normalised_and_text_is_pooled_at_the_end_token():
    model = make_model().eval()
    images, tokens = make_batch()
    img, txt = model(images, tokens)
    assert img.shape == txt.shape == (8, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(8, dtype=img.dtype))
    changed = tokens.clone()
    end = (tokens == 49).int().argmax(1)
    changed[0, end[0] + 1:] = 7  # what follows the end token cannot matter (causal attention)
    torch.testing.assert_close(model.encode_text(changed)[0], txt[0])
    changed[0, 0] = (tokens[0, 0] % 40) + 2  # what precedes it does
    assert not torch.allclose(model.encode_text(changed)[0], txt[0])


def test_gradient_checkpointing_gives_the_same_gradients():
    images, tokens = make_batch()
    grads = []
    for ckpt in (False, True):
        model = make_model()
        model.set_grad_checkpointing(ckpt)
        img, txt = model(images, tokens)
        (img @ txt.T).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k])


@pytest.mark.parametrize("name", ["tiny", "vit-b-32", "vit-b-16"])
def test_patch_embedding_is_the_convolution(name):
    """The patch embedding, computed as one matmul, gives conv1's output and conv1's weight gradient (float64, fresh
    random images and output gradients), with patches and channels in the convolution's order."""
    torch.manual_seed(0)
    visual = CLIP(load_model_config(name)).visual.double()
    size = visual.cfg.image_size
    images = torch.randn(3, 3, size, size, dtype=torch.float64)
    ref = visual.conv1(images).flatten(2).transpose(1, 2)
    out = visual.patch_embed(images)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ref)
    ref_grad = torch.autograd.grad(ref, visual.conv1.weight, upstream)[0]
    out_grad = torch.autograd.grad(out, visual.conv1.weight, upstream)[0]
    torch.testing.assert_close(out_grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_images_that_do_not_tile_into_patches_are_a_clear_error():
    visual = CLIP(load_model_config("tiny")).visual
    size = visual.cfg.image_size + 1
    with pytest.raises(ValueError, match="do not tile"):
        visual(torch.zeros(1, 3, size, size))


@pytest.mark.parametrize("name", ["tiny", "vit-b-32"])
def test_flop_estimate_matches_torch_flop_counter(name):
    """The analytic count behind MFU agrees with torch's own FLOP counter on a real forward pass."""
    cfg = load_model_config(name)
    cfg.text_cfg.vocab_size = 1000
    cfg.text_cfg.eot_id = 999
    with torch.device("meta"):
        model = CLIP(cfg)
    images = torch.empty(2, 3, cfg.vision_cfg.image_size, cfg.vision_cfg.image_size, device="meta")
    tokens = torch.zeros(2, cfg.text_cfg.context_length, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(images, tokens)
    counted = counter.get_total_flops() / 2
    assert counted == pytest.approx(forward_flops_per_sample(cfg), rel=0.02)


def test_every_training_config_validates_and_names_a_model():
    from trainer.config import CONFIG_DIR, load_train_config

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"tiny-cpu", "vit-b-32-gpu"} <= set(names)
    for name in names:
        cfg = load_train_config(name, ["tokenizer.clip_vocab_path=/vocab.txt.gz"])
        load_model_config(cfg.model)
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        assert "torchrun" in text and "Expected" in text  # each documents its command and result
    with pytest.raises(ValueError, match="unknown_key"):
        load_train_config("tiny-cpu", ["unknown_key=1"])


@pytest.mark.parametrize("section, key", [("vision_cfg", "patch_dropout"), ("text_cfg", "hf_model_name")])
def test_unknown_tower_keys_in_a_model_json_are_an_error_naming_the_key(tmp_path, section, key):
    raw = json.loads((MODEL_DIR / "tiny.json").read_text())
    raw[section][key] = 0.5
    path = tmp_path / "model.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"model.json: unknown {section} keys in the model config: \['{key}'\]"):
        load_model_config(str(path))
    cfg = load_model_config("tiny")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # a checkpoint's own config still loads
