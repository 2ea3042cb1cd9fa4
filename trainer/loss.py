"""Contrastive losses whose gradient over several ranks equals the single-process full-batch one.

Each rank gathers the other ranks' features with an autograd-aware all_gather and computes only
its own rows of the similarity matrix (n × N rather than N × N): memory stays linear in the
global batch, and the backward of the gather sums every rank's gradient into the features it
owns. DDP then averages parameter gradients over ranks, which turns the mean of the ranks'
losses into exactly the loss of the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherSync(torch.autograd.Function):
    """All ranks' ``x`` concatenated along dim 0 by blocking collectives; the backward sums every rank's gradient
    of the gathered tensor (one all_reduce) and keeps this rank's rows, which is a reduce-scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        out = x.new_empty((size * x.shape[0], *x.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name first
        gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # one copy: all_reduce writes in place
        dist.all_reduce(grad)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0, differentiable; ``x`` itself in one process.

    On gloo the gather is blocking: torch's functional (async) autograd gather corrupts the heap there, a crash
    once every few thousand steps (SIGSEGV or a glibc abort, torch 2.13). On NCCL the functional collective stays,
    because ``torch.compile`` traces it into the step."""
    _, size = world()
    if size == 1:
        return x
    if dist.get_backend() == dist.Backend.GLOO:
        return _GatherSync.apply(x)
    from torch.distributed import _functional_collectives as fc

    # all_gather_tensor_autograd is the older, deprecated name of the same collective
    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    return gather(x.contiguous(), gather_dim=0, group=dist.group.WORLD)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Softmax and log-sigmoid in at least fp32, whatever precision autocast computed the logits in."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP): cross-entropy over images→texts and texts→images, averaged.

    ``forward(image_features, text_features, logit_scale)`` takes L2-normalised features and the
    exponentiated scale, as open_clip's ``ClipLoss`` does, so the two can be compared directly.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, _ = world()
        all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
        n = image_features.shape[0]
        labels = torch.arange(n, device=image_features.device) + rank * n
        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T
        loss_i = F.cross_entropy(_upcast(logits_per_image), labels)
        return (loss_i + F.cross_entropy(_upcast(logits_per_text), labels)) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023): every image-text pair is a binary decision.

    Each rank scores its images against all texts (gathered with grad): every pair of the global
    batch is scored exactly once. Normalised by the local batch size, as in the paper.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        rank, _ = world()
        all_texts = gather_with_grad(text_features)
        n = image_features.shape[0]
        logits = logit_scale * image_features @ all_texts.T
        if logit_bias is not None:
            logits = logits + logit_bias
        signs = -torch.ones_like(logits)
        idx = torch.arange(n, device=logits.device)
        signs[idx, idx + rank * n] = 1.0
        return -F.logsigmoid(signs * _upcast(logits)).sum() / n


def make_loss(name: str) -> nn.Module:
    losses = {"clip": ClipLoss, "siglip": SigLipLoss}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(losses)}")
    return losses[name]()
