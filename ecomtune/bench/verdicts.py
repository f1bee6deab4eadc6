"""Did the adaptation do what the paper claims? Verdicts on three results files of one backbone.

The three columns are the pretrained base in full precision, the same base loaded in 4-bit (what QLoRA starts
from: quantization alone costs something, and it is measured apart), and the model after the recipe. A verdict
is a plain value with its figures, so the demo prints it, a test checks it, and nothing decides it twice:
- every in-domain task (each task not marked `retention`) scores above the base, in full precision and in 4-bit;
- the attributes a task names in `beats_majority` (Deep Fashion colour and pattern) beat their majority-class
  baselines (the model reads the picture);
- general skill (each `retention` task) after the recipe is within `GENERAL_TOLERANCE` of the 4-bit base (adapting
  did not cost it);
- the base has general skill to keep (`GENERAL_BASE_MIN`), else there is nothing to retain.
Every figure is a task's headline (`ecomtune.tasks.registry.headline_score`), read from the task's entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecomtune.tasks.registry import TASKS, headline_score

GENERAL_TOLERANCE = 0.05
GENERAL_BASE_MIN = 0.70


@dataclass(frozen=True)
class Verdict:
    claim: str
    passed: bool
    figures: str


def verdicts(base: dict[str, Any], base_4bit: dict[str, Any], after: dict[str, Any]) -> list[Verdict]:
    """The claims, each passed or failed with the figures it was decided on. A task missing from `after` fails."""
    out = []
    for task in (t for t in TASKS.values() if not t.retention):
        if task.name not in base["tasks"] and task.name not in after["tasks"]:
            continue
        now, full, quant = (headline_score(r, task.name) for r in (after, base, base_4bit))
        before = max(v for v in (full, quant) if v is not None) if (full, quant) != (None, None) else None
        ok = now is not None and before is not None and now > before
        out.append(Verdict(f"{task.name} {task.headline} rises above the base", ok,
                           f"{_f(now)} after vs {_f(full)} full precision, {_f(quant)} 4-bit"))
    for task in TASKS.values():
        rows = after["tasks"].get(task.name, {}).get("scores", {}).get("by_attribute", {})
        for attribute in task.beats_majority:
            row = rows.get(attribute)
            if row is None:
                continue
            out.append(Verdict(f"{task.name} {attribute} beats its majority-class baseline",
                               row["accuracy"] > row["majority_baseline"],
                               f"{row['accuracy']:.3f} vs majority {row['majority_baseline']:.3f}"))
    for task in (t for t in TASKS.values() if t.retention):
        general, general_4bit, general_base = (headline_score(r, task.name) for r in (after, base_4bit, base))
        if general_base is not None:
            out.append(Verdict(f"the base has general skill (>= {GENERAL_BASE_MIN:.2f})",
                               general_base >= GENERAL_BASE_MIN, f"{task.name} {general_base:.3f} in full precision"))
        if general_4bit is not None:
            ok = general is not None and general >= general_4bit - GENERAL_TOLERANCE
            out.append(Verdict(f"general skill kept (within {GENERAL_TOLERANCE:.2f} of the 4-bit base)", ok,
                               f"{_f(general)} after vs {general_4bit:.3f} 4-bit base"
                               + (f" ({general - general_4bit:+.3f})" if general is not None else "")))
    return out


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
