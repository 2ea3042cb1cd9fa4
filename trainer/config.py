"""One pydantic model for a training run: loaded from YAML, overridden with ``--set``, saved in every checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from witbuild.yaml_io import ConfigError, apply_sets, first_error, read_raw_config, validate

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class Section(BaseModel):
    """Unknown keys and non-finite numbers refused: a typo or ``.inf`` would otherwise train on a setting nobody
    meant (an infinite clip norm clips nothing, an infinite peak makes every MFU 0)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSection(Section):
    batch_size: int = Field(64, ge=1, description="Samples per rank per step; the global batch is this × ranks.")
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank.")
    holdout_shards: int = Field(0, ge=0, description="Last shards kept out of training for retrieval evaluation; "
                                                     "0: hold out data.holdout_fraction of the samples instead.")
    holdout_fraction: float = Field(
        0.02, ge=0, lt=1, description="Share of the samples kept out of training for retrieval evaluation when "
                                      "holdout_shards is 0, chosen by a hash of each sample's key: the same split on "
                                      "every rank and run, on a build of any size.")
    caption_key: str = Field("txt", min_length=1)
    shuffle_buffer: int = Field(1000, ge=1)
    crop_scale: tuple[float, float] = Field((0.9, 1.0), description="[lo, hi]: each training crop covers this "
                                                                     "share of the image's area, 0 < lo <= hi <= 1.")
    epoch_samples: int | None = Field(None, ge=1, description="Samples per epoch; default: the training samples.")

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_is_a_share(cls, v: tuple[float, float]) -> tuple[float, float]:
        """Outside (0, 1] no crop fits (or none has an area) and every one falls back to the centre square: the run
        would train without the augmentation it asked for, and say nothing."""
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"must be [lo, hi] with 0 < lo <= hi <= 1 (shares of the image's area), got [{lo}, {hi}]")
        return v

    @model_validator(mode="after")
    def _one_holdout(self) -> DataSection:
        """Whole shards or a share of samples, never both: a given holdout_shards turns the default share off."""
        if self.holdout_shards and self.holdout_fraction:
            if "holdout_fraction" in self.model_fields_set:
                raise ValueError("data.holdout_shards and data.holdout_fraction both hold data out for evaluation: "
                                 "set one of them to 0")
            self.holdout_fraction = 0.0
        return self


class TokenizerSection(Section):
    kind: Literal["bpe", "clip"] = "bpe"
    vocab_size: int = Field(4096, ge=300, description="Size of the byte-level BPE fitted to the captions.")
    min_frequency: int = Field(2, ge=1)
    clip_vocab_path: str | None = Field(None, description="CLIP's bpe_simple_vocab_16e6.txt.gz, for kind=clip.")

    @model_validator(mode="after")
    def _clip_needs_file(self) -> TokenizerSection:
        if self.kind == "clip" and not self.clip_vocab_path:
            raise ValueError("tokenizer.kind=clip needs tokenizer.clip_vocab_path "
                             "(CLIP's bpe_simple_vocab_16e6.txt.gz)")
        return self


class OptimSection(Section):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR of the cosine as a share of lr.")
    grad_clip: float | None = Field(1.0, ge=0, description="Max gradient norm; null (or 0) for none. A negative "
                                                           "one would flip every gradient.")
    fused: bool | Literal["auto"] = Field(
        "auto", description="AdamW's implementation. true: the fused kernel (a few launches per step instead of "
                            "several per parameter tensor: on CUDA the optimiser step is several times faster); "
                            "false: torch's default (for-each on CUDA, the per-tensor loop on CPU); auto: fused on "
                            "CUDA, torch's default on CPU, where a run gives the same numbers as before the option "
                            "existed. Decided by the run's config on resume too.")

    @field_validator("betas")
    @classmethod
    def _betas_are_decays(cls, v: tuple[float, float]) -> tuple[float, float]:
        """AdamW's moment decays: outside [0, 1) the moments grow without bound or never forget."""
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each of AdamW's betas must be in [0, 1), got [{v[0]}, {v[1]}]")
        return v

    def use_fused(self, device_type: str) -> bool:
        """Whether AdamW runs fused on a device of this type ("cuda", "cpu")."""
        return device_type == "cuda" if self.fused == "auto" else self.fused


class EvalSection(Section):
    zeroshot_dir: str | None = Field(None, description="Labelled folder <class>/<image> (optional zeroshot.json).")
    retrieval: bool = True
    linear_probe: bool = True
    batch_size: int = Field(256, ge=1, description="Images or texts per forward pass in evaluation.")
    max_retrieval_pairs: int = Field(5000, ge=10)
    class_counts: str | None = Field(None, description="JSON {class: pairs in the training pool} of the zero-shot "
                                                       "classes: adds head/tail (most/least frequent third) accuracy.")


