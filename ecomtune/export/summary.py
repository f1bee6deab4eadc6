"""What `ecomtune export` prints: where the model went, how it loads, and how closely it reproduces the run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ecomtune.export.runner import ExportResult


def print_export(result: ExportResult, console: Console) -> None:
    m, v = result.manifest, result.verification
    base = ("the 4-bit base it trained on, dequantized" if m["base_was_4bit"] else
            "the original full-precision base" + (" (pristine)" if m["merge_base"] == "pristine" else ""))
    console.print(f"[bold]export[/bold] of the {m['run_stage']} run {m['run']} ({m['format']}, {m['dtype']}, {base})"
                  f" in {result.seconds:.1f}s")
    table = Table(title=f"verified against the run on {v.samples} images ({v.positions} scored tokens)")
    for column in ("check", "value", "allowed"):
        table.add_column(column, justify="left" if column == "check" else "right")
    table.add_row("same processor inputs (ids, pixels)", "yes" if v.same_inputs else "no", "yes")
    table.add_row("max logit difference", f"{v.max_logit_diff:.3g}", "")
    table.add_row("  relative to the largest logit", f"{v.relative_diff:.3%}", f"{v.tolerance:.2%}")
    table.add_row("greedy-token agreement", f"{v.token_agreement:.1%}", "")
    console.print(table)
    console.print(f"model folder: {result.model_folder}")
    if result.adapter_folder is not None:
        console.print(f"adapter: {result.adapter_folder} (language model LoRA only)")
    console.print(f"how to load and serve it: {result.out / 'README.md'}")
