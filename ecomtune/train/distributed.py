"""How a run was launched (one process, DDP, FSDP, DeepSpeed) and what that asks of the recipe, checked before any
weights load.

`accelerate launch --config_file recipes/accelerate/<preset>.yaml` tells its processes the engine through
environment variables (ACCELERATE_USE_FSDP, FSDP_*, ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_*,
PARALLELISM_CONFIG_*); `read_setup` reads them without starting a process group. Engines that shard parameters
(FSDP, ZeRO-3) fail late and expensively on recipes that one GPU runs fine, so every known mismatch is a
`ConfigError` naming the key to change:

- 4-bit weights must be stored in the load dtype: FSDP and ZeRO-3 shard only floating tensors of one dtype.
  `quant_storage: auto` resolves to it (`recipe_for_engine`); an explicit other value is refused.
- FSDP and paged optimizers: saving a checkpoint fails (PEFT documents it for paged_adamw_8bit).
- FSDP 1 with `use_orig_params: true`: PEFT documents false for LoRA (its memory savings depend on it).
- FSDP without a GPU: accelerate would fail at its low-memory loading, or quietly train as DDP.
- The classes FSDP wraps (FSDP_TRANSFORMER_CLS_TO_WRAP, else the model's own blocks) must exist in the model and
  include the vision tower's blocks (an unwrapped vision tower is gathered whole on every process).
- ZeRO-3 must gather 16-bit weights at save (`zero3_save_16bit_model: true`), or the adapter is saved empty.
- DeepSpeed's mixed precision must be the one ecomtune trains in (bf16 / fp16 on GPUs, none on CPUs).
- A stage may refuse an engine itself (`StageUnit.launch_problems`): a projector-only stage (align) runs on one
  process or DDP, since with nothing but a small projector to train a sharded engine only adds risk (the frozen
  base and the trainable projector would share FSDP units).
- Packed rows are whole samples on one process; context / sequence parallelism splits rows across processes,
  which cuts samples in two and breaks per-sample attention. Packing and per-sample attention need nothing else
  from the engine: attention has no parameters, so every process runs it on its own rows.
- Under FSDP / ZeRO-3 every process must run the vision tower at every step (its shards are gathered
  collectively), so a text-only sample could stall the job: samples without images are refused.

The projector under FSDP / ZeRO-3: a LoRA stage trains it as PEFT's `modules_to_save` copy. PEFT's FSDP wrap
policy (which transformers applies to PEFT models) wraps every leaf layer with trainable weights in its own unit,
so the copy shards apart from the frozen original; the final save gathers it with the adapter on rank 0 into the
same `adapter_model.safetensors` a single GPU writes (under ZeRO-3 in the 16-bit dtype the engine trains in).
Under FSDP with a 4-bit base, frozen weights are also brought back to the load dtype after PEFT's k-bit
preparation upcast them (`uniform_frozen_dtype`), since an FSDP 1 unit is one flat tensor of one dtype.

What has run here: ZeRO-3 QLoRA of the tiny backbone on 2 CPU processes (gloo), whose adapter equals a DDP run's
and loads with plain peft (tests/test_distributed.py). FSDP needs GPUs and is checked, not run, on CPU machines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ecomtune.config.schema import QuantSettings, Recipe
from ecomtune.config.stages import stage_settings
from ecomtune.errors import ConfigError, Problem

Engine = Literal["single", "ddp", "fsdp", "deepspeed"]

# The presets shipped with the package, beside the recipes.
PRESETS = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class LaunchSetup:
    """The engine a run trains under, and the settings of it that matter to the recipe.

    `requested` is the engine the launch asked for when accelerate runs another one instead (FSDP on a machine
    without GPUs trains as DDP)."""

    engine: Engine = "single"
    processes: int = 1
    fsdp_version: int = 1
    use_orig_params: bool = False
    state_dict_type: str = ""
    wrap_classes: tuple[str, ...] = ()
    zero_stage: int = 0
    zero3_save_16bit: bool = False
    mixed_precision: str = "no"
    sequence_shards: int = 1
    requested: Engine | None = None

    @property
    def shards_parameters(self) -> bool:
        """True when no process holds the whole model: FSDP, or DeepSpeed ZeRO stage 3."""
        return self.engine == "fsdp" or (self.engine == "deepspeed" and self.zero_stage == 3)

    def describe(self) -> str:
        if self.requested is not None:
            return f"{self.requested.upper()} asked for, on a machine without GPUs"
        name = {"single": "one process", "ddp": "DDP", "fsdp": f"FSDP {self.fsdp_version}",
                "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}"}[self.engine]
        return f"{name}, {self.processes} process(es)" if self.engine != "single" else name


def _deepspeed_file(env: Mapping[str, str]) -> dict:
    """A DeepSpeed JSON config named by the launch (`deepspeed_config_file`), or {} when there is none to read."""
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or path == "none" or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _deepspeed_settings(env: Mapping[str, str]) -> tuple[int, bool]:
    """(ZeRO stage, gather 16-bit weights at save), from the launch's variables or its DeepSpeed JSON file."""
    zero = _deepspeed_file(env).get("zero_optimization", {})
    stage = _int(env, "ACCELERATE_DEEPSPEED_ZERO_STAGE", int(zero.get("stage", 0) or 0))
    gather = zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("gather_16bit_weights_on_model_save"))
    saves = _flag(env, "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", bool(gather))
    return stage, saves


