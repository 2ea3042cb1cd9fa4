"""Writes this folder's reference with open_clip itself (run where open-clip-torch is installed):

    python tests/data/openclip_micro/make_reference.py

``state_dict.pt``: ``open_clip.create_model`` of ``model.json`` (seeded random weights, the layer norms and
biases perturbed so that no parameter sits at its initial constant), saved as open_clip saves it.
``reference.pt``: images and token ids, and open_clip's own ``encode_image`` / ``encode_text`` (normalised)
and logit scale for them: what our model must reproduce from ``state_dict.pt`` alone.
"""

import json
from pathlib import Path

import open_clip
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    cfg = json.loads((HERE / "model.json").read_text())
    open_clip.add_model_config(HERE / "model.json")  # registered by its file name: "model"
    torch.manual_seed(0)
    model = open_clip.create_model("model", pretrained=None).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                              "ln_final.weight")):
                p.add_(0.1 * torch.randn_like(p))
    images = torch.randn(4, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    vocab, n = cfg["text_cfg"]["vocab_size"], cfg["text_cfg"]["context_length"]
    tokens = torch.zeros(4, n, dtype=torch.long)
    for i, length in enumerate((3, 7, 11, n)):  # start, words, end token (the largest id), padding
        tokens[i, 0] = vocab - 2
        tokens[i, 1:length - 1] = torch.randint(1, vocab - 2, (length - 2,))
        tokens[i, length - 1] = vocab - 1
    with torch.no_grad():
        image_emb = model.encode_image(images, normalize=True)
        text_emb = model.encode_text(tokens, normalize=True)
    torch.save(model.state_dict(), HERE / "state_dict.pt")
    torch.save({"images": images, "tokens": tokens, "image_embeddings": image_emb, "text_embeddings": text_emb,
                "logit_scale": model.logit_scale.detach().clone(),
                "open_clip_version": open_clip.__version__, "torch_version": str(torch.__version__)},
               HERE / "reference.pt")
    print(f"open_clip {open_clip.__version__}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
