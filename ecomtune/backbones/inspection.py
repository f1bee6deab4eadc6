"""What `ecomtune backbones` shows: the capability matrix of the registry, and any model's resolved roles.

Inspection needs no weights: the model is built from its config on the meta device, so a 70B hub model
is inspected from its few-kB config.json (cached or downloaded) in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.pretrained import PRETRAINED_ALIASES
from ecomtune.backbones.spec import BackboneSpec, ResolvedRoles, RoleOverrides, resolve_roles


def multi_image_label(spec: BackboneSpec) -> str:
    if spec.max_images is None:
        return "yes"
    return "no (1 image)" if spec.max_images == 1 else f"up to {spec.max_images}"


def capability_rows() -> list[dict[str, str]]:
    """One row per family. `4-bit tested` means the family's tiny twin trains 4-bit + LoRA in the test suite."""
    rows = []
    for spec in FAMILIES:
        from ecomtune.backbones.sized import checkpoint_of

        aliases = [f"{alias} -> {hub}" + (" (also sized:)" if checkpoint_of(hub) else "")
                   for alias, hub in spec.hub_ids.items()]
        if spec.tiny is not None:
            aliases.append(f"tiny-{spec.family} (built locally)")
            aliases += [f"{alias} (built locally, trained on the general world)"
                        for alias, twin in PRETRAINED_ALIASES.items() if twin == f"tiny-{spec.family}"]
        rows.append({
            "family": f"{spec.title} ({spec.family})",
            "aliases -> hub ids": "\n".join(aliases),
            "projector": "\n".join((spec.projector[0], *spec.projector_extra)),
            "LoRA targets": ", ".join(spec.lora_targets),
            "image token": spec.image_placeholder,
            "multi-image": multi_image_label(spec),
            "4-bit tested": "yes (tiny twin)" if spec.tiny is not None else "no",
            "resolution": ", ".join(spec.image_knobs) or "fixed",
            "packing": {"mrope": "yes (mRoPE)", "1d": "yes"}.get(spec.packing or "", "no"),
        })
    return rows


@dataclass(frozen=True)
class Inspection:
    source: str
    family: str
    model_class: str
    roles: ResolvedRoles
    found_by: str
    parameters: dict[str, int]  # per component, as `ResolvedRoles.component_of` assigns them


def inspect_backbone(name: str, overrides: RoleOverrides | None = None) -> Inspection:
    """Resolve `name` (alias, hub id or folder), build its model weightless and find its roles."""
    import torch
    from transformers import AutoConfig

    from ecomtune.backbones.model_loading import check_available
    from ecomtune.backbones.registry import resolve_backbone

    backbone = resolve_backbone(name)
    check_available(backbone)
    config = AutoConfig.from_pretrained(backbone.source, revision=backbone.revision)
    with torch.device("meta"):
        model = backbone.spec.model_class().from_config(config)
    roles = resolve_roles(model, backbone.spec, overrides)
    counts: dict[str, int] = {}
    for param_name, param in model.named_parameters():
        component = roles.component_of(param_name)
        counts[component] = counts.get(component, 0) + param.numel()
    found_by = "recipe paths" if overrides and any(vars(overrides).values()) else (
        "inspection (generic fallback)" if backbone.spec.is_generic else f"registry spec {backbone.spec.family}")
    return Inspection(backbone.source, backbone.spec.family, type(model).__name__, roles, found_by, counts)


def print_inspection(found: Inspection, stdout: Console) -> None:
    """`ecomtune backbones --inspect`: the model's class, how its roles were found, parameters per component."""
    stdout.print(f"{found.source}: {found.model_class} ({found.family}), roles found by {found.found_by}",
                 markup=False, highlight=False, soft_wrap=True)
    table = Table()
    for column in ("component", "module path", "parameters"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    paths = {"vision_tower": found.roles.vision_tower, "projector": "\n".join(found.roles.projector),
             "language_model": f"{found.roles.language_model}\n{found.roles.lm_head}", "other": ""}
    for component, path in paths.items():
        if component in found.parameters:
            table.add_row(component, path, f"{found.parameters[component]:,}")
    table.add_row("all", "", f"{sum(found.parameters.values()):,}", style="bold")
    stdout.print(table)


def print_capabilities(stdout: Console) -> None:
    """`ecomtune backbones`: the capability matrix, one row per family."""
    rows = capability_rows()
    table = Table(title="ecomtune backbones: one row per family (--inspect MODEL for any other model)",
                  show_lines=True)
    for column in rows[0]:
        # hub ids and module paths are copied whole; other cells wrap, never cut
        table.add_column(column, no_wrap=column in ("aliases -> hub ids", "projector"), overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    stdout.print(table)
