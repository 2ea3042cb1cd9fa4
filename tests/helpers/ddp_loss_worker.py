"""Run under ``torchrun --nproc_per_node=2``: one DDP step on half of a fixed batch per rank.

Writes the all-reduced loss and every parameter's gradient (after DDP's averaging) to OUT, for
tests/test_trainer_loss.py to compare with one process over the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.helpers.tiny_batch import BATCH, make_batch, make_model
from trainer.loss import make_loss


def main(out: str, loss_name: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model(loss_name)
    ddp = DistributedDataParallel(model)
    images, tokens = make_batch()
    n = BATCH // world
    img_f, txt_f = ddp(images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n])
    loss = make_loss(loss_name)(img_f, txt_f, model.logit_scale.exp(), model.logit_bias)
    loss.backward()
    reported = loss.detach().clone()
    dist.all_reduce(reported)
    reported /= world
    if rank == 0:
        torch.save({"loss": reported, "grads": {k: p.grad for k, p in model.named_parameters()}, "world": world}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
