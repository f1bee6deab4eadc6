"""What `ecomtune plan` and `ecomtune profile` run: their options checked and turned into a recipe, handed to the
planner or the profiler, and the guard on the JSON they may also write.

Both measure before (or instead of) training, so both refuse an `--out` that would overwrite the recipe or the
data they read, and any earlier file unless told to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomtune.config.command_options import check_stage, photo_size, recipe_with_options
from ecomtune.config.schema import Recipe
from ecomtune.config.stages import stage_settings
from ecomtune.runs.outputs import Guarded, check_file_output
from ecomtune.train.plan import plan_stage, plan_without_data
from ecomtune.train.profile import ProfileRow, profile_recipe


@dataclass(frozen=True)
class PlanResult:
    report: dict[str, Any]
    without_data: bool  # the stage has no data: a plan of one made-up sample (what fits), not a measured one


@dataclass(frozen=True)
class ProfileResult:
    rows: list[ProfileRow]
    recipe: Recipe


def check_results_file(out: Path | None, overwrite: bool, recipe: Path | None, data) -> None:
    """A plan or profile JSON may not overwrite the recipe, the data or an earlier file unless told to."""
    if out is None:
        return
    inputs = [("recipe", recipe)] if recipe else []
    if data is not None and not isinstance(data, list):
        inputs.append(("data", Path(data)))
    check_file_output(out, overwrite, Guarded(files=inputs))


def plan_from_options(recipe: Path | None, stage: str, backbone: str | None, data: Path | None, sets: list[str] | None,
                      images: str | None, gpu_memory: float | None, photo: str, images_per_sample: int,
                      text_tokens: int, out: Path | None, overwrite: bool) -> PlanResult:
    """The stage's plan: measured on its data, or without data for a sample of `text_tokens` and
    `images_per_sample` photos of `photo` pixels."""
    check_stage(stage)
    extra = [f"{stage}.gpu_memory_gb={gpu_memory}"] if gpu_memory else []
    chosen = recipe_with_options(recipe, [*(sets or []), *extra], stage, backbone, data, images)
    data = stage_settings(chosen, stage).data
    check_results_file(out, overwrite, recipe, data)
    if data is None:
        return PlanResult(plan_without_data(chosen, stage, photo_size(photo), images_per_sample, text_tokens), True)
    return PlanResult(plan_stage(chosen, stage), False)


def profile_from_options(recipe: Path, stage: str, backbone: str | None, data: Path | None, sets: list[str] | None,
                         steps: int, repeats: int, out: Path | None, overwrite: bool,
                         progress: Callable[[str], None]) -> ProfileResult:
    """`steps` optimizer steps of each mode, `repeats` rounds (see `profile_recipe`)."""
    check_stage(stage)
    chosen = recipe_with_options(recipe, sets, stage, backbone, data, None)
    check_results_file(out, overwrite, recipe, stage_settings(chosen, stage).data)
    return ProfileResult(profile_recipe(chosen, stage, steps, progress=progress, repeats=repeats), chosen)


def profile_context(recipe: Path, stage: str, steps: int, repeats: int) -> dict[str, Any]:
    """What the profile JSON says it measured, and on which device."""
    import torch

    return {"recipe": str(recipe), "stage": stage, "steps": steps, "repeats": repeats,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
