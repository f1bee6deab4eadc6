"""What every command shares: the two consoles (tables and results on stdout; progress, warnings and errors on
stderr) and the options several commands take with the same meaning."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)
stdout = Console()

RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe YAML (see `ecomtune recipes`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key: --set sft.lora.r=8 (repeatable).")
BackboneOpt = typer.Option(None, "--backbone", "-b", help="Alias, hub id or local folder (overrides the recipe).")
DataOpt = typer.Option(None, "--data", "-d", help="The stage's data (overrides the recipe): a JSONL / JSON file, a "
                       "dataset folder, a hub dataset id or a LLaVA-OneVision mixture YAML.")
OutputOpt = typer.Option(..., "--output", "-o", help="Run folder to write.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
ImagesOpt = typer.Option(None, "--images", help="Multi-image strategy: all, primary, grid or crops "
                         "(default: the recipe's; for a run, the strategy it trained with).")
MaxImagesOpt = typer.Option(None, "--max-images", min=1, help="Cap on images per item (all, crops).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a non-empty output folder (the old one is replaced "
                            "only once the new one is complete).")
