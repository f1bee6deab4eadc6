"""Launch presets and the checks that hold a recipe against the engine it is launched under.

The presets are read by accelerate's own config and launch code, which turns them into the variables its
processes see; those go through `read_setup` and `check_engine` as in a real launch. Each mismatch is then set
up the way `accelerate launch` would (monkeypatched environment variables) and must be a ConfigError at its key.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from ecomtune.config.recipe_files import load_recipe
from ecomtune.config.schema import QuantSettings, Recipe
from ecomtune.errors import ConfigError
from ecomtune.train.distributed import (
    PRESETS,
    LaunchSetup,
    ModelClasses,
    check_engine,
    check_samples,
    check_wrap_classes,
    gather_full_state_at_save,
    read_setup,
    recipe_for_engine,
    resolved_quant_storage,
    uniform_frozen_dtype,
)
from ecomtune.train.launch import launch_problems
from tests.conftest import REPO, run_cli

PRESET_FILES = sorted(PRESETS.glob("*.yaml"))
EXPECTED = {"single-gpu": ("NO", "single"), "ddp": ("MULTI_GPU", "ddp"), "fsdp-qlora": ("FSDP", "fsdp"),
            "deepspeed-zero3-qlora": ("DEEPSPEED", "deepspeed")}
TINY = REPO / "recipes" / "tiny-qwen2-vl.yaml"

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "WORLD_SIZE": "2"}
ZERO3_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
             "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true", "WORLD_SIZE": "2"}


def tiny_recipe(**sft: object) -> Recipe:
    """The shipped tiny recipe with sft keys replaced (dotted keys as `--set` takes them)."""
    return load_recipe(TINY, [f"sft.{key}={value}" for key, value in sft.items()])


def launch_env(preset: Path) -> tuple[dict[str, str], int]:
    """The variables `accelerate launch --config_file PRESET` gives its processes, made by accelerate's own
    launch code (nothing is started), and the process count."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(preset), "-m", "ecomtune", "sft"])
    args, defaults, from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {**env, "WORLD_SIZE": str(args.num_processes)}, args.num_processes


def header_commands(preset: Path) -> list[list[str]]:
    """The launch commands in a preset's header comment, split as a shell would."""
    lines = [line.lstrip("# ").strip() for line in preset.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(line) for line in lines if line.startswith("accelerate launch")]


# --- the shipped presets -----------------------------------------------------------------------------------------

def test_every_preset_is_shipped_and_packaged():
    assert {p.stem for p in PRESET_FILES} == set(EXPECTED)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "recipes/accelerate/*.yaml" in pyproject, "package-data must carry the presets into the wheel"


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_parses_and_accelerate_accepts_it(preset):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    raw = yaml.safe_load(preset.read_text())
    config = load_config_from_file(str(preset))  # refuses unknown top-level keys
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED[preset.stem][0]
    known = vars(launch_command_parser().parse_args(["x.py"]))
    nested = [f"fsdp_{k}".replace("fsdp_fsdp_", "fsdp_") for k in raw.get("fsdp_config", {})]
    nested += list(raw.get("deepspeed_config", {}))
    assert [k for k in nested if k not in known] == [], "keys accelerate launch does not know"


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda p: p.stem)
def test_header_says_when_and_how_to_launch(preset):
    from accelerate.commands.launch import launch_command_parser

    commands = header_commands(preset)
    assert commands, "the header shows the launch command"
    for words in commands:
        args = launch_command_parser().parse_args(words[2:])
        assert Path(args.config_file) == Path("recipes/accelerate") / preset.name
        assert args.module and args.training_script == "ecomtune"
        assert args.training_script_args[0] == "sft" and "--recipe" in args.training_script_args
        assert (REPO / args.training_script_args[args.training_script_args.index("--recipe") + 1]).is_file()
    if preset.stem != "single-gpu":
        multi = [shlex.join(w) for w in commands if "--num_machines" in w]
        assert multi and all("--machine_rank" in c and "--main_process_ip" in c for c in multi)


