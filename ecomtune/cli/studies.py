"""`ecomtune demo`: the whole recipe end to end on a synthetic catalog (the strategy study is `ecomtune bench
strategies`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ecomtune.cli.options import OverwriteOpt, SetOpt
from ecomtune.library_output import quiet_libraries


def demo(output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Folder for the demo's runs."),
         seed: int = typer.Option(0, help="Seed of the synthetic catalog."),
         items: int = typer.Option(480, "--items", min=12, help="Catalog size (a quarter is held out)."),
         sets: list[str] = SetOpt, overwrite: bool = OverwriteOpt) -> None:
    """Run the recipe end to end on the embedded default: tiny Qwen2-VL, synthetic catalog, CPU."""
    quiet_libraries()
    from ecomtune.studies.demo import run_demo

    run_demo(output, seed, items, overwrite, sets)
