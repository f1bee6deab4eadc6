"""`ecomtune export`: a finished run as a model folder that plain transformers (or vLLM) load."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer

from ecomtune.cli.options import OverwriteOpt, console, stdout
from ecomtune.library_output import quiet_libraries


def export(
    run: Path = typer.Argument(..., help="A finished run folder (align, mid or sft)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the exported model to."),
    fmt: str = typer.Option("merged", "--format", help="merged: one model folder (transformers, lmms-eval, vLLM); "
                            "vllm: base with the projector baked in + a language-model-only LoRA adapter."),
    merge_base: str = typer.Option("dequantized", "--merge-base", help="dequantized: the 4-bit base the adapter "
                                   "trained on, dequantized (reproduces the run); pristine: the base's original "
                                   "weights (no 4-bit rounding, drifts from the run by the quantization error)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
    samples: int = typer.Option(4, "--samples", min=1, help="Rendered product images to verify on."),
    image: list[Path] = typer.Option(None, "--image", help="Verify on this image instead (repeatable)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """A merged model (or vLLM's base + adapter layout) that plain transformers load, verified against the run."""
    quiet_libraries()
    from ecomtune.export.merge import ExportDtype, MergeBase
    from ecomtune.export.runner import ExportFormat, run_export
    from ecomtune.export.summary import print_export

    choices = {"--format": (fmt, get_args(ExportFormat)), "--merge-base": (merge_base, get_args(MergeBase)),
               "--dtype": (dtype, get_args(ExportDtype))}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: choose from {', '.join(allowed)}", param_hint=option)
    with console.status("exporting: merge, save, verify against the run"):
        result = run_export(run, out, fmt, merge_base, dtype, samples, image or None, overwrite)  # type: ignore[arg-type]
    print_export(result, stdout)
