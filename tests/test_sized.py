"""Real-size twins: published dimensions as data, checked against published parameter counts (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.published import CHECKPOINTS
from ecomtune.backbones.registry import resolve_backbone, sized_aliases
from ecomtune.backbones.sized import MARKER, meta_model
from ecomtune.backbones.spec import resolve_roles
from ecomtune.errors import BackboneError

SPEC_OF = {hub: spec for spec in FAMILIES for hub in spec.hub_ids.values()}
REQUIRED = ("qwen2-vl-2b", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b", "smolvlm",
            "gemma3-4b", "llava-onevision-0.5b", "internvl3-2b")


def test_every_required_alias_has_a_sized_twin():
    assert {f"sized:{a}" for a in REQUIRED} <= set(sized_aliases())


@pytest.mark.parametrize("hub_id", sorted(CHECKPOINTS))
def test_components_add_up_to_the_published_parameter_count(hub_id):
    """Built from the data on the meta device, each component counted where ecomtune's roles put it: the sum is
    the checkpoint's published total (exactly, or within the rounding the published figure has)."""
    checkpoint, spec = CHECKPOINTS[hub_id], SPEC_OF[hub_id]
    model = meta_model(checkpoint, spec.tiny)
    assert all(p.device.type == "meta" for p in model.parameters())
    roles = resolve_roles(model, spec)
    per_component: dict[str, int] = {}
    for name, param in model.named_parameters():
        role = roles.component_of(name)
        per_component[role] = per_component.get(role, 0) + param.numel()
    assert {"vision_tower", "projector", "language_model"} <= set(per_component) <= {
        "vision_tower", "projector", "language_model", "other"}, per_component
    # outside the three roles: at most a stray vector (LLaVA-OneVision's image_newline, 896 values)
    assert per_component.get("other", 0) < 10_000 and all(per_component.values())
    total = sum(per_component.values())
    rounding = checkpoint.parameters_rounding
    assert round(total / rounding) * rounding == checkpoint.parameters, (per_component, total)


def test_sized_folder_has_config_processor_and_no_weights():
    backbone = resolve_backbone("sized:qwen2.5-vl-7b")
    folder = Path(backbone.source)
    assert backbone.is_local and backbone.spec.family == "qwen2.5-vl"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["text_config"]["vocab_size"] == 152064
    assert not list(folder.glob("*.safetensors")), "weights are written only when a model must run"
    marker = json.loads((folder / MARKER).read_text())
    assert marker["hub_id"] == "Qwen/Qwen2.5-VL-7B-Instruct" and marker["parameters"] == 8_292_166_656


def test_image_tokens_of_a_full_size_photo_follow_the_real_processor_defaults():
    """Qwen's smart_resize rounds 1200 x 1600 to multiples of 28 (1204 x 1596): 43 x 57 merged patches. The
    shipped max_pixels (12845056) does not shrink it; a recipe's 1280 x 28 x 28 does."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(resolve_backbone("sized:qwen2-vl-2b").source)
    photo = Image.new("RGB", (1200, 1600), (180, 120, 60))
    grid = processor.image_processor(images=[photo], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid == [1, 114, 86] and grid[1] * grid[2] // 4 == 43 * 57 == 2451
    capped = processor.image_processor(images=[photo], max_pixels=1280 * 28 * 28, return_tensors="pt")
    _, h, w = capped["image_grid_thw"][0].tolist()
    assert h * w // 4 <= 1280 and h * w // 4 > 1200


def test_an_unknown_sized_alias_names_the_ones_that_exist():
    with pytest.raises(BackboneError) as error:
        resolve_backbone("sized:qwen2.5-vl-7")
    assert "sized:qwen2.5-vl-7b" in str(error.value) + str(error.value.fix)


def test_random_weights_load_like_a_checkpoint(tmp_path):
    """`ensure_weights` on a small config of the same layout: every parameter comes from the written shards
    (none missing, none unexpected), seeded, and a second call writes nothing."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from ecomtune.backbones.sized import ensure_weights

    tiny = Path(resolve_backbone("tiny-qwen2-vl").source)
    folder = tmp_path / "twin"
    folder.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(tiny / name, folder / name)
    (folder / MARKER).write_text("{}")
    ensure_weights(folder, seed=1)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = {folder / f for f in index["weight_map"].values()}
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    ensure_weights(folder, seed=1)
    assert {p: p.stat().st_mtime_ns for p in shards} == stamps, "written once"
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    names = {n for n, _ in model.named_parameters()}
    assert set(index["weight_map"]) == names
    norm = next(p for n, p in model.named_parameters() if n.endswith("input_layernorm.weight"))
    matrix = next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight"))
    assert bool((norm == 1).all()) and 0.01 < float(matrix.float().std()) < 0.03


@pytest.mark.slow
def test_plan_runs_at_real_size_offline(catalog):
    """`ecomtune plan` on a real-size twin: the model it measures is the published checkpoint, and image tokens
    come from the real processor's settings (the recipe's max_pixels caps them)."""
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.plan import plan_stage

    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", "backbone.name=sized:qwen2-vl-2b",
                                "backbone.resolution.max_pixels=401408", "sft.on_overlong=drop"])
    report = plan_stage(recipe, "sft")
    model = report["memory"]["model"]
    assert model["lm_linear"] + model["lm_rest"] + model["vision"] + model["projector"] == 2_208_985_600
    assert (model["layers"], model["hidden"], model["vocab"]) == (28, 1536, 151936)
    assert 0 < report["image_tokens"]["max"] and report["memory"]["fits"]
