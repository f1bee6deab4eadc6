"""The recipes a user can name: those in ./recipes/ of the current folder first, then the shipped ones (a name
found in both is the local file)."""

from __future__ import annotations

from pathlib import Path

from ecomtune.config.recipe_files import SHIPPED_RECIPES


def recipe_dirs() -> list[Path]:
    """./recipes/ (when there is one) and the package's recipes, each once."""
    return list(dict.fromkeys(p.resolve() for p in (Path.cwd() / "recipes", SHIPPED_RECIPES) if p.is_dir()))


def recipe_headlines() -> list[tuple[str, str]]:
    """(where the recipe is, the first line of its header) for each recipe name, the first folder's winning;
    paths under the current folder are shown relative to it."""
    rows, seen = [], set()
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.name in seen:
                continue
            seen.add(path.name)
            lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
            rows.append((str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path),
                         lines[0] if lines else ""))
    return rows
