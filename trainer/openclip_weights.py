"""open_clip checkpoints in our CLIP: the parameter names mapped, the architecture checked against a model JSON.

Our ``CLIP`` is the architecture of open_clip's ``CLIP`` class for the model JSONs both read (a ViT image tower,
a causal text transformer pooled at the end token, GELU, pre-norm blocks); only the parameter names differ. A
user's open_clip checkpoint (a bare state dict, or ``open_clip_train``'s ``{"state_dict": …}`` with DDP's
``module.`` prefix) loads here with ``torch.load(weights_only=True)``: no pickled code is run. A key this model
does not have (layer scale, attentional pooling, a custom text tower) or a shape the JSON does not give is an
error naming it, never a silently half-loaded model.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from trainer.model import CLIP, ModelConfig
from trainer.tokenizer import TextTokenizer

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
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file  # open_clip's preferred format on the Hugging Face Hub

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, ModuleNotFoundError):
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


# ---------------------------------------------------------------------------------------------------------------------
# open_clip model folders: what ``open_clip.create_model_and_transforms("local-dir:FOLDER")`` reads, and what the
# Hugging Face Hub holds for open_clip models
# ---------------------------------------------------------------------------------------------------------------------

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "open_clip_model.safetensors",
                "open_clip_pytorch_model.safetensors")  # open_clip's order of preference, .bin first here
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges: an export writes it; open_clip ships its own


def is_openclip_folder(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def model_config_from_openclip(model_cfg: dict) -> ModelConfig:
    """Our ``ModelConfig`` for open_clip's model config. Its text pooling (``pool_type`` argmax, or eos at
    ``eos_id``) becomes our end token; ``pad_id`` is moot under a causal mask; any other key this model does not
    implement (``quick_gelu``, layer scale, another tower) is an error naming it."""
    cfg = json.loads(json.dumps(model_cfg))
    if cfg.get("quick_gelu") is True:
        raise ValueError("quick_gelu: true (OpenAI's own weights): this model's GELU is the exact one")
    cfg.pop("quick_gelu", None)
    text = cfg.get("text_cfg", {})
    pool = text.pop("pool_type", "argmax")
    eos_id = text.pop("eos_id", None)
    text.pop("pad_id", None)
    if pool not in ("argmax", "eos"):
        raise ValueError(f"text_cfg.pool_type {pool!r}: this model pools at the end token (argmax or eos)")
    if pool == "eos":
        text["eot_id"] = eos_id if eos_id is not None else 2  # open_clip's default eos_id
    return ModelConfig.from_dict(cfg)


def check_preprocess(pre: dict, folder: Path) -> None:
    """The preprocessing a folder's model was trained with must be the one evaluation and scoring apply (CLIP's
    mean and std, the short side resized bicubic and the centre cropped): a model normalised otherwise (some
    LAION models use 0.5) would load and score wrong."""
    from trainer.data import MEAN, STD

    for key, want in (("mean", MEAN), ("std", STD)):
        got = pre.get(key)
        if got is None:
            continue
        same = isinstance(got, (list, tuple)) and len(got) == 3 and all(
            isinstance(a, (int, float)) and abs(a - float(b)) < 1e-6 for a, b in zip(got, want, strict=True))
        if not same:
            raise ValueError(f"{folder}: preprocess_cfg.{key} {got} is not CLIP's "
                             f"{[round(float(v), 8) for v in want]}, which evaluation and scoring apply")
    for key, want in (("resize_mode", "shortest"), ("interpolation", "bicubic")):
        if pre.get(key, want) != want:
            raise ValueError(f"{folder}: preprocess_cfg.{key} {pre[key]!r}: this evaluation and scoring apply "
                             f"{want!r}")


def read_folder_config(folder: Path) -> tuple[ModelConfig, dict]:
    """The folder's model config as ours, and its preprocessing, checked: ``ValueError`` saying why a folder
    would be read as another model."""
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / CONFIG_FILE}: not a readable open_clip config ({exc})") from None
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("text_cfg", {}), dict):
        raise ValueError(f"{folder / CONFIG_FILE}: no model config (an object with text_cfg and vision_cfg)")
    if "hf_tokenizer_name" in model_cfg.get("text_cfg", {}):
        raise ValueError(f"{folder}: the model tokenises with a Hugging Face tokenizer, not CLIP's BPE")
    pre = raw.get("preprocess_cfg") or {}
    if not isinstance(pre, dict):
        raise ValueError(f"{folder / CONFIG_FILE}: preprocess_cfg is not an object")
    check_preprocess(pre, folder)
    try:
        cfg = model_config_from_openclip(model_cfg)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ValueError(f"{folder}: {UNSUPPORTED}: {exc}") from None
    size = pre.get("size", cfg.vision_cfg.image_size)
    if size not in (cfg.vision_cfg.image_size, [cfg.vision_cfg.image_size] * 2):
        raise ValueError(f"{folder}: preprocess_cfg.size {size} is not vision_cfg.image_size "
                         f"{cfg.vision_cfg.image_size}")
    return cfg, pre


UNSUPPORTED = "not a model this trainer implements (a ViT and a causal text transformer pooled at the end token)"


def load_openclip_folder(folder: str | Path, bpe_vocab: str | Path | None = None) -> tuple[CLIP, TextTokenizer]:
    """Our CLIP and CLIP's tokenizer for an open_clip model folder (``open_clip_config.json`` and a weights
    file: an export of this trainer, or a download of an open_clip model from the Hugging Face Hub). The
    vocabulary is the folder's ``bpe_simple_vocab_16e6.txt.gz`` or ``bpe_vocab``."""
    from trainer.tokenizer import load_clip_bpe

    folder = Path(folder)
    cfg, _ = read_folder_config(folder)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"no weights in {folder} (one of {', '.join(WEIGHT_FILES)})")
    if weights.suffix == ".safetensors" and importlib.util.find_spec("safetensors") is None:
        raise ValueError(f"{weights}: reading .safetensors needs the safetensors package (pip install safetensors)")
    vocab = folder / VOCAB_FILE if (folder / VOCAB_FILE).is_file() else bpe_vocab
    if vocab is None:
        raise FileNotFoundError(f"no {VOCAB_FILE} in {folder}: give CLIP's vocabulary file (open_clip ships it)")
    tokenizer = load_clip_bpe(vocab, cfg.text_cfg.context_length)
    if tokenizer.vocab_size != cfg.text_cfg.vocab_size:
        raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens, the model's vocab_size is "
                         f"{cfg.text_cfg.vocab_size}")
    try:
        return load_openclip(weights, cfg), tokenizer
    except (TypeError, AttributeError, KeyError) as exc:  # a shape this model cannot take: a ResNet's layer list
        raise ValueError(f"{folder}: {UNSUPPORTED}: {type(exc).__name__}: {exc}") from None
