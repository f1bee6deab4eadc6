"""How a stage's model is built: what loads, in which precision, and what trains per component (the plan each
stage unit declares, `ecomtune.train.stage_units`).

A projector-only stage (align): projector full, everything else frozen. A LoRA stage (mid, sft): 4-bit base (per
recipe), PEFT LoRA on the language model (and the vision tower when asked), projector full or frozen; started from
an align run's projector (a new adapter), or from a LoRA run whose adapter is continued. Each builder returns
(model, roles, parameter rows) and prints the parameter table on the main process.
"""

from __future__ import annotations

from typing import Any

from ecomtune.backbones.model_loading import load_model, role_overrides
from ecomtune.backbones.registry import ResolvedBackbone
from ecomtune.backbones.spec import ResolvedRoles, resolve_roles
from ecomtune.config.schema import LoraStage, Recipe
from ecomtune.config.stages import stage_settings
from ecomtune.errors import ConfigError, Problem
from ecomtune.infer.load import load_aligned_projector
from ecomtune.runs.manifest import FinishedRun
from ecomtune.runtime import is_main_process
from ecomtune.train.components import apply_plan, parameter_table, print_parameter_table
from ecomtune.train.lora_targets import checked_lora_targets

PROJECTOR_ONLY = {"vision_tower": "frozen", "projector": "full", "language_model": "frozen"}


def projector_model(recipe: Recipe, stage_name: str, backbone: ResolvedBackbone, show: bool = True):
    """The model as a projector-only stage (align) trains it: projector full, everything else frozen. Returns
    (model, roles, rows)."""
    stage = stage_settings(recipe, stage_name)
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    plan = dict(PROJECTOR_ONLY)
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if show and is_main_process():
        print_parameter_table(rows, f"{stage_name}: {backbone.spec.family} ({backbone.source})")
    return model, roles, rows


def lora_plan(stage: LoraStage) -> dict[str, str]:
    """What a LoRA stage trains per component: LoRA on the language model (and the vision tower when asked), the
    projector as its settings say."""
    return {"vision_tower": "lora" if stage.vision == "lora" else "frozen", "projector": stage.projector,
            "language_model": "lora"}


def projector_state(model, roles: ResolvedRoles) -> dict[str, Any]:
    """The projector's weights keyed by their path in the model (`model.multi_modal_projector.linear_1.weight`),
    so a projector made of several modules (Qwen3-VL's merger and deepstack mergers) is one file."""
    return {f"{path}.{key}": value.detach().contiguous().cpu() for path in roles.projector
            for key, value in model.get_submodule(path).state_dict().items()}


def lora_model(recipe: Recipe, stage_name: str, backbone: ResolvedBackbone, start: FinishedRun | None = None,
               show: bool = True):
    """The model as a LoRA stage (mid, sft) trains it (`lora_plan`): 4-bit base (per recipe), PEFT LoRA on the
    language model (and the vision tower when asked), projector full or frozen. Returns (model, roles, rows).

    `start`, the finished `--init-from` run: from an align run its projector is loaded, then a new adapter
    starts (seeded by train.seed). From a LoRA run (mid, sft) its adapter is continued, not merged: the same
    base, the same adapter weights and projector, so the stage starts exactly where that run ended and its
    adapter still loads on the plain base with peft. The stage's LoRA shape must then equal the run's
    (`continue_adapter` says what differs)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    stage = stage_settings(recipe, stage_name)
    if start is not None and start.base != backbone.source:
        raise ConfigError(f"--init-from {start.folder} trained on {start.base}, not {backbone.source}",
                          fix="use the same --backbone for every stage of a recipe")
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    if start is not None and start.projector:
        load_aligned_projector(model, roles, start, backbone)
    if stage.quant.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=stage.train.gradient_checkpointing)

    targets = checked_lora_targets(model, roles, backbone.spec, stage, stage_name)
    target = targets.regex(roles)
    # The projector travels in the adapter whenever it differs from the base's: trained now, or aligned before.
    # A continued adapter keeps what it carries (`continue_adapter`).
    save_projector = stage.projector == "full" or (start is not None and start.projector is not None)
    lora = LoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha, lora_dropout=stage.lora.dropout,
                      target_modules=target, modules_to_save=list(roles.projector) if save_projector else None,
                      task_type="CAUSAL_LM")
    set_seed(stage.train.seed)  # LoRA's initial weights are drawn here: the same seed, the same adapter
    if start is not None and start.adapter:
        model = continue_adapter(model, start, lora, stage_name)
    else:
        model = get_peft_model(model, lora)
    plan = lora_plan(stage)
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if not any(r.component == "lora" and r.trainable for r in rows):
        raise ConfigError("LoRA matched no layer of the language model",
                          [Problem(f"targets {targets.language_model} under {roles.language_model}",
                                   f"{stage_name}.lora.targets")],
                          fix="name Linear layers that exist (`ecomtune backbones` lists the defaults)")
    if show and is_main_process():
        title = f"{stage_name}: {backbone.spec.family} ({backbone.source}), 4-bit={stage.quant.load_in_4bit}"
        if start is not None:
            title += f", from {start.stage} run {start.folder}"
        print_parameter_table(rows, title)
    return model, roles, rows


def continue_adapter(model, start: FinishedRun, wanted, stage_name: str):
    """`model` with the adapter of a finished LoRA run loaded for further training. The stage's LoRA must have the
    run's shape (rank, alpha, targets, what travels with it); only the dropout may change."""
    from peft import LoraConfig, PeftModel

    saved = LoraConfig.from_pretrained(str(start.folder))
    problems = [Problem(f"{name}: the run has {getattr(saved, name)!r}, this stage {getattr(wanted, name)!r}",
                        f"{stage_name}.{key}")
                for name, key in (("r", "lora.r"), ("lora_alpha", "lora.alpha"), ("target_modules", "lora.targets"))
                if getattr(saved, name) != getattr(wanted, name)]
    if wanted.modules_to_save and not saved.modules_to_save:  # the stage would train a projector it cannot save
        problems.append(Problem(f"the run's adapter does not carry the projector, but {stage_name}.projector is full",
                                f"{stage_name}.projector"))
    if problems:
        raise ConfigError(f"--init-from {start.folder}: {stage_name} continues that {start.stage} run's adapter, so "
                          "its LoRA must have the same shape", problems,
                          fix=f"set {stage_name}.lora and {stage_name}.vision as the run's recipe has them (its "
                          "manifest.json), or start from the align run")
    saved.lora_dropout = wanted.lora_dropout
    saved.inference_mode = False
    return PeftModel.from_pretrained(model, str(start.folder), config=saved, is_trainable=True)
