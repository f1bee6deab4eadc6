"""`ecomtune recipes` and `ecomtune validate`: which recipes there are, and whether one is valid."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ecomtune.cli.options import SetOpt, stdout


def recipes() -> None:
    """List the shipped recipes with the first line of each header."""
    from ecomtune.config.recipe_list import recipe_headlines

    table = Table(title="recipes")
    table.add_column("recipe")
    table.add_column("what it is")
    for where, headline in recipe_headlines():
        table.add_row(where, headline)
    stdout.print(table)


def validate(recipe: Path = typer.Argument(..., help="Recipe YAML to check."), sets: list[str] = SetOpt) -> None:
    """Check a recipe: every problem (unknown key, wrong type, impossible combination) at once."""
    from ecomtune.config.recipe_files import load_recipe

    load_recipe(recipe, sets)
    stdout.print(f"[green]{recipe}: valid[/green]")
