"""Per-architecture knowledge, as data: one `BackboneSpec` per family.

A spec names where each component lives (vision tower, projector, language model), which linear
layers LoRA adapts by default, how images appear in text, and how many images one sample may carry.
Every path is a tuple of candidates (transformers has moved modules between major versions); the
first that exists in the loaded model wins, and a miss lists what was tried.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ecomtune.errors import BackboneError, Problem

ROLES = ("vision_tower", "projector", "language_model")


@dataclass(frozen=True)
class BackboneSpec:
    """What ecomtune must know about one VLM family to train it."""

    family: str
    model_types: tuple[str, ...]
    hub_ids: dict[str, str]
    vision_tower: tuple[str, ...]
    projector: tuple[str, ...]
    language_model: tuple[str, ...]
    lm_head: tuple[str, ...] = ("lm_head",)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    image_placeholder: str = "<|image_pad|>"
    max_images: int | None = None
    tiny_builder: Callable[[Path, int], None] | None = field(default=None, compare=False, repr=False)

    @property
    def multi_image(self) -> bool:
        return self.max_images is None or self.max_images > 1


@dataclass(frozen=True)
class ResolvedRoles:
    """The module path of each component in one loaded model."""

    vision_tower: str
    projector: str
    language_model: str
    lm_head: str

    def component_of(self, param_name: str) -> str:
        """The component a parameter belongs to. The projector wins over the vision tower that may contain it
        (Qwen2-VL's `visual.merger`); LoRA weights are their own component."""
        if ".lora_" in param_name or "lora_embedding" in param_name:
            return "lora"
        name = param_name.removeprefix("base_model.model.")
        name = re.sub(r"\.modules_to_save\.default|\.original_module", "", name)
        for role, path in (("projector", self.projector), ("vision_tower", self.vision_tower),
                           ("language_model", self.language_model), ("language_model", self.lm_head)):
            if name == path or name.startswith(path + "."):
                return role
        return "other"


def _find(model: nn.Module, candidates: tuple[str, ...]) -> str | None:
    names = dict(model.named_modules())
    return next((c for c in candidates if c in names), None)


def resolve_roles(model: nn.Module, spec: BackboneSpec) -> ResolvedRoles:
    """Find each component's module path in `model`; fail with the paths tried and what the model has."""
    found = {role: _find(model, getattr(spec, role)) for role in (*ROLES, "lm_head")}
    missing = [role for role, path in found.items() if path is None]
    if missing:
        top = sorted({n.split(".")[0] + ("." + n.split(".")[1] if n.count(".") else "")
                      for n, _ in model.named_modules() if n})[:20]
        problems = [
            Problem(f"{role}: none of {list(getattr(spec, role))} exists in {type(model).__name__}",
                    f"backbone family {spec.family}")
            for role in missing
        ]
        raise BackboneError(
            "Could not find the model's components",
            problems,
            fix=f"the model's top-level modules are {top}; update the family spec in ecomtune/backbones/registry.py",
        )
    return ResolvedRoles(**found)  # type: ignore[arg-type]


def lora_target_regex(language_model_path: str, targets: list[str] | tuple[str, ...]) -> str:
    """A PEFT `target_modules` regex that matches the named linear layers inside the language model only,
    so LoRA never lands on a vision tower whose layers share a name (q_proj is common to both)."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"{re.escape(language_model_path)}\..*\.({names})"