class TrainConfig(Section):
    model: str = Field("tiny", description="Name in trainer/configs/models/ or a path to a model JSON.")
    loss: Literal["clip", "siglip"] = "clip"
    steps: int = Field(1000, ge=1, description="Optimiser steps of the whole run.")
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    grad_checkpointing: bool = False
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the training step (compile_scope says what); auto: on CUDA, off on CPU, "
                            "where compiling costs minutes of start-up for little and the eager step is the tested "
                            "reference.")
    compile_scope: Literal["step", "model"] = Field(
        "step", description="step: the step's forward (normalisation, both towers) and its loss compiled as one "
                            "function, so one graph and one backward graph per step in one process (with DDP, DDP's "
                            "own forward stays eager and the towers are split at its gradient buckets); model: only "
                            "the (DDP-wrapped) model, the loss eager.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode: reduce-overhead adds CUDA graphs (the step's shapes are static: "
                               "every batch is full), max-autotune also searches matmul kernels (minutes more).")
    attention: Literal["auto", "cudnn", "flash", "efficient", "math"] = Field(
        "auto", description="The attention kernel on CUDA: auto lets torch choose (cuDNN's on a Hopper GPU); the "
                            "others are torch's flash and memory-efficient kernels and the plain matmul, softmax, "
                            "matmul, which the compiler fuses (at CLIP's 50 to 200 tokens the fused kernels' "
                            "backward is far from its memory floor). No effect on a CPU.")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    peak_flops: float | None = Field(None, gt=0, description="Per-device peak FLOP/s for MFU; default: a matmul "
                                                               "measured at start in the training precision.")
    output: str | None = Field(None, description="Run folder; default runs/<config name>.")
    data: DataSection = DataSection()
    tokenizer: TokenizerSection = TokenizerSection()
    optim: OptimSection = OptimSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _compile_settings_apply(self) -> TrainConfig:
        """A compile setting next to compile: false would be silently ignored: an error instead (the defaults, which
        every saved config spells out, are fine)."""
        if self.compile is False:
            given = [f"{k}={getattr(self, k)}" for k in ("compile_scope", "compile_mode")
                     if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"{' and '.join(given)} has no effect with compile=false: set compile to true or "
                                 f"auto, or leave it out")
        return self

    def use_compile(self, device_type: str) -> bool:
        """Whether the step is compiled on a device of this type ("cuda", "cpu")."""
        return device_type == "cuda" if self.compile == "auto" else self.compile


def resolve_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"training config {name_or_path!r} not found: give a YAML path or one of {names}")


def load_train_config(path: str | None, sets: list[str] | None = None,
                      base: dict[str, Any] | None = None) -> TrainConfig:
    """A YAML file (or a saved config ``base``) with ``--set`` overrides, validated: a :class:`ConfigError` of one
    line naming the field (``key.sub: what``, as ``--set`` names it) when it is not valid."""
    if base is not None:
        return validate(TrainConfig, apply_sets(upgrade_saved(copy.deepcopy(base)), sets), "the resumed run's config")
    raw = read_raw_config(resolve_config_path(path) if path else None, sets)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None


def upgrade_saved(raw: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version, in today's terms: runs saved before data.holdout_fraction existed held
    out whole shards or nothing, so they keep doing that (its default would change what a resumed run trains on).
    Runs saved before compile took "auto" (no compile_scope then) had compile false by default: read as auto, so the
    command line that started such a run still continues it (the same on a CPU; compiled on CUDA, which changes the
    speed, not what is computed); an explicit ``--set compile=false`` on resume still wins."""
    data = raw.get("data")
    if isinstance(data, dict) and "holdout_fraction" not in data:
        data["holdout_fraction"] = 0.0
    if "compile_scope" not in raw and raw.get("compile") is False:
        raw["compile"] = "auto"
    return raw


def saved_config(raw: dict[str, Any]) -> TrainConfig:
    """The validated config a checkpoint carries."""
    return validate(TrainConfig, upgrade_saved(copy.deepcopy(raw)), "the checkpoint's config")


def config_differences(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ("output",)) -> list[str]:
    """``key: a → b`` for every field where the two configs differ (dotted keys, in field order)."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return [f"{k}: {fa[k]!r} → {fb[k]!r}" for k in fa if k not in ignore and fa[k] != fb[k]]


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
