"""Where a stage writes, decided before any model loads: a fresh run, a resumed one, or a replacement.

- fresh: an empty (or new) `--output` is written in place, so an interrupted run can be resumed there;
- `--resume`: continue from the newest *complete* checkpoint, only with a recipe that builds the same model
  (`shape_changes`); a finished run is left alone;
- `--overwrite`: the new run trains in a sibling folder and replaces `--output` only once it is complete, so a
  failed or interrupted replacement costs nothing (see `ecomtune.runs.outputs`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomtune.errors import ConfigError, Problem
from ecomtune.runs.files import MANIFEST
from ecomtune.runs.manifest import read_manifest
from ecomtune.runs.outputs import is_empty, recover_interrupted_swap, staging_path
from ecomtune.train.checkpoints import incomplete_checkpoints, last_complete_checkpoint

# Recipe keys that change the trained model's shape or starting point: a checkpoint made under other values
# cannot be resumed. `{stage}` is the stage's section. Everything else (logging, save_steps, ...) may change.
SHAPE_KEYS = ("backbone.name", "backbone.revision", "backbone.seed", "backbone.vision_tower", "backbone.projector",
              "backbone.language_model", "{stage}.quant", "{stage}.lora.r", "{stage}.lora.alpha",
              "{stage}.lora.targets", "{stage}.lora.vision_targets", "{stage}.projector", "{stage}.vision")


@dataclass(frozen=True)
class RunFolder:
    """`output`: where the run will be once done. `write_to`: where it writes meanwhile (output, or its sibling
    when replacing). `checkpoint`: the complete checkpoint to resume from. `finished`: the manifest of a
    finished run that `--resume` was asked to continue (nothing to do)."""

    output: Path
    write_to: Path
    checkpoint: Path | None = None
    finished: dict[str, Any] | None = None

    @property
    def replacing(self) -> bool:
        return self.write_to != self.output


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _as_today(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe recorded by an earlier ecomtune, read through today's schema: a setting added since (e.g.
    `quant.quant_storage`) takes its default instead of looking changed. A recipe today's schema refuses is
    compared as recorded."""
    from pydantic import ValidationError

    from ecomtune.config.schema import Recipe
    from ecomtune.errors import EcomtuneError

    try:
        return Recipe.model_validate(recipe).model_dump(mode="json")
    except (ValidationError, EcomtuneError, ValueError):
        return recipe


def shape_changes(before: dict[str, Any], after: dict[str, Any], stage: str) -> list[str]:
    """The model-shaping recipe keys whose values differ between two resolved recipes (as dicts)."""
    keys = tuple(k.format(stage=stage) for k in SHAPE_KEYS)
    old, new = _flatten(_as_today(before)), _flatten(after)
    differing = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or key.startswith(k + ".") for k in keys) and old.get(key) != new.get(key):
            differing.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return differing


def _init_key(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None


def plan_run_folder(output: Path, stage: str, recipe: dict[str, Any], init_from: Path | None, resume: bool,
                    overwrite: bool, warn: Callable[[str], None]) -> RunFolder:
    """Decide where the run writes; refuse, before any model loads, what would mix runs or lose one."""
    output = Path(output)
    recover_interrupted_swap(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file", fix="give --output a folder path")
    existing = read_manifest(output)
    if resume and existing is None:
        raise ConfigError(f"--resume: {output} is not an ecomtune run (it has no {MANIFEST})",
                          fix="point --output at the folder of the interrupted ecomtune run")
    if resume:
        if existing is not None and existing.get("stage") not in (None, stage):
            raise ConfigError(f"--resume: {output} holds a {existing['stage']} run, not a {stage} run",
                              fix=f"resume it with `ecomtune {existing['stage']}`, or pick the right --output")
        if existing is not None and existing.get("status") == "complete":
            return RunFolder(output, output, finished=existing)
        if existing is not None:
            changes = shape_changes(existing.get("recipe", {}), recipe, stage)
            if _init_key(init_from) != existing.get("init_from_resolved", _init_key(init_from)):
                changes.append(f"--init-from: {existing.get('init_from')} -> {init_from}")
            if changes:
                raise ConfigError(
                    f"--resume: the recipe builds a different model than the one {output} was training",
                    [Problem(change, "recipe") for change in changes],
                    fix="resume with the recipe the run started with (its manifest.json holds it), or start a new "
                    "--output")
        checkpoint = last_complete_checkpoint(output, warn)
        if checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint-* folder in {output}",
                              fix="run without --resume to start, or point --output at the interrupted run")
        step, planned = int(checkpoint.name.split("-")[1]), recipe[stage]["train"]["max_steps"]
        if 0 < planned < step:
            raise ConfigError(f"--resume: {checkpoint.name} is already past {stage}.train.max_steps = {planned}",
                              fix=f"resume with max_steps of {step} or more, or start a new --output")
        return RunFolder(output, output, checkpoint)
    if is_empty(output) or _only_a_start(output, existing):
        return RunFolder(output, output)
    if not overwrite:
        what = "a finished run" if existing and existing.get("status") == "complete" else "not empty"
        raise ConfigError(f"Output folder {output} is {what}",
                          fix="pass --resume to continue that run, --overwrite to replace it, or a new --output")
    return RunFolder(output, staging_path(output))


def _only_a_start(output: Path, existing: dict[str, Any] | None) -> bool:
    """A run that stopped before its first checkpoint (e.g. the model failed to load) leaves only its "running"
    manifest: nothing to resume and nothing of the user's, so a new run may start there."""
    return (existing is not None and existing.get("status") == "running"
            and [p.name for p in output.iterdir()] == [MANIFEST])


def clear_leftovers(folder: RunFolder) -> None:
    """Main process only: remove what an interrupted command of ours left where this one writes (a half-written
    checkpoint when resuming, a stale sibling when replacing). Nothing of the user's is touched."""
    if folder.replacing and folder.write_to.exists():
        shutil.rmtree(folder.write_to)
    if folder.checkpoint is not None:
        for checkpoint in incomplete_checkpoints(folder.output):
            shutil.rmtree(checkpoint)
