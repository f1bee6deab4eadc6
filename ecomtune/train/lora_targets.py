"""Which layers a LoRA stage adapts, and the check that every named target exists.

PEFT receives one regex per stage (`(q_proj|v_porj)` under the language model's path), so an entry that matches no
layer is silently ignored: the run trains something else than the recipe says. Here every entry of
`<stage>.lora.targets` (and `vision_targets` when `vision: lora`) must match at least one layer LoRA can wrap
inside its component, or the stage is refused with the key, the entry and the layer names that exist. The rule
runs twice on the same code: on the model's weightless skeleton once the stage's data is read and checked
(before any sample is measured or weights load; `read_stage`), and on the loaded model just before PEFT wraps
it (`lora_model`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

from ecomtune.backbones.discovery import linear_layer_names
from ecomtune.backbones.spec import BackboneSpec, ResolvedRoles, lora_target_regex
from ecomtune.errors import ConfigError, Problem


def _wrappable() -> tuple[type, ...]:
    """Layer types PEFT's LoRA wraps (a 4-bit bitsandbytes Linear is an nn.Linear)."""
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)


@dataclass(frozen=True)
class LoraTargets:
    """The layer names a stage's LoRA targets: in the language model, and in the vision tower (None: frozen)."""

    language_model: list[str]
    vision_tower: list[str] | None

    def regex(self, roles: ResolvedRoles) -> str:
        """PEFT's `target_modules` for these names, each matched only inside its own component."""
        target = lora_target_regex(roles.language_model, self.language_model)
        if self.vision_tower is not None:
            target = f"({target})|({lora_target_regex(roles.vision_tower, self.vision_tower)})"
        return target


def _missing(model: nn.Module, path: str, entries: list[str], key: str, component: str) -> list[Problem]:
    """One problem per entry that matches no wrappable layer under `path`, with the names that do exist."""
    modules = [(name, module) for name, module in model.named_modules()]
    existing = linear_layer_names(model, path)
    problems = []
    for entry in entries:
        pattern = re.compile(lora_target_regex(path, [entry]))
        matched = [(name, module) for name, module in modules if pattern.fullmatch(name)]
        if any(isinstance(module, _wrappable()) for _, module in matched):
            continue
        close = difflib.get_close_matches(entry, existing, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if matched:
            what = (f"'{entry}' names {type(matched[0][1]).__name__} modules in the {component} ({path}), which "
                    "LoRA cannot wrap")
        else:
            what = f"'{entry}' matches no layer of the {component} ({path})"
        problems.append(Problem(what, key, f"{hint}Linear layers there: {', '.join(existing) or 'none'}"))
    return problems


def checked_lora_targets(model: nn.Module, roles: ResolvedRoles, spec: BackboneSpec, stage, stage_name: str
                         ) -> LoraTargets:
    """The stage's LoRA targets (the recipe's, else the backbone's defaults, else every Linear layer name of the
    language model), every entry checked against `model` (a weightless skeleton or the loaded model). All misses
    of both components are reported at once."""
    lm_key, vision_key = f"{stage_name}.lora.targets", f"{stage_name}.lora.vision_targets"
    given = stage.lora.targets
    lm = list(given or spec.lora_targets) or linear_layer_names(model, roles.language_model)
    problems = _missing(model, roles.language_model, lm, lm_key if given else
                        f"{lm_key} (the backbone's defaults)", "language model")
    vision = None
    if stage.vision == "lora":
        vision = list(stage.lora.vision_targets or spec.vision_lora_targets)
        if not vision:
            raise ConfigError(
                f"{stage_name}.vision is 'lora' but no vision LoRA targets are known for this backbone",
                [Problem(f"Linear layers in the vision tower: {linear_layer_names(model, roles.vision_tower)}",
                         vision_key)],
                fix=f"name some in {vision_key}, or set {stage_name}.vision: frozen")
        problems += _missing(model, roles.vision_tower, vision, vision_key if stage.lora.vision_targets else
                             f"{vision_key} (the backbone's defaults)", "vision tower")
    if problems:
        raise ConfigError(f"{stage_name}: LoRA targets that match no layer (the adapter would silently train "
                          "fewer layers than the recipe names)", problems,
                          fix="name layers that exist (listed per entry), or drop the key to use the backbone's "
                          "defaults (`ecomtune backbones`)")
    return LoraTargets(lm, vision)


def check_lora_targets_early(recipe, stage, stage_name: str, backbone) -> None:
    """The same check on the backbone's weightless skeleton (config only, meta device): a misspelt target is
    refused in seconds, before the data is measured and before any weights load."""
    from ecomtune.backbones.model_loading import check_available, role_overrides, weightless_skeleton
    from ecomtune.backbones.spec import resolve_roles

    check_available(backbone)  # a hub model that cannot be fetched: its one message, not the config loader's
    skeleton = weightless_skeleton(backbone)
    roles = resolve_roles(skeleton, backbone.spec, role_overrides(recipe.backbone))
    checked_lora_targets(skeleton, roles, backbone.spec, stage, stage_name)
