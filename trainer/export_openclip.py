"""Export a checkpoint of this trainer as an open_clip model folder, for the tools built on open_clip.

    python trainer/export_openclip.py --checkpoint runs/vit-b-32 --out exported/vit-b-32

The folder holds ``open_clip_config.json`` (the model config and the preprocessing),
``open_clip_pytorch_model.bin`` (the weights under open_clip's names) and CLIP's vocabulary file
``bpe_simple_vocab_16e6.txt.gz``, the layout open_clip reads with
``open_clip.create_model_and_transforms("local-dir:exported/vit-b-32")`` and
``open_clip.get_tokenizer("local-dir:exported/vit-b-32")``, so clip_benchmark and the rest of that ecosystem
evaluate the model as open_clip runs it; ``trainer/evaluate.py`` and ``clip_score.checkpoint`` read it back (and
any such folder from the Hugging Face Hub). Only runs trained with CLIP's tokenizer (``tokenizer.kind: clip``)
export: open_clip tokenises with CLIP's BPE (the same ids, tests/test_clip_tokenizer_reference.py) or a Hugging
Face tokenizer, and a BPE fitted on the captions is neither.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from trainer.data import MEAN, STD
from trainer.model import ModelConfig
from trainer.openclip_weights import CONFIG_FILE, VOCAB_FILE, WEIGHT_FILES, convert_state_dict
from trainer.tokenizer import CLIP_END, TextTokenizer

WEIGHTS_FILE = WEIGHT_FILES[0]

#: ours → open_clip's name, applied in order to each key: the inverse of ``openclip_weights._RENAMES``.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^text\.(token_embedding|positional_embedding|transformer|ln_final|text_projection)", r"\1"),
    (r"\.blocks\.", ".resblocks."),
    (r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.mlp\.0\.", ".mlp.c_fc."),
    (r"\.mlp\.2\.", ".mlp.c_proj."),
)


def openclip_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def openclip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under open_clip's names; checked to map back to itself through the import's renames, so
    the two directions cannot drift apart."""
    out = {openclip_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    back = convert_state_dict(out)
    if set(back) != set(state):
        raise RuntimeError(f"export and import names disagree: {sorted(set(back) ^ set(state))[:5]}")
    return out


def openclip_model_config(cfg: ModelConfig) -> dict:
    """open_clip's model JSON for our architecture (the keys its ``CLIP`` class takes)."""
    v, t = cfg.vision_cfg, cfg.text_cfg
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    if t.eot_id is not None and t.eot_id != t.vocab_size - 1:  # CLIP's end token is the largest id: argmax
        text.update(pool_type="eos", eos_id=t.eot_id)
    out = {"embed_dim": cfg.embed_dim,
           "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                          "patch_size": v.patch_size, "head_width": v.head_width, "mlp_ratio": v.mlp_ratio},
           "text_cfg": text, "init_logit_scale": cfg.init_logit_scale}
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


def preprocess_config(cfg: ModelConfig) -> dict:
    """The evaluation view of ``trainer.evaluate``: the short side resized (bicubic), the centre cropped, CLIP's
    mean and std."""
    return {"size": cfg.vision_cfg.image_size, "mean": [round(float(m), 8) for m in MEAN],
            "std": [round(float(s), 8) for s in STD], "interpolation": "bicubic",
            "resize_mode": "shortest"}


def check_clip_tokenizer(tokenizer: TextTokenizer) -> None:
    if tokenizer.vocab_size != 49408 or tokenizer.tok.token_to_id(CLIP_END) != 49407:
        raise ValueError("this run fitted its own BPE (tokenizer.kind: bpe); open_clip tokenises with CLIP's BPE "
                         "or a Hugging Face tokenizer, so only runs trained with tokenizer.kind: clip export")
    if tokenizer.clean != "clip":
        raise ValueError("this run's CLIP tokenizer was saved without CLIP's text cleaning (a checkpoint older "
                         "than the cleaning), so it did not tokenise as open_clip does")


def write_clip_vocab(tokenizer: TextTokenizer, path: Path) -> None:
    """CLIP's ``bpe_simple_vocab_16e6.txt.gz`` again, from the merges the checkpoint's tokenizer carries: a header
    line, then one merge a line, in rank order (the merges CLIP uses; its file lists more, which no one reads)."""
    merges = json.loads(tokenizer.tok.to_str())["model"]["merges"]
    lines = ["#version: 0.2", *(" ".join(m) if isinstance(m, list) else m for m in merges)]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out/open_clip_config.json`` and ``out/open_clip_pytorch_model.bin`` for ``checkpoint`` (a file, a
    run folder or ``…/latest``); ``ValueError`` for a run open_clip cannot reproduce."""
    from trainer.evaluate import load_checkpoint

    model, tokenizer, ckpt = load_checkpoint(checkpoint)
    check_clip_tokenizer(tokenizer)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(openclip_state_dict(model.state_dict()), out / WEIGHTS_FILE)
    write_clip_vocab(tokenizer, out / VOCAB_FILE)
    config = {"model_cfg": openclip_model_config(model.cfg), "preprocess_cfg": preprocess_config(model.cfg),
              "witbuild": {"checkpoint": str(Path(checkpoint).resolve()), "step": ckpt.get("step"),
                           "run_config": ckpt.get("config")}}  # evaluate.py scores the run's own holdout
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="Checkpoint file, run folder, or …/checkpoints/latest.")
    ap.add_argument("--out", required=True, help="Folder to write (new or empty).")
    args = ap.parse_args(argv)
    try:
        folder = export(args.checkpoint, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"open_clip model written to {folder}: open_clip.create_model_and_transforms('local-dir:{folder}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
