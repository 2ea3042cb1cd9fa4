"""A very small CLIP and a fixed random batch, identical in every process that builds them."""

from __future__ import annotations

import torch

from trainer.model import CLIP, ModelConfig, TextConfig, VisionConfig

BATCH = 8


def make_model(loss_name: str = "clip") -> CLIP:
    torch.manual_seed(0)
    cfg = ModelConfig(embed_dim=16, vision_cfg=VisionConfig(image_size=16, patch_size=8, width=32, layers=2,
                                                           head_width=16),
                      text_cfg=TextConfig(context_length=8, vocab_size=50, width=32, heads=2, layers=2, eot_id=49),
                      init_logit_bias=-10.0 if loss_name == "siglip" else None)
    return CLIP(cfg).double()


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, 49, (BATCH, 8), generator=g)
    lengths = torch.randint(2, 8, (BATCH,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n] = 49  # end token
        tokens[i, n + 1:] = 0
    return images, tokens
