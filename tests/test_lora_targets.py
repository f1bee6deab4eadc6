"""LoRA targets: every entry must match a layer of its component, or the stage is refused before it trains."""

from __future__ import annotations

import time

import pytest

from ecomtune.backbones.registry import resolve_backbone
from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.train.models import lora_model
from ecomtune.train.stages import run_sft
from tests.conftest import quick_overrides, run_cli


def _refused(catalog, tmp_path, *overrides: str) -> str:
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=1), *overrides])
    with pytest.raises(ConfigError) as caught:
        run_sft(recipe, tmp_path / "sft")
    assert not (tmp_path / "sft" / "manifest.json").exists(), "refused before the run folder is started"
    return caught.value.render()


def test_one_misspelt_target_among_good_ones_is_refused_with_did_you_mean(catalog, tmp_path):
    text = _refused(catalog, tmp_path, "sft.lora.targets=[q_proj, v_porj]")
    assert "sft.lora.targets: 'v_porj' matches no layer of the language model" in text
    assert "did you mean 'v_proj'?" in text and "q_proj" in text and "'q_proj'" not in text


def test_targets_that_all_miss_get_the_same_message_not_a_peft_bug(catalog, tmp_path):
    text = _refused(catalog, tmp_path, "sft.lora.targets=[qproj, vproj]")
    assert "'qproj' matches no layer" in text and "'vproj' matches no layer" in text


def test_a_module_lora_cannot_wrap_is_refused(catalog, tmp_path):
    text = _refused(catalog, tmp_path, "sft.lora.targets=[q_proj, mlp]")
    assert "'mlp' names" in text and "which LoRA cannot wrap" in text and "gate_proj" in text


def test_vision_targets_are_checked_inside_the_vision_tower(catalog, tmp_path):
    # q_proj exists in the language model, not in Qwen2-VL's vision tower (whose attention is one qkv layer)
    text = _refused(catalog, tmp_path, "sft.vision=lora", "sft.lora.vision_targets=[qkv, q_proj]")
    assert "sft.lora.vision_targets: 'q_proj' matches no layer of the vision tower" in text
    assert "'qkv'" not in text


def test_plan_refuses_in_seconds_without_weights(catalog):
    started = time.monotonic()
    result = run_cli("plan", "tiny-qwen2-vl", "--set", f"sft.data={catalog['instruct']}",
                     "--set", "sft.lora.targets=[q_proj, v_porj]")
    assert result.returncode == 2, result.stderr
    assert "'v_porj' matches no layer" in result.stdout + result.stderr and "Traceback" not in result.stderr
    print(f"refused in {time.monotonic() - started:.1f}s")


def test_the_loaded_model_is_checked_too(catalog):
    """The builder itself refuses (the same rule on the real model), for callers that skip `read_stage`."""
    recipe = load_recipe(None, ["sft.lora.targets=[q_proj, v_porj]", "sft.quant.load_in_4bit=false"])
    with pytest.raises(ConfigError, match="'v_porj' matches no layer"):
        lora_model(recipe, "sft", resolve_backbone("tiny-qwen2-vl"), show=False)
