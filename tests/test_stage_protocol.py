"""A stage is one unit: its declaration (`ecomtune.config.stages`) and its behaviour (`ecomtune.train.stage_units`).

A fourth, LoRA-style stage declared here alone (its settings class, its recipe field, one unit class and one
registration) trains on the tiny backbone through `run_stage`, so nothing else in the package names the stages.
"""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from ecomtune.config.recipe_files import load_recipe
from ecomtune.config.schema import LoraStage, Recipe
from ecomtune.config.stages import STAGES, StageInfo, register_stage
from ecomtune.errors import ConfigError
from ecomtune.runs.manifest import write_manifest
from ecomtune.train.stage_units import LoraStageUnit, stage_unit
from ecomtune.train.stages import run_stage
from tests.conftest import quick_overrides


class PolishStage(LoraStage):
    """A throwaway stage: one more LoRA pass on instructions."""


class RecipeWithPolish(Recipe):
    polish: PolishStage = Field(default_factory=PolishStage, description="The throwaway stage's settings.")


class Polish(LoraStageUnit):
    """Behaves as every LoRA stage does; nothing of its own."""


def test_the_registry_is_the_recipes_stages():
    assert list(STAGES) == ["align", "mid", "sft"]
    for info in STAGES.values():
        assert Recipe.model_fields[info.field].annotation is info.settings
        assert type(stage_unit(info.name)).__name__.lower() == info.name
    with pytest.raises(ConfigError, match="polish is not a stage"):
        stage_unit("polish")
    with pytest.raises(ValueError, match="registered already"):
        register_stage(STAGES["sft"])


def test_a_stage_declared_in_one_place_trains(catalog, tmp_path, monkeypatch):
    info = StageInfo("polish", "one more LoRA pass", PolishStage, f"{__name__}:Polish", ("align", "sft"))
    monkeypatch.setitem(STAGES, "polish", info)
    base = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=2), "sft.lora.r=2"])
    recipe = RecipeWithPolish.model_validate({**base.model_dump(), "polish": base.sft.model_dump()})

    result = run_stage("polish", recipe, tmp_path / "polish")

    manifest = json.loads((tmp_path / "polish" / "manifest.json").read_text())
    assert result.complete and manifest["stage"] == "polish" and manifest["status"] == "complete"
    assert manifest["metrics"]["global_step"] == 2 and manifest["recipe"]["polish"]["lora"]["r"] == 2
    assert (tmp_path / "polish" / manifest["outputs"]["adapter"]).is_file()
    assert {row["component"]: row["mode"] for row in manifest["parameters"]}["language_model"] == "lora"
    mid = tmp_path / "mid"  # a finished run of a stage the new one may not start from (its manifest is enough)
    write_manifest(mid, stage="mid", outputs={})
    with pytest.raises(ConfigError, match="takes a align or sft run"):  # what --init-from may name is its own
        run_stage("polish", recipe, tmp_path / "again", init_from=mid)
