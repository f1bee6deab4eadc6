"""Recipes: every shipped recipe validates; bad recipes report every problem at once, with lines and fixes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ecomtune.config.recipe_files import apply_overrides, load_recipe
from ecomtune.config.schema import end_checkpoint_note, optimizer_names_in_source
from ecomtune.errors import ConfigError
from tests.conftest import REPO, run_cli

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"qwen2-vl.yaml", "tiny-qwen2-vl.yaml"} <= names


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe: Path):
    loaded = load_recipe(recipe)
    assert loaded.backbone.name
    header = recipe.read_text().splitlines()[:4]
    assert any("ecomtune " in line for line in header), "each recipe header shows the command that runs it"


def test_real_recipe_is_qlora_sized_for_one_gpu():
    recipe = load_recipe(REPO / "recipes" / "qwen2-vl.yaml")
    assert recipe.sft.quant.load_in_4bit and recipe.sft.quant.quant_type == "nf4" and recipe.sft.quant.double_quant
    assert recipe.sft.train.gradient_checkpointing
    assert recipe.backbone.resolution.max_pixels is not None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_all_problems_reported_at_once_with_lines_and_suggestions(tmp_path):
    path = write(tmp_path, """backbone:
  name: tiny-qwen2-vl
sft:
  lora:
    rank: 8
  train:
    learning_rat: 0.1
    batch_size: many
align:
  quant:
    quantize_vision: true
    load_in_4bit: false
""")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    error = caught.value
    text = error.render()
    assert len(error.problems) == 4, text
    assert f"{path}:5" in text and "unknown key 'sft.lora.rank'" in text and "did you mean 'r'" in text
    assert f"{path}:7" in text and "did you mean 'learning_rate'" in text
    assert f"{path}:8" in text and "sft.train.batch_size" in text and "'many'" in text
    assert f"{path}:11" in text and "align.quant.quantize_vision: true, but quant.load_in_4bit is false" in text


def test_cross_field_rules(tmp_path):
    smoke = load_recipe(None, ["sft.train.max_steps=2"]).sft.train  # a smoke run lowers max_steps alone
    assert "one checkpoint is written at the end of training (step 2)" in end_checkpoint_note(smoke)
    assert end_checkpoint_note(load_recipe(None, ["sft.train.max_steps=10", "sft.train.save_steps=5"]).sft.train) \
        is None
    assert load_recipe(None, ["sft.vision=lora"]).sft.lora.vision_targets is None  # the family's defaults apply
    with pytest.raises(ConfigError, match="min_pixels"):
        load_recipe(None, ["backbone.resolution.min_pixels=100000", "backbone.resolution.max_pixels=5000"])


def test_resolution_settings_live_under_one_key():
    with pytest.raises(ConfigError, match="did you mean 'resolution'"):
        load_recipe(None, ["backbone.max_pixels=401408"])
    recipe = load_recipe(None, ["backbone.resolution.longest_edge=512", "backbone.resolution.splitting=false"])
    assert recipe.backbone.resolution.chosen() == {"longest_edge": 512, "splitting": False}


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["sft.lora.r=4", "sft.quant.load_in_4bit=false", "sft.lora.targets=[q_proj, v_proj]"])
    assert data == {"sft": {"lora": {"r": 4, "targets": ["q_proj", "v_proj"]}, "quant": {"load_in_4bit": False}}}
    recipe = load_recipe(REPO / "recipes" / "tiny-qwen2-vl.yaml", ["sft.lora.r=4"])
    from_file = load_recipe(REPO / "recipes" / "tiny-qwen2-vl.yaml")
    assert recipe.sft.lora.r == 4 != from_file.sft.lora.r
    assert recipe.sft.lora.alpha == from_file.sft.lora.alpha  # the keys not overridden keep the file's values


def test_bad_override_is_an_error():
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides({}, ["sft.lora.r"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "sft:\n  lora: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(path) + ":" in caught.value.render()


def test_validate_command(tmp_path):
    ok = run_cli("validate", "recipes/tiny-qwen2-vl.yaml")
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = run_cli("validate", str(write(tmp_path, "sft:\n  lora:\n    rnk: 2\n")))
    assert bad.returncode == 2
    assert "did you mean 'r'" in bad.stderr and "Traceback" not in bad.stderr


def test_recipes_command_lists_shipped_recipes():
    result = run_cli("recipes")
    assert result.returncode == 0
    for recipe in SHIPPED:
        assert recipe.name in result.stdout


def problems_of(path: Path | None, overrides: list[str] | None = None) -> list[str]:
    """The rendered problems of a recipe that must not load."""
    with pytest.raises(ConfigError) as caught:
        load_recipe(path, overrides)
    return [p.render() for p in caught.value.problems]


def test_floats_must_be_finite(tmp_path):
    path = write(tmp_path, """backbone:
  name: tiny-qwen2-vl
