"""What fits a 24 GB GPU, from the real-size twins' shapes (meta device, nothing materialised)."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache

import pytest

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.published import CHECKPOINTS
from ecomtune.backbones.sized import meta_model
from ecomtune.backbones.spec import lora_target_regex, resolve_roles
from ecomtune.train.fit import (
    PIXEL_PRESETS,
    PlannedSample,
    RecipeKnobs,
    knobs,
    largest_settings,
    step_for,
    total,
    turn_first,
)
from ecomtune.train.memory import GIB, ModelShape, TrainShape
from ecomtune.train.plan import lora_parameters, model_shape
from tests.conftest import run_cli

SPEC_OF = {hub: spec for spec in FAMILIES for hub in spec.hub_ids.values()}
BUDGET = 24 * GIB


@cache
def sized_shape(hub_id: str, rank: int = 16) -> tuple[ModelShape, int]:
    """The shape `ecomtune plan` measures for the checkpoint, and its LoRA parameters at `rank` on the LM."""
    checkpoint, spec = CHECKPOINTS[hub_id], SPEC_OF[hub_id]
    model = meta_model(checkpoint, spec.tiny)
    roles = resolve_roles(model, spec)
    lora = lora_parameters(model, lora_target_regex(roles.language_model, spec.lora_targets), rank)
    return model_shape(model, model.config, roles), lora


def qlora_step(hub_id: str, **changes) -> TrainShape:
    _, lora = sized_shape(hub_id)
    step = TrainShape(batch_size=1, seq_len=2048, image_tokens=0, lora_params=lora, projector_trainable=True,
                      load_in_4bit=True, double_quant=True, quantize_vision=False, dtype_bytes=2,
                      gradient_checkpointing=True, optimizer="adamw", full_logits=False,
                      upcast_frozen=True, projector_copy=True)
    return replace(step, **changes)


def recipe_knobs(max_length: int | None = 2048, **changes) -> RecipeKnobs:
    # Qwen2-VL's smart_resize keeps about max_pixels / (28 x 28) tokens: the processor's rule, not a stand-in
    return replace(RecipeKnobs(stage="sft", grad_accum=8, lora_rank=16, max_length=max_length, max_pixels_knob=True,
                               image_tokens_at=lambda pixels: pixels // (28 * 28)), **changes)


QWEN_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
PHOTO = PlannedSample(text_tokens=256, images=1, image_tokens=2451)  # 1200 x 1600 at the shipped max_pixels


def test_the_7b_shape_is_the_published_checkpoint():
    shape, lora = sized_shape(QWEN_7B)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab) == (28, 3584, 18944, 152064)
    assert shape.kv_width == 4 * 128 and shape.merge == 4
    assert shape.lm_linear + shape.lm_rest + shape.vision + shape.projector == CHECKPOINTS[QWEN_7B].parameters
    # r * (in + out) over q, k, v, o, gate, up, down of 28 layers
    per_layer = 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert lora == 28 * per_layer


def test_the_largest_settings_fit_and_one_more_does_not():
    shape, _ = sized_shape(QWEN_7B)
    step = step_for(qlora_step(QWEN_7B), PHOTO)
    largest = largest_settings(shape, step, PHOTO, BUDGET)
    length, photos, batch = largest["max_length"], largest["images_per_sample"], largest["batch_size"]
    assert total(shape, replace(step, seq_len=length)) <= BUDGET < total(shape, replace(step, seq_len=length + 1))
    assert total(shape, step_for(step, replace(PHOTO, images=photos))) <= BUDGET < \
        total(shape, step_for(step, replace(PHOTO, images=photos + 1)))
    assert total(shape, step_for(step, PHOTO, batch)) <= BUDGET < total(shape, step_for(step, PHOTO, batch + 1))
    assert length > 8192 and 1 <= photos and batch >= 2, largest  # QLoRA of a 7B on 24 GB has room to spare


def test_without_checkpointing_the_first_knob_is_checkpointing():
    shape, _ = sized_shape(QWEN_7B)
    step = step_for(qlora_step(QWEN_7B, gradient_checkpointing=False, batch_size=4), PHOTO)
    assert total(shape, step) > BUDGET
    found = knobs(shape, step, PHOTO, BUDGET, recipe_knobs(max_length=None))
    assert [k.setting for k in turn_first(found)] == ["sft.train.gradient_checkpointing=true"]
    batch = next(k for k in found if k.setting.startswith("sft.train.batch_size"))
    assert batch.setting.endswith("sft.train.grad_accum=32") or not batch.fits, "the effective batch is kept"
    assert all(k.total_gib * GIB < total(shape, step) for k in found)


def test_many_photos_turn_the_resolution_down_to_the_largest_preset_that_fits():
    shape, _ = sized_shape(QWEN_7B)
    crowded = replace(PHOTO, images=8)  # a listing with 8 full-size photos
    step = step_for(qlora_step(QWEN_7B, batch_size=1), crowded)
    assert total(shape, step) > BUDGET
    found = knobs(shape, step, crowded, BUDGET, recipe_knobs(max_length=None))
    pixels = next(k for k in found if k.setting.startswith("backbone.resolution.max_pixels"))
    chosen = int(pixels.setting.split("=")[1])
    assert pixels.fits and chosen // (28 * 28) in PIXEL_PRESETS
    larger = [p for p in PIXEL_PRESETS if p > chosen // (28 * 28)]
    if larger:  # the next larger preset would not fit
        bigger = replace(crowded, image_tokens=min(larger))
        assert total(shape, step_for(step, bigger)) > BUDGET
    assert turn_first(found)[0].fits


def test_a_sample_over_max_length_is_let_in_by_length_or_resolution():
    shape, _ = sized_shape(QWEN_7B)
    step = step_for(qlora_step(QWEN_7B), PHOTO)  # 2707 tokens against max_length 2048
    found = knobs(shape, step, PHOTO, BUDGET, recipe_knobs(max_length=2048))
    assert found[0].setting == "sft.max_length=2707" and found[0].fits
    pixels = next(k for k in found if k.setting.startswith("backbone.resolution.max_pixels"))
    assert pixels.fits and int(pixels.setting.split("=")[1]) // (28 * 28) + 256 <= 2048
    assert not any(k.fits for k in found if "optimizer" in k.setting), "memory was never the problem"


@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen3-VL-8B-Instruct", "google/gemma-3-4b-it"])
def test_smaller_budgets_need_smaller_settings(hub_id):
    shape, _ = sized_shape(hub_id)
    step = step_for(qlora_step(hub_id), PHOTO)
    at_24 = largest_settings(shape, step, PHOTO, 24 * GIB)
    at_12 = largest_settings(shape, step, PHOTO, 12 * GIB)
    for key in ("max_length", "images_per_sample", "batch_size"):
        assert (at_12[key] or 0) <= (at_24[key] or 0), key


@pytest.mark.slow
def test_plan_command_offline_for_a_24_gb_user(tmp_path):
    out = tmp_path / "plan.json"
    result = run_cli("plan", "--backbone", "qwen2.5-vl-7b", "--gpu-memory", "24", "--out", str(out),
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["backbone"]["measured_as"] and "sized:qwen2.5-vl" in report["backbone"]["measured_as"]
    assert report["sample"]["image_tokens_per_image"] == 2451 and report["over_max_length"]
    assert report["memory"]["fits"] and report["turn"] == ["sft.max_length=2707"]
    assert "largest that fits" in result.stdout and "turn first" in result.stdout
