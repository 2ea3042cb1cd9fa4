"""The distributed losses: 2 ranks under torchrun (gloo) give the loss and the gradients of one
process over the whole batch; the single-process losses equal their textbook formulas."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, VENV_BIN
from tests.helpers.tiny_batch import BATCH, make_batch, make_model
from trainer.loss import ClipLoss, SigLipLoss, make_loss


@torch.no_grad()
def local_only(loss_name: str) -> torch.Tensor:
    """What 2 ranks would report if each scored its half against its own half only (no gather)."""
    model = make_model(loss_name)
    images, tokens = make_batch()
    img_f, txt_f = model(images, tokens)
    loss = make_loss(loss_name)
    h = BATCH // 2
    halves = [loss(img_f[s], txt_f[s], model.logit_scale.exp(), model.logit_bias)
              for s in (slice(0, h), slice(h, None))]
    return (halves[0] + halves[1]) / 2


def reference(loss_name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = make_model(loss_name)
    images, tokens = make_batch()
    img_f, txt_f = model(images, tokens)
    loss = make_loss(loss_name)(img_f, txt_f, model.logit_scale.exp(), model.logit_bias)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_two_ranks_equal_one_process_over_the_full_batch(loss_name, tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "helpers" / "ddp_loss_worker.py"), str(out), loss_name],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(out, weights_only=True)
    assert got["world"] == 2
    loss, grads = reference(loss_name)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-12)
    # the ranks did gather: without it they would report the mean of the halves' own losses, which this batch puts
    # far outside the tolerance above (measured: 1.20 apart for clip, 0.030 for siglip)
    assert abs(got["loss"].item() - local_only(loss_name).item()) > 1e-3
    assert set(got["grads"]) == set(grads)
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-8, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_clip_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(12, 7, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(12, 7, generator=g, dtype=torch.float64), dim=1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    logits = scale * img @ txt.T
    p_i = torch.log_softmax(logits, 1).diagonal().mean()
    p_t = torch.log_softmax(logits.T, 1).diagonal().mean()
    torch.testing.assert_close(ClipLoss()(img, txt, scale), -(p_i + p_t) / 2)


def test_siglip_loss_is_pairwise_sigmoid():
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    total = 0.0
    for i in range(6):
        for j in range(6):
            z = (scale * img[i] @ txt[j] + bias).item()
            y = 1.0 if i == j else -1.0
            total += -torch.nn.functional.logsigmoid(torch.tensor(y * z, dtype=torch.float64)).item()
    assert SigLipLoss()(img, txt, scale, bias).item() == pytest.approx(total / 6, rel=1e-12)


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        make_loss("hinge")


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_one_process_loss_and_gradients_equal_open_clips(loss_name, tmp_path):
    """open_clip 3.3's ``ClipLoss`` and ``SigLipLoss`` (its ``loss.py`` from the wheel as published) on the same
    features, scale and bias: the same loss and the same gradients, so a run's loss curve reads as open_clip's."""
    from tests.helpers.reference_wheels import extract, load_module

    member = "open_clip/loss.py"
    reference = load_module(extract("open_clip_torch", [member], tmp_path)[member], "open_clip_reference_loss")
    theirs_fn = reference.ClipLoss() if loss_name == "clip" else reference.SigLipLoss()
    g = torch.Generator().manual_seed(0)
    raw = (torch.randn(48, 16, generator=g), torch.randn(48, 16, generator=g))
    results = []
    for fn in (make_loss(loss_name), theirs_fn):
        img, txt = (r.clone().requires_grad_() for r in raw)
        scale, bias = torch.tensor(14.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        args = (F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale)
        value = fn(*args, bias) if loss_name == "siglip" else fn(*args)
        value.backward()
        grads = [img.grad, txt.grad, scale.grad] + ([bias.grad] if loss_name == "siglip" else [])
        results.append([value.detach(), *grads])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
