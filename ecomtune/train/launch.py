"""A stage against the launch it runs under (one process, DDP, FSDP, DeepSpeed): the engine checked against the
recipe before anything is read, then the data and the model's layout before any weights load, and the model built
as the engine needs it. The checks themselves are `ecomtune.train.distributed`'s; a stage adds its own refusals
(`StageUnit.launch_problems`)."""

from __future__ import annotations

import bisect
import itertools
from array import array

from ecomtune.backbones.model_loading import pick_compute_dtype, role_overrides
from ecomtune.config.schema import Recipe
from ecomtune.errors import Problem
from ecomtune.train.distributed import (
    LaunchSetup,
    check_engine,
    check_samples,
    check_wrap_classes,
    engine_problems,
    module_classes,
    read_setup,
    recipe_for_engine,
    uniform_frozen_dtype,
)
from ecomtune.train.preparation import PreparedData
from ecomtune.train.stage_units import StageUnit, stage_unit


def launch_problems(recipe: Recipe, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    """Every way the stage's recipe and the launch disagree: the stage's own refusals when it has any, else every
    engine check (`engine_problems`)."""
    return engine_problems(recipe, stage_name, setup, stage_unit(stage_name).launch_problems(setup))


def check_launch(unit: StageUnit, recipe: Recipe) -> LaunchSetup:
    """The engine this process was launched under, checked against the stage's recipe before anything is read."""
    setup = read_setup()
    check_engine(recipe, unit.name, setup, unit.launch_problems(setup))
    return setup


def check_data_for_launch(setup: LaunchSetup, prepared: PreparedData, name: str, recipe: Recipe) -> None:
    """What the launch asks of the data and the model's layout, still before any weights load."""
    stores = [prepared.samples] + ([prepared.held_out.samples] if prepared.held_out is not None else [])
    counts = array("I")
    for store in stores:
        counts.extend(store.image_counts)

    def locate(indices: list[int]) -> list[str]:  # indices run over the training samples, then the held-out ones
        ends = list(itertools.accumulate(len(store) for store in stores))
        places = [(k, i - (ends[k - 1] if k else 0)) for i in indices for k in [bisect.bisect_right(ends, i)]]
        return [stores[k].locations([i])[0] for k, i in places]

    check_samples(counts, locate, name, setup)
    if setup.engine == "fsdp":
        check_wrap_classes(setup, module_classes(prepared.backbone, role_overrides(recipe.backbone)))


def build_for_launch(unit: StageUnit, recipe: Recipe, setup: LaunchSetup, prepared: PreparedData, start):
    """The stage's model, built from the recipe as the launch needs it (4-bit storage dtype resolved); under FSDP
    with a 4-bit base, frozen weights are brought back to one dtype per unit (`uniform_frozen_dtype`)."""
    built = recipe_for_engine(recipe, unit.name, setup)
    model, roles, rows = unit.build(built, prepared.backbone, start, True)
    quant = unit.settings(built).quant
    if setup.engine == "fsdp" and quant.load_in_4bit:
        uniform_frozen_dtype(model, pick_compute_dtype(quant.compute_dtype))
    return model, roles, rows
