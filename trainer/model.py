"""CLIP: a ViT image tower and a causal text transformer projected into one joint space.

The shapes and initialisation follow OpenAI's CLIP (and open_clip's JSON model configs), so a
model config means the same network, the same FLOPs and comparable numbers in both trainers.
Attention is ``scaled_dot_product_attention``, which picks the fused kernel the device has.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

MODEL_DIR = Path(__file__).resolve().parent / "configs" / "models"


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    eot_id: int | None = None  # the end token the text is pooled at; None: the largest id (CLIP's vocabulary)


@dataclass
class ModelConfig:
    embed_dim: int = 512
    vision_cfg: VisionConfig = field(default_factory=VisionConfig)
    text_cfg: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # set for the SigLIP loss (-10 in the paper)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {"embed_dim", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        vision = _known_keys("vision_cfg", d.get("vision_cfg", {}), VisionConfig)
        text = _known_keys("text_cfg", d.get("text_cfg", {}), TextConfig)
        extra = {k: d[k] for k in ("init_logit_scale", "init_logit_bias") if k in d}
        return cls(embed_dim=d["embed_dim"], vision_cfg=VisionConfig(**vision), text_cfg=TextConfig(**text), **extra)

    def to_dict(self) -> dict:
        return asdict(self)


def _known_keys(section: str, values: dict, kind: type) -> dict:
    """``values`` when each key is a field of ``kind``: a key this model does not implement (an open_clip option
    such as ``patch_dropout``) is an error, not a setting silently trained without."""
    unknown = sorted(set(values) - set(kind.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown {section} keys in the model config: {unknown} "
                         f"(known: {sorted(kind.__dataclass_fields__)})")
    return values


def load_model_config(name_or_path: str) -> ModelConfig:
    """A model config by name (``trainer/configs/models/NAME.json``) or by path to such a JSON file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = MODEL_DIR / f"{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem for p in MODEL_DIR.glob("*.json"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found: give a JSON path or one of {names}")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


class LayerNorm(nn.LayerNorm):
    """Normalises in float32 under CUDA's autocast (which lists ``layer_norm`` as a float32 op) and returns the input's
    dtype, as open_clip's ``LayerNorm`` does: the image tower's residual stream then stays in bf16 from the patch
    embedding on, as open_clip trains it, instead of widening to float32 at ``ln_pre`` and moving twice the bytes
    through every block; the text tower's stream starts from float32 embeddings and stays float32 in both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads, self.causal = heads, causal
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.in_proj(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.width, self.layers = width, layers
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, causal) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def init_weights(self) -> None:
        """CLIP's scheme: residual projections scaled down with depth so the stream stays O(1)."""
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
        attn_std, fc_std = self.width**-0.5, (2 * self.width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj.weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        w, grid = cfg.width, cfg.image_size // cfg.patch_size
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.layers, w // cfg.head_width, cfg.mlp_ratio, causal=False)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))
        self.transformer.init_weights()

    def patch_embed(self, images: torch.Tensor) -> torch.Tensor:
        """``conv1`` (a stride-``patch_size`` convolution) as one matmul over the flattened patches: the same numbers,
        without cuDNN's convolution kernels, which took 14% of a ViT-B/32 step on an H200 (forward, weight gradient
        and layout changes) for 0.5% of its FLOPs. ``conv1`` stays the parameter, so checkpoints and open_clip's
        weights keep their shape."""
        b, c, h, w = images.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"images of {h}×{w} px do not tile into {p}-px patches: resize them to the model's "
                             f"{self.cfg.image_size} px")
        patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return F.linear(patches.reshape(b, (h // p) * (w // p), c * p * p), self.conv1.weight.flatten(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (b, grid², w)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, causal=True)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)
        self.transformer.init_weights()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: (b, context_length) ids padded after the end token; pooled at the end token."""
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x))
        end = tokens.argmax(dim=1) if self.cfg.eot_id is None else (tokens == self.cfg.eot_id).int().argmax(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg.vision_cfg, cfg.embed_dim)
        self.text = TextTower(cfg.text_cfg, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
                           if cfg.init_logit_bias is not None else None)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens)


def _tower_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """Forward matmul FLOPs (2 per multiply-add) of one sequence through a transformer."""
    per_layer = 2 * tokens * width * width * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * width
    return layers * per_layer


def forward_flops_per_sample(cfg: ModelConfig) -> float:
    """Forward FLOPs of one image-text pair (the similarity matrix is excluded: it is O(batch))."""
    v, t = cfg.vision_cfg, cfg.text_cfg
    patches = (v.image_size // v.patch_size) ** 2
    vision = 2 * patches * 3 * v.patch_size**2 * v.width + _tower_flops(patches + 1, v.width, v.layers, v.mlp_ratio)
    vision += 2 * v.width * cfg.embed_dim
    text = _tower_flops(t.context_length, t.width, t.layers, t.mlp_ratio) + 2 * t.width * cfg.embed_dim
    return float(vision + text)


def train_flops_per_sample(cfg: ModelConfig) -> float:
    """Model FLOPs of a training step per sample: forward + backward (2× forward), as MFU counts them."""
    return 3.0 * forward_flops_per_sample(cfg)