def _sequence_shards(env: Mapping[str, str]) -> int:
    """How many processes one sequence is split across (context x sequence parallel degree)."""
    if not _flag(env, "ACCELERATE_USE_PARALLELISM_CONFIG"):
        return 1
    return max(_int(env, "PARALLELISM_CONFIG_CP_SIZE", 1), 1) * max(_int(env, "PARALLELISM_CONFIG_SP_SIZE", 1), 1)


def read_setup(env: Mapping[str, str] | None = None, gpu: bool | None = None) -> LaunchSetup:
    """The engine this process was launched under, from the variables `accelerate launch` (or torchrun) sets.

    accelerate turns FSDP on only for GPU-like devices: on CPUs the same launch trains as DDP (`requested` then
    says "fsdp"). `gpu` defaults to whether torch sees a CUDA device."""
    env = os.environ if env is None else env
    processes = max(_int(env, "WORLD_SIZE", 1), 1)
    plain: Engine = "ddp" if processes > 1 else "single"
    cpu = _flag(env, "ACCELERATE_USE_CPU")
    if _flag(env, "ACCELERATE_USE_DEEPSPEED") and not cpu:
        stage, saves = _deepspeed_settings(env)
        return LaunchSetup("deepspeed", processes, zero_stage=stage, zero3_save_16bit=saves,
                           mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no").lower(),
                           sequence_shards=_sequence_shards(env))
    if _flag(env, "ACCELERATE_USE_FSDP"):
        if gpu is None:
            import torch

            gpu = torch.cuda.is_available()
        if cpu or not gpu:
            return LaunchSetup(plain, processes, sequence_shards=_sequence_shards(env), requested="fsdp")
        classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
        return LaunchSetup("fsdp", processes, fsdp_version=_int(env, "FSDP_VERSION", 1),
                           use_orig_params=_flag(env, "FSDP_USE_ORIG_PARAMS"),
                           state_dict_type=env.get("FSDP_STATE_DICT_TYPE", ""), wrap_classes=classes,
                           sequence_shards=_sequence_shards(env))
    return LaunchSetup(plain, processes, sequence_shards=_sequence_shards(env))