sft:
  gpu_memory_gb: .inf
  images:
    crop_margin: .nan
  lora:
    dropout: .nan
  train:
    learning_rate: .inf
    epochs: .inf
    weight_decay: .nan
    max_grad_norm: .inf
    warmup_ratio: -.inf
""")
    found = problems_of(path)
    assert len(found) == 8, found
    for line, key in ((4, "sft.gpu_memory_gb"), (6, "sft.images.crop_margin"), (8, "sft.lora.dropout"),
                      (10, "sft.train.learning_rate"), (11, "sft.train.epochs"), (12, "sft.train.weight_decay"),
                      (13, "sft.train.max_grad_norm"), (14, "sft.train.warmup_ratio")):
        assert any(p.startswith(f"{path}:{line}: {key}: Input should be a finite number") for p in found), key
    assert load_recipe(None, ["sft.train.learning_rate=1e-5"]).sft.train.learning_rate == 1e-5


def test_max_steps_is_a_step_count_or_minus_one():
    assert load_recipe(None, ["sft.train.max_steps=-1"]).sft.train.max_steps == -1
    assert load_recipe(None, ["sft.train.max_steps=5", "sft.train.save_steps=5"]).sft.train.max_steps == 5
    for bad in (0, -2):
        (found,) = problems_of(None, [f"sft.train.max_steps={bad}"])
        assert f"sft.train.max_steps: {bad} is neither a step count nor -1" in found
        assert "or to -1 to train by `epochs`" in found


def test_repeated_keys_are_refused_with_both_lines(tmp_path):
    path = write(tmp_path, """sft:
  lora:
    r: 4
    r: 8
  train:
    epochs: 1
defaults: &base
  seed: 1
align:
  <<: *base
  seed: 2
sft:
  lora:
    alpha: 8
""")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    found = [p.render() for p in caught.value.problems]
    assert len(found) == 2, found  # the merge key's override of `seed` is what merge keys are for
    assert found[0].startswith(f"{path}:4: key 'sft.lora.r' repeats {path}:3")
    assert found[1].startswith(f"{path}:12: key 'sft' repeats {path}:1")


def test_optimizer_must_be_one_transformers_knows():
    assert load_recipe(None, ["sft.train.optimizer=paged_adamw_8bit"]).sft.train.optimizer == "paged_adamw_8bit"
    (found,) = problems_of(None, ["sft.train.optimizer=adamw"])
    assert "sft.train.optimizer: 'adamw' is not a transformers optimizer" in found
    assert "did you mean 'adamw_torch'?" in found and "paged_adamw_8bit" in found
    (found,) = problems_of(None, ["sft.train.optimizer=pagd_adamw_8bit"])
    assert "did you mean 'paged_adamw_8bit'?" in found


def test_optimizer_names_read_from_source_match_transformers():
    from transformers.training_args import OptimizerNames  # the slow import the schema avoids

    assert optimizer_names_in_source() == tuple(o.value for o in OptimizerNames)


def test_every_cross_field_problem_of_a_stage_at_once(tmp_path):
    path = write(tmp_path, """backbone:
  resolution:
    min_pixels: 100000
    max_pixels: 5000
sft:
  packing: true
  max_length: null
  quant:
    load_in_4bit: false
    quantize_vision: true
  train:
    max_steps: 10
    save_steps: 50
