"""open_clip checkpoints in our CLIP: the parameter names mapped, the architecture checked against a model JSON.

Our ``CLIP`` is the architecture of open_clip's ``CLIP`` class for the model JSONs both read (a ViT image tower,
a causal text transformer pooled at the end token, GELU, pre-norm blocks); only the parameter names differ. A
user's open_clip checkpoint (a bare state dict, or ``open_clip_train``'s ``{"state_dict": …}`` with DDP's
``module.`` prefix) loads here with ``torch.load(weights_only=True)``: no pickled code is run. A key this model
does not have (layer scale, attentional pooling, a custom text tower) or a shape the JSON does not give is an
error naming it, never a silently half-loaded model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from trainer.model import CLIP, ModelConfig

#: open_clip name → ours, applied in order to each key (after the ``module.``/``_orig_mod.`` prefixes are cut).
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^token_embedding\.", "text.token_embedding."),
    (r"^positional_embedding$", "text.positional_embedding"),
    (r"^transformer\.", "text.transformer."),
    (r"^ln_final\.", "text.ln_final."),
    (r"^text_projection$", "text.text_projection"),
    (r"\.resblocks\.", ".blocks."),
    (r"\.attn\.in_proj_weight$", ".attn.in_proj.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.in_proj.bias"),
    (r"\.mlp\.c_fc\.", ".mlp.0."),
    (r"\.mlp\.c_proj\.", ".mlp.2."),
)
_PREFIXES = ("module.", "_orig_mod.")
_BUFFERS = ("attn_mask",)  # open_clip's causal mask: a buffer some versions saved; ours is implicit


def our_key(key: str) -> str:
    """Our parameter name for one open_clip state-dict key."""
    for prefix in _PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def state_dict_of(obj: object) -> dict[str, torch.Tensor]:
    """The parameters of a loaded open_clip checkpoint: a bare state dict or a training checkpoint holding one."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not an open_clip state dict (a dict of tensors, or a checkpoint with 'state_dict')")
    return obj


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip ``CLIP`` state dict with our parameter names (buffers dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in _BUFFERS:
            continue
        out[our_key(key)] = value
    return out


def load_openclip(path: str | Path, model_config: ModelConfig) -> CLIP:
    """Our CLIP (eval mode, float32) with the weights of the open_clip checkpoint at ``path``.

    ``ValueError`` when the file is not an open_clip state dict or does not fit ``model_config``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a truncated file, a pickle with code in it, not a torch file at all
        raise ValueError(f"{path}: cannot load as a torch state dict ({type(exc).__name__}: {exc})") from exc
    state = convert_state_dict(state_dict_of(obj))
    model = CLIP(model_config)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unknown = sorted(set(state) - set(ours))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (model JSON: {tuple(v.shape)})" for k, v in ours.items()
                    if k in state and state[k].shape != v.shape)
    if missing or unknown or shapes:
        parts = [f"{name}: {', '.join(items[:5])}{' …' if len(items) > 5 else ''}"
                 for name, items in (("missing", missing), ("not in this model", unknown), ("shape", shapes))
                 if items]
        raise ValueError(f"{path} does not match the model config: " + "; ".join(parts))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
