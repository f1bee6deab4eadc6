"""Command-line options turned into recipe values, with messages that name the option the user typed.

The typed options (`--backbone`, `--data`, `--images`) win over a `--set` of the same key, and go in as values,
not `key=value` strings: re-read as YAML, `--data "data #1.jsonl"` would lose everything after the `#`.
"""

from __future__ import annotations

from pathlib import Path

from ecomtune.config.recipe_files import load_recipe
from ecomtune.config.schema import Recipe
from ecomtune.config.stages import STAGES
from ecomtune.errors import ConfigError


def recipe_with_options(recipe: Path | None, sets: list[str] | None, stage: str, backbone: str | None,
                        data: Path | None, images: str | None = None) -> Recipe:
    """The recipe with --set overrides, then the typed options (which win over a --set of the same key)."""
    options = {"backbone.name": backbone, f"{stage}.data": data, f"{stage}.images.strategy": images}
    return load_recipe(recipe, list(sets or []), {key: value for key, value in options.items() if value})


def check_stage(stage: str) -> None:
    """`--stage` names one of the recipe's stages."""
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage} is not a stage", fix=f"use --stage {' or '.join(STAGES)}")


def photo_size(text: str) -> tuple[int, int]:
    """`--photo 1200x1600` as (width, height) in pixels."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ConfigError(f"--photo {text}: not a size", fix="give width x height in pixels, e.g. --photo 1200x1600")
    return int(width), int(height)