""")
    found = problems_of(path)
    assert len(found) == 3, found  # save_steps above max_steps is not a problem: the end is saved
    expected = {3: "backbone.resolution.min_pixels: 100000 is larger than max_pixels (5000)",
                6: "sft.packing: true, but max_length is None", 10: "sft.quant.quantize_vision: true, but"}
    for line, what in expected.items():
        assert any(p.startswith(f"{path}:{line}: {what}") and "fix: " in p for p in found), what


def test_non_utf8_recipe_names_file_and_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("backbone:\n  name: tiny-qwen2-vl  # caf\u00e9\nsft: {}\n".encode("latin-1"))
    (found,) = problems_of(path)
    assert found.startswith(f"{path}:2: byte 0xe9 is not UTF-8") and "save the file as UTF-8" in found


def test_typed_values_are_set_as_they_are(tmp_path):
    from ecomtune.config.command_options import recipe_with_options

    data = tmp_path / "data #1.jsonl"
    recipe = load_recipe(None, ["sft.data=other.jsonl", "backbone.name=tiny-qwen2-vl"],
                         {"sft.data": data, "backbone.name": "007", "sft.images.strategy": "crops"})
    assert recipe.sft.data == data  # after the --set of the same key, and the `#` is no YAML comment
    assert recipe.backbone.name == "007"  # not the YAML integer 7
    assert recipe.sft.images.strategy == "crops"
    chosen = recipe_with_options(REPO / "recipes" / "tiny-qwen2-vl.yaml", ["align.data=a.jsonl"], "align",
                                 "tiny-idefics3", data, "grid")
    assert (chosen.align.data, chosen.backbone.name, chosen.align.images.strategy) == (data, "tiny-idefics3", "grid")
    with pytest.raises(ConfigError, match="sft is not a section"):
        load_recipe(None, ["sft=3"], {"sft.data": data})


def test_plan_takes_a_data_path_with_a_hash(tmp_path):
    data = tmp_path / "data #1.jsonl"
    data.write_bytes((REPO / "data_samples" / "instruct.jsonl").read_bytes())
    shutil.copytree(REPO / "data_samples" / "images", tmp_path / "images")  # a symlink would leave the folder
    samples = len(data.read_text().splitlines())
    result = run_cli("plan", "recipes/tiny-qwen2-vl.yaml", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert f"{samples} samples from {data}" in result.stdout


def test_validate_lists_every_problem_and_exits_2(tmp_path):
    # a stage's cross-field rules need its fields valid first (pydantic), so they sit in another stage here
    path = write(tmp_path, """sft:
  train:
    learning_rate: .inf
    optimizer: adamw
    max_steps: 0
align:
  packing: true
  max_length: null
  quant:
    load_in_4bit: false
    quantize_vision: true
""")
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has 5 problem(s)" in result.stderr, result.stderr
    for line, what in ((3, "sft.train.learning_rate: Input should be a finite number"),
                       (4, "sft.train.optimizer: 'adamw' is not a transformers optimizer"),
                       (5, "sft.train.max_steps: 0 is neither a step count nor -1"),
                       (7, "align.packing: true, but max_length is None"),
                       (11, "align.quant.quantize_vision: true, but quant.load_in_4bit is false")):
        assert f"{path}:{line}: {what}" in result.stderr, what


@pytest.mark.parametrize("text", ["", "# sft:\n#   lora:\n#     r: 8\n", "\n\n---\n", "{}\n"],
                         ids=["zero-bytes", "only-comments", "empty-document", "empty-mapping"])
def test_an_empty_recipe_is_refused_naming_the_file(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty") as caught:
        load_recipe(path)
    assert str(path) in caught.value.render() and "leave --recipe out" in caught.value.render()
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "is empty" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("preset", sorted((REPO / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_an_accelerate_preset_given_as_a_recipe_is_named_as_such(preset):
    with pytest.raises(ConfigError) as caught:
        load_recipe(preset)
    text = caught.value.render()
    assert "is an accelerate launch config, not a recipe" in text and "unknown key" not in text
    assert f"accelerate launch --config_file {preset} -m ecomtune" in text
