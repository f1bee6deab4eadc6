"""What each stage trains, per component, and the table that shows it.

A plan maps each component (vision_tower, projector, language_model) to a mode: frozen, full or
lora. `apply_plan` sets `requires_grad` from the plan alone, so nothing trains by accident (a
projector silently left frozen, a LoRA on a tower meant to be frozen). `parameter_table` counts
what is really trainable afterwards, which is what the user sees at the start of every run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from torch import nn

from ecomtune.backbones.spec import ResolvedRoles

COMPONENTS = ("vision_tower", "projector", "language_model", "lora", "other")


@dataclass(frozen=True)
class ComponentRow:
    component: str
    mode: str
    total: int
    trainable: int


def apply_plan(model: nn.Module, roles: ResolvedRoles, plan: dict[str, str]) -> None:
    """Set requires_grad per component: `full` trains every parameter of the component, anything else
    (frozen, or lora where LoRA weights carry the training) freezes the component's own weights.
    LoRA parameters always train; PEFT's untouched copy of a saved module (`original_module`) never does."""
    for name, param in model.named_parameters():
        component = roles.component_of(name)
        if ".original_module." in name:
            param.requires_grad_(False)
        elif component == "lora":
            param.requires_grad_(True)
        else:
            param.requires_grad_(plan.get(component, "frozen") == "full")


def _numel(param: nn.Parameter) -> int:
    # bitsandbytes packs two 4-bit values per uint8 element; report logical parameters
    count = param.numel()
    return count * 2 if getattr(param, "quant_state", None) is not None or type(param).__name__ == "Params4bit" \
        else count


def parameter_table(model: nn.Module, roles: ResolvedRoles, plan: dict[str, str]) -> list[ComponentRow]:
    """Parameter counts per component, total and trainable."""
    total: dict[str, int] = defaultdict(int)
    trainable: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        if ".original_module." in name:  # PEFT's frozen duplicate of a module it trains
            continue
        component = roles.component_of(name)
        total[component] += _numel(param)
        if param.requires_grad:
            trainable[component] += _numel(param)
    rows = []
    for component in COMPONENTS:
        if total[component] == 0:
            continue
        mode = "lora" if component == "lora" else plan.get(component, "frozen")
        rows.append(ComponentRow(component, mode, total[component], trainable[component]))
    return rows


def print_parameter_table(rows: list[ComponentRow], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("component", "mode", "parameters", "trainable", "% trainable"):
        table.add_column(column, justify="left" if column in ("component", "mode") else "right")
    for row in rows:
        share = 100.0 * row.trainable / row.total if row.total else 0.0
        table.add_row(row.component, row.mode, f"{row.total:,}", f"{row.trainable:,}", f"{share:.1f}")
    all_total = sum(r.total for r in rows)
    all_trainable = sum(r.trainable for r in rows)
    table.add_row("all", "", f"{all_total:,}", f"{all_trainable:,}",
                  f"{100.0 * all_trainable / max(all_total, 1):.2f}", style="bold")
    Console(stderr=True).print(table)
