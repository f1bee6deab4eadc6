"""Per-architecture knowledge, as data: one `BackboneSpec` per family.

A spec names where each component lives (vision tower, projector, language model), which linear
layers LoRA adapts by default, how images appear in text, how many images one sample may carry,
how the conversation reaches the model, and which image-processor settings control resolution.
Every path is a tuple of candidates; the first that exists in the loaded model wins, and a miss
lists what was tried. A spec with no candidates (`GENERIC`) has its roles found by inspection
(`ecomtune.backbones.discovery`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from ecomtune.backbones.tiny import TinyTwin
from ecomtune.errors import BackboneError, Problem

ROLES = ("vision_tower", "projector", "language_model")
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Conversation = Literal["chat", "prefix-suffix"]
# How packed rows carry positions (see ecomtune.data.batches.packing): "1d" restarts one position per token at each
# sample; "mrope" adds Qwen's per-sample 3-D rows from the model's own rope index.
PackingPositions = Literal["1d", "mrope"]


@dataclass(frozen=True)
class BackboneSpec:
    """What ecomtune must know about one VLM family to train it."""

    family: str
    title: str
    model_types: tuple[str, ...]
    hub_ids: dict[str, str] = field(compare=False)
    vision_tower: tuple[str, ...]
    projector: tuple[str, ...]
    language_model: tuple[str, ...]
    # Modules that also belong to the projector whenever they exist (Qwen3-VL's deepstack mergers feed ViT
    # features into early LM layers: they are connectors, trained with the main merger).
    projector_extra: tuple[str, ...] = ()
    lm_head: tuple[str, ...] = ("lm_head",)
    auto_class: str = "AutoModelForImageTextToText"
    lora_targets: tuple[str, ...] = LLAMA_LINEARS
    vision_lora_targets: tuple[str, ...] = ()
    image_placeholder: str = "<image>"  # what the chat template writes per image; the processor expands it
    max_images: int | None = None  # None: any number (interleaved); 1: single-image family
    # The largest max(w, h) / min(w, h) the image processor accepts (Qwen-VL's smart_resize raises beyond 200:1);
    # the data check refuses such images with their record's file:line before any model loads. None: no limit.
    max_aspect_ratio: float | None = None
    # chat: render with the chat template, loss on assistant turns. prefix-suffix: one prompt and one answer
    # handed to the processor as `text` and `suffix` (PaliGemma: the prompt attends bidirectionally).
    conversation: Conversation = "chat"
    chat_template: str | None = None  # used when the processor ships none (PaliGemma checkpoints)
    # The resolution settings a recipe can give (`backbone.resolution.*`) that this family supports, each mapped
    # to attributes of its image processor ("size.longest_edge" is the `longest_edge` entry of the `size` dict).
    image_knobs: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    # Sequence packing: set only where the tiny twin's packed loss, gradients and logits match the same samples
    # run one by one (tests/test_packing.py); otherwise `packing_refusal` says why a packing recipe is refused.
    packing: PackingPositions | None = None
    packing_refusal: str = "packing has not been verified for this architecture"
    # why this family cannot train text-only samples beside samples with images (None: it can, batched together)
    text_only_refusal: str | None = None
    tiny: TinyTwin | None = field(default=None, compare=False, repr=False)

    def model_class(self):
        """The transformers auto class that loads this family (`auto_class`)."""
        import transformers

        return getattr(transformers, self.auto_class)

    @property
    def multi_image(self) -> bool:
        return self.max_images is None or self.max_images > 1

    @property
    def is_generic(self) -> bool:
        return not (self.vision_tower and self.projector and self.language_model)


GENERIC = BackboneSpec(
    family="generic", title="any AutoModelForImageTextToText model (roles found by inspection)",
    model_types=(), hub_ids={}, vision_tower=(), projector=(), language_model=(), lora_targets=(),
)


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class ResolvedRoles:
    """The module path of each component in one loaded model. The projector may span several modules."""

    vision_tower: str
    projector: tuple[str, ...]
    language_model: str
    lm_head: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "projector", _as_tuple(self.projector))  # a manifest stores it as a list

    def component_of(self, param_name: str) -> str:
        """The component a parameter belongs to. The projector wins over the vision tower that may contain it
        (Qwen2-VL's `visual.merger`); LoRA weights are their own component."""
        if ".lora_" in param_name or "lora_embedding" in param_name:
            return "lora"
        name = param_name.removeprefix("base_model.model.")
        name = re.sub(r"\.modules_to_save\.default|\.original_module", "", name)
        candidates = [*(("projector", p) for p in self.projector), ("vision_tower", self.vision_tower),
                      ("language_model", self.language_model), ("language_model", self.lm_head)]
        for role, path in candidates:
            if name == path or name.startswith(path + "."):
                return role
        return "other"


@dataclass(frozen=True)
class RoleOverrides:
    """Module paths a recipe names explicitly (`backbone.vision_tower` / `projector` / `language_model`)."""

    vision_tower: str | None = None
    projector: tuple[str, ...] | None = None
    language_model: str | None = None


def top_module_paths(model: nn.Module, depth: int = 3, limit: int = 40) -> list[str]:
    """Module paths up to `depth` levels, without numbered list entries: what a user can name in a recipe."""
    paths = sorted({n for n, _ in model.named_modules()
                    if n and n.count(".") < depth and not any(p.isdigit() for p in n.split("."))})
    return paths[:limit]


def resolve_roles(model: nn.Module, spec: BackboneSpec, overrides: RoleOverrides | None = None) -> ResolvedRoles:
    """Find each component's module path in `model`: the recipe's explicit paths first, then the family's
    candidates; a generic spec's roles are found by inspection. A miss lists the paths tried, the model's
    module paths and the recipe key that fixes it."""
    overrides = overrides or RoleOverrides()
    names = dict(model.named_modules())
    found: dict[str, str | tuple[str, ...] | None] = {}
    problems: list[Problem] = []
    discovered = None
    if spec.is_generic:
        from ecomtune.backbones.discovery import discover_roles

        discovered = discover_roles(model)
    for role in (*ROLES, "lm_head"):
        explicit = getattr(overrides, role, None)
        if explicit is not None:
            paths = _as_tuple(explicit)
            missing = [p for p in paths if p not in names]
            if missing:
                problems.append(Problem(f"{role}: {missing} named in the recipe is not a module of "
                                        f"{type(model).__name__}", f"backbone.{role}"))
            found[role] = paths if role == "projector" else paths[0]
            continue
        if discovered is not None:
            found[role] = discovered.get(role)
            if found[role] is None:
                problems.append(Problem(f"{role}: no module looks like one", f"backbone.{role}",
                                        f"name it in the recipe: backbone.{role}: <module path>"))
            continue
        candidates = getattr(spec, role)
        hit = next((c for c in candidates if c in names), None)
        if hit is None:
            problems.append(Problem(f"{role}: none of {list(candidates)} exists in {type(model).__name__}",
                                    f"backbone family {spec.family}",
                                    f"name it in the recipe: backbone.{role}: <module path>"))
        found[role] = (hit, *(p for p in spec.projector_extra if p in names)) if role == "projector" and hit else hit
    if problems:
        raise BackboneError(
            "Could not find the model's components",
            problems,
            fix=f"the model's module paths include {top_module_paths(model)}; set the missing role in the recipe "
            "(backbone.vision_tower, backbone.projector, backbone.language_model)",
        )
    found["projector"] = _members(names, _as_tuple(found["projector"]))  # type: ignore[arg-type]
    return ResolvedRoles(**found)  # type: ignore[arg-type]


def _members(names: dict[str, nn.Module], paths: tuple[str, ...]) -> tuple[str, ...]:
    """Containers (ModuleList, ModuleDict) replaced by their members: PEFT saves and trains whole modules
    (`modules_to_save`), never a bare list of them (Qwen3-VL's deepstack_merger_list)."""
    out: list[str] = []
    for path in paths:
        module = names[path]
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            out.extend(f"{path}.{child}" for child, _ in module.named_children())
        else:
            out.append(path)
    return tuple(out)


def lora_target_regex(module_path: str, targets: list[str] | tuple[str, ...]) -> str:
    """A PEFT `target_modules` regex that matches the named linear layers inside one component only, so LoRA
    on the language model never lands on a vision tower whose layers share a name (q_proj is common to both)."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"{re.escape(module_path)}\..*\.({names})"
