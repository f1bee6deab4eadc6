"""Typed recipes: the schema (`schema.py`) and YAML loading with overrides and validation (`recipe_files.py`)."""

from ecomtune.config.recipe_files import apply_overrides, load_recipe, validate_recipe_dict
from ecomtune.config.schema import (
    AlignStage,
    BackboneSettings,
    ImageSettings,
    LoraSettings,
    QuantSettings,
    Recipe,
    ResolutionSettings,
    SftStage,
    TrainSettings,
)

__all__ = [
    "AlignStage",
    "BackboneSettings",
    "ImageSettings",
    "LoraSettings",
    "QuantSettings",
    "Recipe",
    "ResolutionSettings",
    "SftStage",
    "TrainSettings",
    "apply_overrides",
    "load_recipe",
    "validate_recipe_dict",
]
