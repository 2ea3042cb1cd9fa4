"""The training step's levers: fused AdamW (``optim.fused``) and the compiled forward + loss (``compile``,
``compile_scope``, ``compile_mode``), each decided per device, and the eager CPU step, which must stay the step it
was (same numbers to the bit)."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_train_config
from trainer.data import normalize
from trainer.loss import ClipLoss
from trainer.model import CLIP, ModelConfig, TextConfig, VisionConfig
from trainer.train import SDPA_SWITCHES, configure_attention, make_optimizer, make_step, train_step

MICRO = ModelConfig(embed_dim=16, vision_cfg=VisionConfig(image_size=16, patch_size=8, width=32, layers=2,
                                                          head_width=16),
                    text_cfg=TextConfig(context_length=8, vocab_size=50, width=32, heads=2, layers=2, eot_id=49))
CPU = torch.device("cpu")


def micro_model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(MICRO).train()


def batches(n: int = 3, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches as the loader hands them over: uint8 images, token ids ending in the end token, zero padded."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (size, 3, 16, 16), generator=g, dtype=torch.uint8)
        tokens = torch.randint(1, 49, (size, 8), generator=g)
        ends = torch.randint(2, 8, (size,), generator=g)
        positions = torch.arange(8).expand(size, 8)
        tokens[positions == ends[:, None]] = 49
        tokens[positions > ends[:, None]] = 0
        out.append((images, tokens))
    return out


def losses(*sets: str, steps: int = 6) -> tuple[list[float], CLIP]:
    cfg = load_train_config(None, ["optim.warmup_steps=2", *sets])
    model = micro_model()
    step, _ = make_step(cfg, model, CPU, bf16=False)
    data = batches()
    return [train_step(step, *data[i % len(data)])[0].item() for i in range(steps)], model


# ------------------------------------------------------------------------------------------------------- settings


def test_auto_settings_follow_the_device_and_explicit_ones_win():
    cfg = load_train_config(None)
    assert (cfg.optim.fused, cfg.compile, cfg.compile_scope, cfg.compile_mode) == ("auto", "auto", "step", "default")
    assert not cfg.optim.use_fused("cpu") and cfg.optim.use_fused("cuda")
    assert not cfg.use_compile("cpu") and cfg.use_compile("cuda")
    forced = load_train_config(None, ["optim.fused=true", "compile=true"])
    assert forced.optim.use_fused("cpu") and forced.use_compile("cpu")
    off = load_train_config(None, ["optim.fused=false", "compile=false"])
    assert not off.optim.use_fused("cuda") and not off.use_compile("cuda")
    for name in ("tiny-cpu", "vit-b-32-gpu"):
        named = load_train_config(name, ["tokenizer.clip_vocab_path=/vocab.txt.gz"])
        assert named.optim.use_fused("cuda") and named.use_compile("cuda") and not named.optim.use_fused("cpu")
    assert not load_train_config("tiny-cpu").use_compile("cpu")  # the CPU config stays eager


def test_a_compile_setting_that_would_be_ignored_is_an_error():
    with pytest.raises(ValueError, match="compile_mode=reduce-overhead has no effect with compile=false"):
        load_train_config(None, ["compile=false", "compile_mode=reduce-overhead"])
    with pytest.raises(ValueError, match="compile_scope=model has no effect"):
        load_train_config(None, ["compile=false", "compile_scope=model"])
    with pytest.raises(ValueError, match="fused"):
        load_train_config(None, ["optim.fused=sometimes"])
    # a saved config spells every default out: it loads again, compile off or not
    saved = load_train_config(None, ["compile=false"]).model_dump(mode="json")
    assert load_train_config(None, base=saved).compile is False


SWITCHES = {"cudnn": "cudnn_sdp_enabled", "flash": "flash_sdp_enabled", "efficient": "mem_efficient_sdp_enabled",
            "math": "math_sdp_enabled"}


def attention_switches() -> dict[str, bool]:
    return {name: getattr(torch.backends.cuda, reader)() for name, reader in SWITCHES.items()}


@pytest.mark.parametrize("kernel", ["cudnn", "flash", "efficient", "math"])
def test_the_attention_setting_leaves_one_fused_kernel_and_the_plain_fallback(kernel):
    """``attention`` sets torch's switches on CUDA: the one fused kernel asked for (none for math) and the plain
    attention, which takes the inputs a fused kernel refuses; auto turns them all on again; a CPU run sets none."""
    assert load_train_config(None, [f"attention={kernel}"]).attention == kernel
    before = attention_switches()
    try:
        configure_attention(kernel, torch.device("cpu"))
        assert attention_switches() == before
        configure_attention(kernel, torch.device("cuda"))  # the switches are torch's globals: no GPU needed to set
        assert attention_switches() == {name: name in (kernel, "math") for name in SWITCHES}
        configure_attention(kernel, torch.device("cuda"), fallback=False)  # a benchmark of one kernel: no fallback
        assert attention_switches() == {name: name == kernel for name in SWITCHES}
        configure_attention("auto", torch.device("cuda"))
        assert all(attention_switches().values())
    finally:
        for name, on in before.items():
            getattr(torch.backends.cuda, SDPA_SWITCHES[name])(on)


def test_an_unknown_attention_kernel_is_an_error():
    with pytest.raises(ValueError, match="attention"):
        load_train_config(None, ["attention=fastest"])


# ------------------------------------------------------------------------------------------------- the eager step


def test_the_eager_cpu_step_computes_what_it_always_did():
    """The step's forward (normalisation on the device, both towers, the loss) equals the earlier inline code to the
    bit, and on a CPU the defaults build torch's default AdamW and no compiled function."""
    cfg = load_train_config("tiny-cpu")
    model = micro_model()
    step, start = make_step(cfg, model, CPU, bf16=False)
    assert start == 0 and not hasattr(step.forward_loss, "_torchdynamo_orig_callable") and not step.cudagraphs
    assert all(g["fused"] is None and g["foreach"] is None for g in step.optimizer.param_groups)
    images, tokens = batches(1)[0]
    image_features, text_features = model(normalize(images), tokens)
    before = ClipLoss()(image_features, text_features, model.logit_scale.exp(), model.logit_bias)
    assert torch.equal(step.forward_loss(images, tokens), before)


