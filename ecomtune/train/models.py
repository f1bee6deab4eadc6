"""How each stage builds the model it trains: what loads, in which precision, and what trains per component.

align: projector full, everything else frozen. sft: 4-bit base (per recipe), PEFT LoRA on the language model
(and the vision tower when asked), projector full or frozen, started from an align run's projector. Each
builder returns (model, roles, parameter rows) and prints the parameter table on the main process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecomtune.backbones.discovery import linear_layer_names
from ecomtune.backbones.loading import load_model, role_overrides
from ecomtune.backbones.registry import ResolvedBackbone
from ecomtune.backbones.spec import ResolvedRoles, lora_target_regex, resolve_roles
from ecomtune.config.schema import Recipe
from ecomtune.errors import ConfigError, Problem
from ecomtune.runs.manifest import finished_run
from ecomtune.runtime import is_main_process
from ecomtune.train.components import apply_plan, parameter_table, print_parameter_table

PROJECTOR_FILE = "projector.safetensors"


def align_model(recipe: Recipe, backbone: ResolvedBackbone, show: bool = True):
    """The model as stage 1 trains it: projector full, everything else frozen. Returns (model, roles, rows)."""
    stage = recipe.align
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    plan = {"vision_tower": "frozen", "projector": "full", "language_model": "frozen"}
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if show and is_main_process():
        print_parameter_table(rows, f"align: {backbone.spec.family} ({backbone.source})")
    return model, roles, rows


def projector_state(model, roles: ResolvedRoles) -> dict[str, Any]:
    """The projector's weights keyed by their path in the model (`model.multi_modal_projector.linear_1.weight`),
    so a projector made of several modules (Qwen3-VL's merger and deepstack mergers) is one file."""
    return {f"{path}.{key}": value.detach().contiguous().cpu() for path in roles.projector
            for key, value in model.get_submodule(path).state_dict().items()}


def load_aligned_projector(model, roles: ResolvedRoles, init_from: Path, backbone: ResolvedBackbone) -> str:
    """Copy the projector trained by `ecomtune align` into `model`; checks the run is finished, matches the
    backbone, and that its projector file is whole."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = finished_run(init_from, "--init-from", ("align",))
    if run.base != backbone.source:
        raise ConfigError(f"--init-from {init_from} was aligned on {run.base}, not {backbone.source}",
                          fix="use the same --backbone for align and sft")
    path = Path(init_from) / PROJECTOR_FILE
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"--init-from {init_from}: {PROJECTOR_FILE} cannot be read ({exc})",
                          fix="the file is damaged or truncated; run `ecomtune align` again into a new --output") \
            from None
    stray = [k for k in weights if not any(k.startswith(path + ".") for path in roles.projector)]
    if stray:
        raise ConfigError(f"{path} holds weights outside this model's projector",
                          [Problem(f"{stray[:3]}", "projector modules " + ", ".join(roles.projector))],
                          fix="align and sft must use the same backbone and the same backbone.projector")
    for module_path in roles.projector:
        module = model.get_submodule(module_path)
        ref = next(module.parameters())
        part = {k.removeprefix(module_path + "."): v.to(ref.device, ref.dtype) for k, v in weights.items()
                if k.startswith(module_path + ".")}
        try:
            module.load_state_dict(part, strict=True)  # a missing key is an error, never ignored
        except RuntimeError as exc:
            raise ConfigError(f"{path} does not fit this model's projector {module_path}",
                              [Problem(str(exc).splitlines()[0], str(path))],
                              fix="align and sft must use the same backbone") from None
    return str(init_from)


def sft_model(recipe: Recipe, backbone: ResolvedBackbone, init_from: Path | None = None, show: bool = True):
    """The model as stage 3 trains it: 4-bit base (per recipe), PEFT LoRA on the language model (and the vision
    tower when asked), projector full or frozen, the aligned projector loaded first. Returns (model, roles, rows)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    stage = recipe.sft
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    if init_from is not None:
        load_aligned_projector(model, roles, init_from, backbone)
    if stage.quant.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=stage.train.gradient_checkpointing)

    lm_targets = stage.lora.targets or list(backbone.spec.lora_targets) or \
        linear_layer_names(model, roles.language_model)
    target = lora_target_regex(roles.language_model, lm_targets)
    if stage.vision == "lora":
        vision_targets = stage.lora.vision_targets or list(backbone.spec.vision_lora_targets)
        if not vision_targets:
            raise ConfigError(
                "sft.vision is 'lora' but no vision LoRA targets are known for this backbone",
                [Problem(f"Linear layers in the vision tower: {linear_layer_names(model, roles.vision_tower)}",
                         "sft.lora.vision_targets")],
                fix="name some in sft.lora.vision_targets, or set sft.vision: frozen")
        target = f"({target})|({lora_target_regex(roles.vision_tower, vision_targets)})"
    # The projector travels in the adapter whenever it differs from the base's: trained now, or aligned before.
    save_projector = stage.projector == "full" or init_from is not None
    lora = LoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha, lora_dropout=stage.lora.dropout,
                      target_modules=target, modules_to_save=list(roles.projector) if save_projector else None,
                      task_type="CAUSAL_LM")
    set_seed(stage.train.seed)  # LoRA's initial weights are drawn here: the same seed, the same adapter
    model = get_peft_model(model, lora)
    plan = {"vision_tower": "lora" if stage.vision == "lora" else "frozen", "projector": stage.projector,
            "language_model": "lora"}
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if not any(r.component == "lora" and r.trainable for r in rows):
        raise ConfigError("LoRA matched no layer of the language model",
                          [Problem(f"targets {lm_targets} under {roles.language_model}", "sft.lora.targets")],
                          fix="name Linear layers that exist (`ecomtune backbones` lists the defaults)")
    if show and is_main_process():
        title = f"sft: {backbone.spec.family} ({backbone.source}), 4-bit={stage.quant.load_in_4bit}"
        print_parameter_table(rows, title)
    return model, roles, rows


