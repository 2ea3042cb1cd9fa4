"""The experiment's one config model, and every check that must pass before anything is built or trained.

An experiment is one build config (its pool: extract → filter → match, built once) and variants of what follows:
``balanced`` is the build config as it is, ``raw`` the same pool sampled uniformly to the balanced variant's size
(``balance.method=uniform``), and each named variant is the build config with ``--set`` overrides. Every variant
trains the same model with the same budget and the same seeds, and is scored on the same held-out labelled folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from witbuild.demo import DEMO_PORT
from witbuild.yaml_io import first_error, read_raw_config

BASELINE, BALANCED, BOOTSTRAP = "raw", "balanced", "bootstrap"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class ExperimentError(ValueError):
    """A config or input that would make the experiment fail or mean nothing: reported before anything runs."""


class DemoWebSection(BaseModel):
    """Serve the bundled demo web on 127.0.0.1 while the variants are built, and write its held-out folders."""

    model_config = ConfigDict(extra="forbid")
    pages: int = Field(2000, ge=10)
    seed: int = 0
    port: int = Field(DEMO_PORT, ge=1, le=65535)


class BootstrapSection(BaseModel):
    """The bootstrap variant: the model trained on the balanced variant scores that build's samples, the best
    ``keep_fraction`` of them are kept (finalize's clip_score), and the same training runs on what is left."""

    model_config = ConfigDict(extra="forbid")
    keep_fraction: float = Field(0.5, gt=0, lt=1, description="clip_score.keep_fraction of the bootstrap variant.")
    seed: int | None = Field(None, description="The balanced variant's training seed whose checkpoint scores; "
                                               "default: the first of seeds.")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build_config: str = Field("configs/demo.yaml", description="The build config every variant starts from.")
    inputs: list[str] = Field([], description="The build's inputs; default: the build config's (or the demo web).")
    build_sets: list[str] = Field([], description="--set overrides of the build config for every variant.")
    demo_web: DemoWebSection | None = Field(None, description="Build from the bundled demo web, served locally.")
    output: str = "experiment-out"
    variants: dict[str, list[str]] = Field(
        {}, description="Extra variants: name -> --set overrides of the build config (another balance.t, a filter "
                        "setting). 'raw' and 'balanced' are always there.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Training seeds: every variant trains once per seed.")
    train_config: str = Field("tiny-cpu", description="Name in trainer/configs/ or a YAML path.")
    train_sets: list[str] = Field([], description="--set overrides of the training config, the same for every run.")
    nproc: int = Field(2, ge=1, description="Training processes per run (torchrun).")
    zeroshot_dir: str | None = Field(None, description="Held-out labelled folder <class>/<image> (+ zeroshot.json); "
                                                       "default with demo_web: the demo's eval/colours.")
    bootstrap: BootstrapSection | None = Field(
        None, description="Add the 'bootstrap' variant: filter the balanced build with the model trained on it "
                          "(CLIP score, keep_fraction), then train again at the same budget.")

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in v:
            if name in (BASELINE, BALANCED, BOOTSTRAP):
                raise ValueError(f"variant {name!r} is built in: name yours otherwise")
            if not NAME.match(name):
                raise ValueError(f"variant name {name!r}: use lower-case letters, digits, '-' and '_' (≤ 40)")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ExperimentConfig:
        if self.demo_web is not None and self.inputs:
            raise ValueError("inputs and demo_web name two sources for one pool: give one of them")
        return self

    @model_validator(mode="after")
    def _bootstrap_seed(self) -> ExperimentConfig:
        if self.bootstrap is not None and self.bootstrap.seed is not None and self.bootstrap.seed not in self.seeds:
            raise ValueError(f"bootstrap.seed {self.bootstrap.seed} is not one of seeds {self.seeds}")
        return self

    def bootstrap_seed(self) -> int:
        assert self.bootstrap is not None
        return self.seeds[0] if self.bootstrap.seed is None else self.bootstrap.seed

    def heldout_dir(self) -> Path:
        if self.zeroshot_dir:
            return Path(self.zeroshot_dir)
        if self.demo_web is not None:
            return Path(self.output) / "eval" / "colours"
        raise ExperimentError("zeroshot_dir is not set: name a held-out labelled folder <class>/<image>")

    def variant_sets(self) -> dict[str, list[str]]:
        """Each variant's --set overrides on top of build_sets; raw's target size is known only once balanced
        has run, so it is filled in then."""
        return {BASELINE: ["balance.method=uniform", "balance.t=null"], BALANCED: [], **self.variants}


def load_experiment_config(path: str | Path, sets: list[str] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(read_raw_config(Path(path), sets))
    except ValidationError as exc:
        raise ExperimentError(f"{path}: {first_error(exc)}") from None
    except (OSError, ValueError) as exc:  # missing file, invalid YAML, a bad --set
        raise ExperimentError(str(exc)) from None


def check_inputs(build: Any) -> None:
    """The pool's inputs exist (files, globs, folders): a missing one is an error before Spark starts."""
    from witbuild.sources.inputs import InputError, expand_inputs

    try:
        if build.input.paths:
            expand_inputs(build.input.paths)
    except InputError as exc:
        raise ExperimentError(str(exc)) from None


def check_variants(cfg: ExperimentConfig, inputs: list[str] | None) -> dict[str, Any]:
    """Every variant's build config, validated now: an unknown or ill-typed setting fails before the pool is built."""
    from witbuild.config import load_config

    out = {}
    for name, sets in cfg.variant_sets().items():
        extra = ["balance.target_size=1"] if name == BASELINE else []
        try:
            out[name] = load_config(cfg.build_config, inputs=inputs or None, output=str(Path(cfg.output)),
                                    sets=[*cfg.build_sets, *sets, *extra])
        except ValidationError as exc:
            raise ExperimentError(f"variant {name!r}: {first_error(exc)}") from None
        except (OSError, ValueError) as exc:
            raise ExperimentError(f"variant {name!r}: {exc}") from None
    return out


def check_train_config(cfg: ExperimentConfig) -> None:
    try:
        from trainer.config import load_train_config
    except ImportError as exc:
        raise ExperimentError(f"the trainer (trainer/ of the source tree) cannot be imported: {exc}") from None

    try:
        load_train_config(cfg.train_config, [*cfg.train_sets, "seed=0"])
    except ValidationError as exc:
        raise ExperimentError(f"training config: {first_error(exc)}") from None
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"training config: {exc}") from None


def check_heldout(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The folder's classes and their names in prompts; a folder without labelled images, or a class that
    zeroshot.json names but the folder lacks, is an error."""
    if not folder.is_dir():
        raise ExperimentError(f"held-out folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    empty = [c for c in classes if not _images(folder / c)]
    if len(empty) == len(classes):
        raise ExperimentError(f"held-out folder {folder} has no labels: it needs one sub-folder of images per class")
    if empty:
        raise ExperimentError(f"held-out folder {folder}: class(es) without images: {', '.join(empty[:5])}")
    names: dict[str, str] = {}
    spec = folder / "zeroshot.json"
    if spec.is_file():
        try:
            names = dict(json.loads(spec.read_text()).get("classnames") or {})
        except (ValueError, AttributeError) as exc:
            raise ExperimentError(f"{spec}: not a readable zeroshot.json ({exc})") from None
        missing = sorted(set(names) - set(classes))
        if missing:
            raise ExperimentError(f"held-out folder {folder} lacks images of {len(missing)} class(es) its "
                                  f"zeroshot.json names: {', '.join(missing[:5])}")
    return classes, {c: str(names.get(c, c)) for c in classes}


def _images(folder: Path) -> bool:
    """Whether the folder holds an image the trainer's evaluation reads (the same suffixes as it)."""
    from trainer.data import IMAGE_SUFFIXES

    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
