"""The package's layers point down: a module imports only from layers below its own (or its own package).

Layers, top to bottom (README "Development" and docs/contributing.md name them): `ecomtune/__init__.py` (the
lazy Python API) and `__main__.py` -> cli/ -> studies/ (the demo, the strategy study) -> train/ bench/ curate/
export/ -> synth/ -> infer/ -> data/ runs/ -> backbones/ -> tasks/ config/ -> errors.py runtime.py
library_output.py.
Every import counts: module level, inside functions (lazy) and under TYPE_CHECKING, because each one is a
dependency someone has to understand. The test parses the source, so it imports nothing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecomtune"

# Top to bottom; units in one row share a layer.
LAYERS: list[tuple[str, ...]] = [
    ("ecomtune", "__main__", "api"),
    ("cli",),
    ("studies",),
    ("train", "bench", "curate", "export"),
    ("synth",),
    ("infer",),
    ("data", "runs"),
    ("backbones",),
    ("tasks", "config"),
    ("errors", "runtime", "library_output", "registries"),
]
# Imports between units of one layer that are allowed: (importer, imported). Kept short and acyclic.
# The package's own names resolve to the Python API on first use (`ecomtune/__init__.py` -> api).
SAME_LAYER = {("data", "runs"), ("runtime", "errors"), ("__main__", "ecomtune"), ("ecomtune", "api")}

LEVEL = {unit: depth for depth, row in enumerate(LAYERS) for unit in row}


def _unit(module: str) -> str:
    """`ecomtune.data.sources.hf` -> `data`; `ecomtune` -> `ecomtune`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported ecomtune module) for every import in the file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(node.lineno, target)]
            # `from ecomtune import tasks` names a unit through the root package.
            if target == "ecomtune":
                found += [(node.lineno, f"ecomtune.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "ecomtune" or name.startswith("ecomtune.")]


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importer unit, imported unit) for every import that crosses units."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _unit(_module_name(path))
        for line, target in _imports(path):
            imported = _unit(target)
            if imported != importer and target != "ecomtune":
                edges.append((str(path.relative_to(PACKAGE.parent)), line, importer, imported))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    missing = sorted(units - set(LEVEL))
    assert not missing, f"give these a row in LAYERS: {missing}"


def test_no_import_points_up_or_sideways():
    wrong = []
    for where, line, importer, imported in _edges():
        if imported not in LEVEL or importer not in LEVEL:
            continue  # reported by test_every_unit_has_a_layer
        below = LEVEL[imported] > LEVEL[importer]
        if not below and (importer, imported) not in SAME_LAYER:
            wrong.append(f"{where}:{line}: {importer} imports {imported}")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for _, _, importer, imported in _edges():
        graph.setdefault(importer, set()).add(imported)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not cycles, f"units that reach each other through imports: {cycles}"


@pytest.mark.parametrize("source, expected", [
    ("from ecomtune.bench import runner\n", [(1, "ecomtune.bench")]),
    ("def f():\n    from ..tasks import prompts\n", [(2, "ecomtune.tasks")]),
    ("from ecomtune import tasks\n", [(1, "ecomtune"), (1, "ecomtune.tasks")]),
])
def test_imports_are_read_whatever_their_form(tmp_path, source, expected, monkeypatch):
    package = tmp_path / "ecomtune" / "curate"
    package.mkdir(parents=True)
    file = package / "x.py"
    file.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ecomtune")
    assert [(line, name if name == "ecomtune" else ".".join(name.split(".")[:2])) for line, name in _imports(file)] \
        == expected
