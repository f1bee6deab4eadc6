"""A stage's behaviour, one class per stage: what trains per component, how its model is built from the backbone
and from the `--init-from` run, what it saves and names in its manifest, and what it refuses of a launch.

The stage itself is declared in `ecomtune.config.stages` (name, settings type, recipe field, which runs it may
start from, and the dotted path of its class here); `stage_unit` finds the class by that path, so the registry
there stays the one list of stages and `run_stage`, `plan` and `profile` never name one. A new stage of an
existing kind is a subclass of `ProjectorStageUnit` or `LoraStageUnit` and a `StageInfo` naming it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ecomtune.backbones.registry import ResolvedBackbone
from ecomtune.backbones.spec import ResolvedRoles
from ecomtune.config.schema import Recipe, StageSettings
from ecomtune.config.stages import StageInfo, stage_info
from ecomtune.errors import Problem
from ecomtune.runs.manifest import FinishedRun
from ecomtune.train.distributed import LaunchSetup
from ecomtune.train.models import lora_model, projector_model
from ecomtune.train.saving import adapter_outputs, projector_outputs, save_projector, save_stage_adapter


class StageUnit:
    """One stage's behaviour; `info` is its declaration. Subclasses build the model with what trains per
    component (`build`: `ecomtune.train.models` applies the stage's plan), save it (`save`), name the outputs
    (`outputs`) and may refuse a launch (`launch_problems`)."""

    def __init__(self, info: StageInfo) -> None:
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def init_from(self) -> tuple[str, ...]:
        return self.info.init_from

    def settings(self, recipe: Recipe) -> StageSettings:
        return self.info.settings_of(recipe)

    def build(self, recipe: Recipe, backbone: ResolvedBackbone, start: FinishedRun | None,
              show: bool) -> tuple[Any, ResolvedRoles, list]:
        """(model, roles, parameter rows), from the backbone or from `start`, the finished `--init-from` run."""
        raise NotImplementedError

    def save(self, trainer, model, roles: ResolvedRoles, processor, folder: Path) -> None:
        raise NotImplementedError

    def outputs(self, backbone: ResolvedBackbone) -> dict[str, str]:
        """The files the complete manifest names."""
        raise NotImplementedError

    def launch_problems(self, setup: LaunchSetup) -> list[Problem]:
        """What the stage itself refuses of a launch, beyond what every stage is checked for
        (`ecomtune.train.distributed.engine_problems`); when any, they are the only problems reported."""
        return []


class ProjectorStageUnit(StageUnit):
    """A stage that trains the projector alone (everything else frozen) and saves just its weights."""

    def build(self, recipe, backbone, start, show):
        return projector_model(recipe, self.name, backbone, show)

    def save(self, trainer, model, roles, processor, folder):
        save_projector(trainer, model, roles, processor, folder)

    def outputs(self, backbone):
        return projector_outputs(backbone)

    def launch_problems(self, setup: LaunchSetup) -> list[Problem]:
        """One process or DDP only: with nothing but a small projector to train, a sharded engine only adds risk."""
        if not setup.shards_parameters:
            return []
        name = self.name
        return [Problem(f"{name} trains only the projector; under {setup.describe()} the frozen base and the "
                        "trainable projector would be sharded together, and the projector file is written without a "
                        "gather", name, f"launch {name} with recipes/accelerate/ddp.yaml (or on one GPU); to fit a "
                        f"large base, set {self.info.field}.quant.load_in_4bit: true")]


class LoraStageUnit(StageUnit):
    """A stage that trains a LoRA adapter on a (4-bit) base (`ecomtune.train.models.lora_model`) and saves it."""

    def build(self, recipe, backbone, start, show):
        return lora_model(recipe, self.name, backbone, start, show)

    def save(self, trainer, model, roles, processor, folder):
        save_stage_adapter(trainer, model, roles, processor, folder)

    def outputs(self, backbone):
        return adapter_outputs(backbone)


class Align(ProjectorStageUnit):
    """Stage 1: vision-language alignment, the projector only, on captions."""


class Mid(LoraStageUnit):
    """Stage 1.5: mid-stage training on re-captions and OCR-style data (QLoRA)."""


class Sft(LoraStageUnit):
    """Stage 3: visual instruction tuning (QLoRA)."""


def stage_unit(name: str) -> StageUnit:
    """The behaviour of the registered stage `name`, found by the class path its declaration names; a ConfigError
    naming the stages there are when there is no such stage."""
    info = stage_info(name)
    module, _, attribute = info.unit.partition(":")
    unit = getattr(importlib.import_module(module), attribute)
    return unit(info)