def resolved_quant_storage(quant: QuantSettings, setup: LaunchSetup) -> str:
    """The storage dtype `quant_storage: auto` stands for under `setup`: the compute (= load) dtype when parameters
    are sharded, bitsandbytes' uint8 otherwise. An explicit value is kept (`engine_problems` judges it)."""
    if quant.quant_storage != "auto":
        return quant.quant_storage
    if not setup.shards_parameters:
        return "uint8"
    from ecomtune.backbones.model_loading import pick_compute_dtype

    return str(pick_compute_dtype(quant.compute_dtype)).removeprefix("torch.")


def recipe_for_engine(recipe: Recipe, stage_name: str, setup: LaunchSetup) -> Recipe:
    """A copy of `recipe` whose stage has `quant_storage` resolved for `setup`, for building the model; the recipe
    itself (what the manifest records and `--resume` compares) keeps `auto`."""
    resolved = recipe.model_copy(deep=True)
    quant = stage_settings(resolved, stage_name).quant
    quant.quant_storage = resolved_quant_storage(quant, setup)
    return resolved


def _storage_problems(quant: QuantSettings, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    if not (setup.shards_parameters and quant.load_in_4bit) or quant.quant_storage == "auto":
        return []
    wanted = resolved_quant_storage(quant.model_copy(update={"quant_storage": "auto"}), setup)
    if quant.quant_storage == wanted:
        return []
    return [Problem(f"'{quant.quant_storage}', but {setup.describe()} shards only floating weights of one dtype: "
                    f"the 4-bit weights must be stored in the load dtype ({wanted})",
                    f"{stage_name}.quant.quant_storage", f"set quant_storage: auto (or {wanted})")]


def _optimizer_problems(optimizer: str, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    if setup.engine != "fsdp" or not optimizer.startswith("paged_"):
        return []
    return [Problem(f"'{optimizer}' under FSDP: paged optimizers break FSDP checkpoint saving",
                    f"{stage_name}.train.optimizer",
                    "use adamw_torch (or adamw_torch_fused): FSDP already shards the optimizer state")]


def _fsdp_problems(stage_name: str, setup: LaunchSetup) -> list[Problem]:
    if setup.engine != "fsdp" or setup.fsdp_version != 1 or not setup.use_orig_params:
        return []
    return [Problem("fsdp_use_orig_params is true: PEFT documents false for LoRA / QLoRA under FSDP 1, the setting "
                    "under which its wrap policy shards trainable and frozen weights apart and memory is saved",
                    "accelerate config: fsdp_config.fsdp_use_orig_params",
                    "set fsdp_use_orig_params: false (recipes/accelerate/fsdp-qlora.yaml)")]


def _deepspeed_problems(setup: LaunchSetup) -> list[Problem]:
    if setup.engine != "deepspeed" or setup.zero_stage != 3 or setup.zero3_save_16bit:
        return []
    return [Problem("ZeRO-3 without zero3_save_16bit_model: the final save would write an empty adapter and a "
                    "DeepSpeed checkpoint instead of standard files",
                    "accelerate config: deepspeed_config.zero3_save_16bit_model",
                    "set zero3_save_16bit_model: true (recipes/accelerate/deepspeed-zero3-qlora.yaml)")]


def _precision_problems(quant: QuantSettings, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    """DeepSpeed builds its engine from the launch's mixed precision and refuses, at the first step, training
    arguments that differ; ecomtune's come from the hardware and `quant.compute_dtype`."""
    if setup.engine != "deepspeed":
        return []
    from ecomtune.backbones.model_loading import pick_compute_dtype
    from ecomtune.train.trl_bridge import mixed_precision

    wanted = mixed_precision(pick_compute_dtype(quant.compute_dtype))
    if setup.mixed_precision == wanted:
        return []
    return [Problem(f"mixed_precision is '{setup.mixed_precision}', but this stage trains in '{wanted}' here "
                    f"({stage_name}.quant.compute_dtype: {quant.compute_dtype}); DeepSpeed refuses the difference",
                    "accelerate config: mixed_precision",
                    f"launch with --mixed_precision {wanted} (or set mixed_precision: {wanted} in the config)")]


def _packing_problems(packing: bool, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    if not packing or setup.sequence_shards <= 1:
        return []
    return [Problem(f"packed rows are split across {setup.sequence_shards} processes by context / sequence "
                    "parallelism: samples are cut in two and per-sample attention sees half of each",
                    f"{stage_name}.packing", "set packing: false, or launch without cp_size / sp_size")]


def _no_gpu_problems(setup: LaunchSetup) -> list[Problem]:
    if setup.requested != "fsdp":
        return []
    return [Problem("the launch asks for FSDP, but this machine has no GPU: accelerate runs FSDP on GPUs only "
                    "(its low-memory loading stops with 'no available devices'; without it the run is plain DDP)",
                    "accelerate config: distributed_type", "on CPUs launch with recipes/accelerate/ddp.yaml "
                    "(or torchrun); keep fsdp-qlora.yaml for GPU machines")]


def engine_problems(recipe: Recipe, stage_name: str, setup: LaunchSetup,
                    stage_problems: Sequence[Problem] = ()) -> list[Problem]:
    """Every way the stage's recipe and the launch disagree (see the module docstring), each at its key.
    `stage_problems`: what the stage itself refuses of this launch (`StageUnit.launch_problems`); when there are
    any, they are the only ones reported, since the stage cannot run under this engine whatever the recipe says."""
    stage = stage_settings(recipe, stage_name)
    if setup.requested is not None:
        return _no_gpu_problems(setup)
    if stage_problems:
        return list(stage_problems)
    return [*_storage_problems(stage.quant, stage_name, setup),
            *_optimizer_problems(stage.train.optimizer, stage_name, setup),
            *_fsdp_problems(stage_name, setup), *_deepspeed_problems(setup),
            *_precision_problems(stage.quant, stage_name, setup),
            *_packing_problems(stage.packing, stage_name, setup),
            *_probe_problems(stage.probe, stage_name, setup)]


def _probe_problems(probe, stage_name: str, setup: LaunchSetup) -> list[Problem]:
    """The in-training probe generates with the model each process holds, and the guard copies weights back:
    under sharded parameters a process holds shards, not the model."""
    if probe is None or not setup.shards_parameters:
        return []
    return [Problem(f"the bench probe generates with the whole model, but {setup.describe()} shards its "
                    "parameters across processes", f"{stage_name}.probe",
                    "remove the probe for this launch (run `ecomtune bench` on the finished run), or launch with "
                    "recipes/accelerate/ddp.yaml")]


def check_engine(recipe: Recipe, stage_name: str, setup: LaunchSetup, stage_problems: Sequence[Problem] = ()) -> None:
    """Raise one ConfigError listing every mismatch between the stage's recipe and the launch (`engine_problems`)."""
    problems = engine_problems(recipe, stage_name, setup, stage_problems)
    if problems:
        raise ConfigError(f"{stage_name}: the recipe does not fit the launch ({setup.describe()})", problems,
                          fix="change the keys named above (a recipe key with --set KEY=VALUE, an accelerate "
                          "config key in the --config_file), or launch with another preset from recipes/accelerate/")


@dataclass(frozen=True)
class ModelClasses:
    """What an FSDP wrap list is judged against: every module class name of the model, the block classes inside
    its vision tower, and the blocks FSDP wraps when the launch names none (the `_no_split_modules` of the model
    and its sub-models, which PEFT's wrap policy uses)."""

    all: frozenset[str]
    vision: frozenset[str]
    default_wrap: frozenset[str]


def module_classes(backbone, overrides=None) -> ModelClasses:
    """The backbone's `ModelClasses`, from a weightless skeleton built on the meta device: the wrap list is
    checked before any weights load."""
    from ecomtune.backbones.model_loading import weightless_skeleton
    from ecomtune.backbones.spec import resolve_roles

    skeleton = weightless_skeleton(backbone)
    roles = resolve_roles(skeleton, backbone.spec, overrides)
    blocks = {name for module in skeleton.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    vision = {type(m).__name__ for m in skeleton.get_submodule(roles.vision_tower).modules()}
    return ModelClasses(frozenset(type(m).__name__ for m in skeleton.modules()), frozenset(vision & blocks or vision),
                        frozenset(blocks))


_WRAP_KEY = "accelerate config: fsdp_config.fsdp_transformer_layer_cls_to_wrap"


def check_wrap_classes(setup: LaunchSetup, classes: ModelClasses) -> None:
    """The classes FSDP will wrap (the launch's list, else the model's own blocks) must exist in the model and
    include the vision tower's blocks: an unwrapped vision tower is gathered whole on every process."""
    if setup.engine != "fsdp":
        return
    wrapped = set(setup.wrap_classes or classes.default_wrap)
    problems = [Problem(f"'{name}' is not a module class of this model", _WRAP_KEY, "name classes the model has, "
                        "or drop the key to wrap the model's own block classes")
                for name in setup.wrap_classes if name not in classes.all]
    if classes.vision and not classes.vision & wrapped:
        problems.append(Problem(f"no vision tower class is wrapped ({', '.join(sorted(wrapped)) or 'none'}); "
                                f"candidates: {', '.join(sorted(classes.vision))}", _WRAP_KEY,
                                "list the language model's and the vision tower's block classes"))
    if problems:
        raise ConfigError("The FSDP wrap list does not fit the model", problems)


def check_samples(images_per_sample: Sequence[int], locate: Callable[[list[int]], list[str]], stage_name: str,
                  setup: LaunchSetup) -> None:
    """Under FSDP / ZeRO-3 a process whose batch has no image skips the vision tower while the others gather its
    shards: the job stalls. Refuse text-only samples there, naming up to 20 of them (`locate`: where the samples
    at some indices came from)."""
    if not setup.shards_parameters:
        return
    text_only = [index for index, count in enumerate(images_per_sample) if count == 0]
    if text_only:
        raise ConfigError(
            f"{len(text_only)} sample(s) have no image: under {setup.describe()} every process must run the vision "
            "tower at every step", [Problem("no image", where) for where in locate(text_only[:20])],
            fix=f"give every sample of {stage_name}.data an image or leave text-only samples out, or train with "
            "recipes/accelerate/ddp.yaml")


def uniform_frozen_dtype(model, dtype) -> int:
    """Cast frozen floating parameters back to `dtype` (the load dtype); returns how many changed.

    PEFT's `prepare_model_for_kbit_training` upcasts every non-4-bit weight (norms, embeddings, vision tower) to
    float32 for stability; FSDP 1 flattens each unit into one tensor of one dtype, so a decoder layer holding
    bfloat16-stored 4-bit weights beside float32 norms cannot be wrapped. Frozen weights came in at `dtype`, so
    casting them back loses nothing; trainable ones (LoRA, the projector copy) are wrapped in units of their own
    and keep their precision."""
    changed = 0
    for param in model.parameters():
        if (not param.requires_grad and param.dtype.is_floating_point and param.dtype != dtype
                and type(param).__name__ != "Params4bit"):
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def gather_full_state_at_save(trainer) -> bool:
    """Make the next `trainer.save_model` gather whole weights on rank 0; True when that needed a change.

    Under FSDP the final save switches the plugin to FULL_STATE_DICT (checkpoints during training stay sharded,
    which is cheaper), so the adapter and projector are the same standard files a single GPU writes; the switch
    stays, the final save being the run's last. ZeRO-3 gathers through `zero3_save_16bit_model`, which
    `check_engine` requires; other engines save as always."""
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
    if plugin is None:
        return False
    plugin.set_state_dict_type("FULL_STATE_DICT")
    return True