def test_fused_adamw_on_a_cpu_follows_the_default_implementation():
    eager, eager_model = losses("optim.fused=false")
    fused, fused_model = losses("optim.fused=true")
    assert eager[0] == fused[0]  # same initialisation, same batch, before any update
    # measured: the fused kernel's rounding moves these 6 losses by <= 3.2e-7 relative, the weights by <= 8.5e-7
    assert fused == pytest.approx(eager, rel=1e-5)
    assert eager[-1] < eager[0] - 0.05  # the step learns: the 3 batches are being fitted
    for (name, a), b in zip(eager_model.state_dict().items(), fused_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("saved_fused, fused", [(True, False), (False, True)])
def test_resume_uses_the_implementation_the_run_config_asks_for(saved_fused, fused):
    """A checkpoint written fused (a GPU run) resumes unfused and the other way round: the config decides, and the
    step counts are where that implementation keeps them."""
    cfg = load_train_config(None, [f"optim.fused={str(saved_fused).lower()}"])
    model = micro_model()
    step, _ = make_step(cfg, model, CPU, bf16=False)
    for images, tokens in batches(2):
        train_step(step, images, tokens)
    ckpt = {"optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict(), "step": 2}
    resumed_cfg = load_train_config(None, [f"optim.fused={str(fused).lower()}"])
    optimizer, _, start = make_optimizer(resumed_cfg, model, ckpt, 1, fused=fused)
    assert start == 2 and all(g["fused"] == (fused or None) for g in optimizer.param_groups)
    counts = [s["step"] for s in optimizer.state.values()]
    assert counts and all(c.device.type == "cpu" and c.dtype == torch.float32 and c.item() == 2 for c in counts)
    images, tokens = batches(1)[0]
    step.forward_loss(images, tokens).backward()
    optimizer.step()  # the other implementation runs on the restored state
    assert all(s["step"].item() == 3 for s in optimizer.state.values())


# ----------------------------------------------------------------------------------------------- the compiled step


@pytest.mark.slow  # 6-13 s of tracing on 2 cores (measured)
def test_the_compiled_step_is_one_graph_and_gives_the_eager_losses(monkeypatch):
    """compile=true, compile_scope=step: normalisation, both towers and the loss trace as one graph without a break,
    and six steps on the same batches from the same initialisation give eager's losses and weights.

    The trainer's torch.compile call gets the aot_eager backend here: Dynamo's capture and AOTAutograd's joint
    forward/backward graph are the trainer's, only the kernels are eager ones. Inductor's own kernels on this CPU
    took 70 s to compile from a cold cache (15 s warm), too long for the suite; they gave these losses within
    5.2e-7 relative and these weights within 6.1e-7, and bench_train_gpu.py prints the same comparison on a GPU."""
    real_compile = torch.compile
    modes = []

    def aot_eager(fn, mode=None, dynamic=None):
        modes.append(mode)
        return real_compile(fn, backend="aot_eager", dynamic=dynamic)

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    eager, eager_model = losses("compile=false")
    monkeypatch.setattr(torch, "compile", aot_eager)
    compiled, compiled_model = losses("compile=true")
    assert modes == ["default"]  # the step function alone was compiled, in the configured mode
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters)
    assert compiled == eager  # measured: equal to the bit with aot_eager
    for (name, a), b in zip(eager_model.state_dict().items(), compiled_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    torch._dynamo.reset()


def test_a_run_saved_before_the_levers_resumes_with_the_command_line_that_started_it():
    """A config saved before compile took "auto" says compile: false (the old default) and has no compile_scope or
    optim.fused: it reads as today's defaults, so --config tiny-cpu on resume agrees with it."""
    from trainer.config import config_differences

    old = load_train_config("tiny-cpu").model_dump(mode="json")
    del old["compile_scope"], old["compile_mode"], old["optim"]["fused"]
    old["compile"] = False
    saved = load_train_config(None, base=old)
    assert saved.compile == "auto" and saved.optim.fused == "auto"
    assert config_differences(saved, load_train_config("tiny-cpu")) == []
    assert load_train_config(None, ["compile=false"], base=old).compile is False  # an explicit --set still wins
    today = load_train_config(None, ["compile=false"]).model_dump(mode="json")
    assert load_train_config(None, base=today).compile is False  # a saved explicit false stays false