@pytest.fixture
def bf16_gpu(monkeypatch):
    """torch answers as on an Ampere-or-newer GPU (compute dtype bfloat16), for the checks only."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_launch_reads_as_its_engine_and_the_tiny_recipe_fits(preset, bf16_gpu):
    env, processes = launch_env(preset)
    setup = read_setup(env)
    assert setup.engine == EXPECTED[preset.stem][1] and setup.processes == processes
    recipe = tiny_recipe()
    check_engine(recipe, "sft", setup)  # on bf16 GPUs the shipped recipe needs no change for any preset
    built = recipe_for_engine(recipe, "sft", setup).sft.quant.quant_storage
    assert built == ("bfloat16" if setup.shards_parameters else "uint8")
    assert recipe.sft.quant.quant_storage == "auto", "the recipe itself (manifest, --resume) keeps auto"


def test_deepspeed_precision_must_be_the_one_ecomtune_trains_in():
    setup = read_setup(launch_env(PRESETS / "deepspeed-zero3-qlora.yaml")[0])
    assert setup.mixed_precision == "bf16"
    fix = problems_at(tiny_recipe(), "sft", setup)["accelerate config: mixed_precision"]  # this CPU trains in fp32
    assert "--mixed_precision no" in fix


def test_fsdp_preset_follows_the_peft_qlora_settings():
    fsdp = yaml.safe_load((PRESETS / "fsdp-qlora.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
    assert fsdp["fsdp_use_orig_params"] is False and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    zero = yaml.safe_load((PRESETS / "deepspeed-zero3-qlora.yaml").read_text())["deepspeed_config"]
    assert zero["zero_stage"] == 3 and zero["zero3_init_flag"] and zero["zero3_save_16bit_model"]


# --- reading the launch ------------------------------------------------------------------------------------------

def test_read_setup_from_the_process_environment(monkeypatch):
    for name, value in {**FSDP_ENV, "FSDP_TRANSFORMER_CLS_TO_WRAP": "A, B"}.items():
        monkeypatch.setenv(name, value)
    setup = read_setup(gpu=True)
    assert (setup.engine, setup.processes, setup.wrap_classes, setup.shards_parameters) == ("fsdp", 2, ("A", "B"),
                                                                                         True)
    assert read_setup(gpu=False).requested == "fsdp"  # accelerate would not run FSDP here


def test_read_setup_plain_launches():
    assert read_setup({}, gpu=True) == LaunchSetup()
    assert read_setup({"WORLD_SIZE": "4"}, gpu=True).engine == "ddp"
    zero2 = read_setup({**ZERO3_ENV, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, gpu=True)
    assert zero2.engine == "deepspeed" and not zero2.shards_parameters


def test_zero_stage_from_a_deepspeed_json_file(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text('{"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": false}}')
    setup = read_setup({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)})
    assert setup.zero_stage == 3 and not setup.zero3_save_16bit


# --- the checks --------------------------------------------------------------------------------------------------

def problems_at(recipe: Recipe, stage: str, setup: LaunchSetup) -> dict[str, str]:
    return {p.where: p.fix for p in launch_problems(recipe, stage, setup)}


def test_quant_storage_must_be_the_load_dtype_when_parameters_are_sharded():
    fsdp = read_setup(FSDP_ENV, gpu=True)
    assert "sft.quant.quant_storage" in problems_at(tiny_recipe(**{"quant.quant_storage": "uint8"}), "sft", fsdp)
    bf16 = tiny_recipe(**{"quant.quant_storage": "bfloat16", "quant.compute_dtype": "bfloat16"})
    assert problems_at(bf16, "sft", fsdp) == {}
    assert resolved_quant_storage(QuantSettings(compute_dtype="float16"), fsdp) == "float16"
    assert resolved_quant_storage(QuantSettings(compute_dtype="float16"), LaunchSetup("ddp", 2)) == "uint8"
    # one GPU or DDP: any storage loads, so an explicit one is left alone
    assert problems_at(tiny_recipe(**{"quant.quant_storage": "uint8"}), "sft", LaunchSetup("ddp", 2)) == {}


def test_every_mismatch_is_reported_at_once_with_its_fix(monkeypatch):
    for name, value in {**FSDP_ENV, "FSDP_USE_ORIG_PARAMS": "true", "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
                        "PARALLELISM_CONFIG_CP_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    recipe = tiny_recipe(**{"quant.quant_storage": "uint8", "train.optimizer": "paged_adamw_8bit",
                            "packing": "true"})
    with pytest.raises(ConfigError) as caught:
        check_engine(recipe, "sft", read_setup(gpu=True))
    where = {p.where: p.fix for p in caught.value.problems}
    assert set(where) == {"sft.quant.quant_storage", "sft.train.optimizer", "sft.packing",
                          "accelerate config: fsdp_config.fsdp_use_orig_params"}
    assert "auto" in where["sft.quant.quant_storage"] and "adamw_torch" in where["sft.train.optimizer"]


def test_paged_optimizers_are_fine_without_fsdp():
    recipe = tiny_recipe(**{"train.optimizer": "paged_adamw_8bit"})
    assert problems_at(recipe, "sft", LaunchSetup("ddp", 2)) == {}
    assert problems_at(recipe, "sft", read_setup(ZERO3_ENV)) == {}


def test_zero3_must_gather_weights_at_save():
    setup = read_setup({**ZERO3_ENV, "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "false"})
    assert "accelerate config: deepspeed_config.zero3_save_16bit_model" in problems_at(tiny_recipe(), "sft", setup)


def test_align_is_refused_under_sharding_engines_and_fine_under_ddp():
    recipe = tiny_recipe()
    assert "ddp.yaml" in problems_at(recipe, "align", read_setup(FSDP_ENV, gpu=True))["align"]
    assert "align" in problems_at(recipe, "align", read_setup(ZERO3_ENV))
    assert problems_at(recipe, "align", LaunchSetup("ddp", 2)) == {}


def test_fsdp_without_a_gpu_is_refused():
    problems = problems_at(tiny_recipe(), "sft", read_setup(FSDP_ENV, gpu=False))
    assert "ddp.yaml" in problems["accelerate config: distributed_type"]


def test_text_only_samples_are_refused_when_parameters_are_sharded():
    with pytest.raises(ConfigError) as caught:
        check_samples([1, 0, 2], lambda indices: [f"a.jsonl:{i + 1}" for i in indices], "sft",
                      read_setup(ZERO3_ENV))
    assert [p.where for p in caught.value.problems] == ["a.jsonl:2"]
    # DDP runs the tower on every process
    check_samples([1, 0], lambda indices: [f"a:{i + 1}" for i in indices], "sft", LaunchSetup("ddp", 2))


def test_text_only_samples_are_named_across_training_and_held_out_samples():
    from ecomtune.data.prepare.sample_store import SampleStore
    from ecomtune.data.schema import Sample
    from ecomtune.train.launch import check_data_for_launch
    from ecomtune.train.preparation import HeldOut, PreparedData

    def store(*images: int, name: str):
        return SampleStore.of(Sample(["/x.png"] * n, [], source=f"{name}:{i + 1}") for i, n in enumerate(images))

    prepared = PreparedData(None, None, store(1, 0, 1, name="train"), {}, [], None, None,
                            HeldOut(store(0, 2, name="held"), [], None, "eval_fraction"))
    with pytest.raises(ConfigError) as caught:
        check_data_for_launch(read_setup(ZERO3_ENV), prepared, "sft", tiny_recipe())
    assert [p.where for p in caught.value.problems] == ["train:2", "held:1"]


def test_wrap_list_must_exist_and_include_the_vision_blocks():
    classes = ModelClasses(frozenset({"Model", "DecoderLayer", "VisionBlock"}), frozenset({"VisionBlock"}),
                           frozenset({"DecoderLayer", "VisionBlock"}))
    check_wrap_classes(read_setup(FSDP_ENV, gpu=True), classes)  # the model's own blocks: vision included
    listed = read_setup({**FSDP_ENV, "FSDP_TRANSFORMER_CLS_TO_WRAP": "DecoderLayer,Nope"}, gpu=True)
    with pytest.raises(ConfigError) as caught:
        check_wrap_classes(listed, classes)
    assert len(caught.value.problems) == 2 and "'Nope'" in caught.value.render()
    assert "VisionBlock" in caught.value.render()


def test_the_tiny_backbone_wraps_its_vision_blocks_by_default():
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.train.distributed import module_classes

    classes = module_classes(resolve_backbone("tiny-qwen2-vl", 0, None))
    assert classes.vision == {"Qwen2VLVisionBlock"} and classes.vision <= classes.default_wrap


# --- loading and saving under a sharding engine ------------------------------------------------------------------

def test_quantization_config_stores_4bit_weights_as_resolved():
    from ecomtune.backbones.model_loading import quantization_config

    assert quantization_config(QuantSettings(), []).bnb_4bit_quant_storage == torch.uint8
    stored = quantization_config(QuantSettings(quant_storage="bfloat16"), []).bnb_4bit_quant_storage
    assert stored == torch.bfloat16


def test_frozen_weights_come_back_to_one_dtype_trainable_ones_keep_theirs():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    model[1].weight.data = model[1].weight.data.float()
    model.to(torch.float32)
    assert uniform_frozen_dtype(model, torch.bfloat16) == 4
    assert {p.dtype for p in model[:2].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model[2].parameters()} == {torch.float32}


def test_final_save_under_fsdp_gathers_the_full_state():
    calls = []
    plugin = SimpleNamespace(set_state_dict_type=calls.append)
    assert gather_full_state_at_save(SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(
        fsdp_plugin=plugin))))
    assert calls == ["FULL_STATE_DICT"]
    assert not gather_full_state_at_save(SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace())))


# --- the command line --------------------------------------------------------------------------------------------

def test_a_mismatch_stops_the_command_before_anything_loads(tmp_path):
    out = tmp_path / "sft"
    env = {**ZERO3_ENV, "WORLD_SIZE": "1", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "false"}
    result = run_cli("sft", "--recipe", str(TINY), "--output", str(out), "--set", "sft.quant.quant_storage=uint8",
                     env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "sft.quant.quant_storage" in result.stderr and "zero3_save_16bit_model" in result.stderr
    assert not out.exists(), "refused before the output, the data or the model were touched"


# --- a real sharded launch ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.budget
def test_zero3_qlora_on_two_cpu_processes_saves_a_plain_peft_adapter(tmp_path):
    """The shipped ZeRO-3 preset, launched as its header says on 2 CPU processes (gloo; CPUs train without mixed
    precision): ZeRO-3 shards the 4-bit tiny backbone's weights (stored as float32, the compute dtype here), and
    the final save gathers adapter and projector into the files one process writes. (FSDP cannot be run here:
    accelerate runs it on GPUs only.)"""
    pytest.importorskip("deepspeed")
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from ecomtune.backbones.registry import resolve_backbone

    resolve_backbone("tiny-qwen2-vl", 0, None)  # built once here: two processes building it at once would race
    out = tmp_path / "zero3"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(PRESETS / "deepspeed-zero3-qlora.yaml"), "--num_processes", "2", "--mixed_precision", "no",
              "-m", "ecomtune", "sft", "--recipe", str(TINY), "--output", str(out)]
    overrides = {"max_steps": 3, "save_steps": 3, "batch_size": 2, "logging_steps": 1}
    launch += [arg for key, value in overrides.items() for arg in ("--set", f"sft.train.{key}={value}")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["global_step"] == 3 and manifest["recipe"]["sft"]["quant"]["load_in_4bit"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    projector = manifest["roles"]["projector"]
    assert any(path in key for key in saved for path in projector), "the projector travels in the adapter"
    assert all(t.numel() > 0 for t in saved.values()), "gathered whole, not the empty tensors of a shard"
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "lora_B" in key), "the adapter trained"

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(manifest["backbone"]["source"])
    model = PeftModel.from_pretrained(base, str(out))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert loaded and all(torch.equal(v, saved[k.replace(".default", "")]) for k, v in loaded.items())


@pytest.mark.slow
def test_a_wrong_recipe_under_a_real_preset_launch_is_one_message_per_machine(tmp_path):
    """`accelerate launch` of the shipped ZeRO-3 preset with align (refused under ZeRO-3): both processes meet
    the check; the first prints the message in full, the other says in one line that it stopped. Nothing is
    written. (torchrun then adds its own failure report, which is the launcher's.)"""
    pytest.importorskip("deepspeed")
    import os
    import subprocess
    import sys

    out = tmp_path / "align"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(PRESETS / "deepspeed-zero3-qlora.yaml"), "--num_processes", "2",
              "-m", "ecomtune", "align", "--recipe", str(TINY), "--output", str(out)]
    env = {**os.environ, "COLUMNS": "200",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("error: align: the recipe does not fit the launch (DeepSpeed ZeRO-3") == 1, \
        result.stderr[-3000:]
    assert result.stderr.count("process 1: stopped: align: the recipe does not fit the launch") == 1
    assert "launch align with recipes/accelerate/ddp.yaml" in result.stderr
    assert not out.exists() and not (tmp_path / ".align.lock").exists()
