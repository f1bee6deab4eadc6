"""Rich tables for bench results, and the side-by-side comparison of two results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ecomtune.errors import ConfigError, Problem


def flat_scores(results: dict[str, Any]) -> dict[str, float]:
    """Every numeric score as `task/metric[/group...]` -> value."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not prefix.endswith("/n"):
            flat[prefix] = float(value)

    for task, entry in results["tasks"].items():
        walk(task, entry["scores"])
    return flat


def results_table(results: dict[str, Any], title: str = "ecomtune bench") -> Table:
    """Top-level scores of each task (groups such as by_attribute are in the JSON and `attribute_table`)."""
    table = Table(title=f"{title}: {results['model']['spec']}")
    for column in ("task", "metric", "value", "n", "ex/s"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, entry in results["tasks"].items():
        scalars = [(k, v) for k, v in entry["scores"].items() if isinstance(v, (int, float))]
        for i, (metric, value) in enumerate(scalars):
            table.add_row(task if i == 0 else "", metric, f"{value:.3f}", str(entry["n"]) if i == 0 else "",
                          f"{entry['examples_per_second']}" if i == 0 else "")
    return table


def attribute_table(results: dict[str, Any], task: str) -> Table:
    """Accuracy per attribute beside the majority-class and random-choice baselines."""
    table = Table(title=f"{task} per attribute: {results['model']['spec']}")
    for column in ("attribute", "n", "accuracy", "majority", "random", "beats majority"):
        table.add_column(column, justify="left" if column == "attribute" else "right")
    for attribute, row in results["tasks"][task]["scores"]["by_attribute"].items():
        beats = row["accuracy"] > row["majority_baseline"]
        table.add_row(attribute, str(row["n"]), f"{row['accuracy']:.3f}", f"{row['majority_baseline']:.3f}",
                      f"{row['random_baseline']:.3f}", "[green]yes[/green]" if beats else "[red]no[/red]")
    return table


def columns_table(columns: list[tuple[str, dict[str, Any]]], title: str = "ecomtune bench") -> Table:
    """Several results files side by side (e.g. the base in full precision, in 4-bit, after the recipe): each
    task's headline metric, then each general-skill (`retention`) task per group (the general suite per skill)
    beside its majority and random baselines."""
    from ecomtune.tasks.registry import TASKS, headline_metric, headline_score

    table = Table(title=title)
    table.add_column("task", justify="left")
    table.add_column("metric", justify="left")
    for label, _ in columns:
        table.add_column(label, justify="right")
    table.add_column("majority / random", justify="right")
    tasks = list(dict.fromkeys(t for _, results in columns for t in results["tasks"]))

    def cell(results: dict[str, Any], *path: str) -> str:
        value: Any = results["tasks"]
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for task in tasks:
        table.add_row(task, headline_metric(task), *(number(headline_score(r, task)) for _, r in columns), "")
    for task in (t for t in TASKS.values() if t.retention):
        for group in task.groups:
            names = list(dict.fromkeys(s for _, r in columns
                                       for s in r["tasks"].get(task.name, {}).get("scores", {}).get(group, {})))
            for name in names:
                rows = [r["tasks"].get(task.name, {}).get("scores", {}).get(group, {}).get(name) for _, r in columns]
                known = next((row for row in rows if row), {})
                baselines = (f"{known['majority_baseline']:.3f} / {known['random_baseline']:.3f}"
                             if "majority_baseline" in known else "")
                table.add_row(f"  {task.name}: {name}", f"accuracy (n={known.get('n', '-')})",
                              *(cell(r, task.name, "scores", group, name, "accuracy") for _, r in columns), baselines)
    return table


def load_results(path: Path) -> dict[str, Any]:
    """A results file written by `ecomtune bench --out`, checked for the parts the tables read."""
    fix = "pass files written by `ecomtune bench --out`"
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Results file not found: {path}", fix=fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a results JSON ({getattr(exc, 'msg', None) or exc.reason})",
                          fix=fix) from None
    problems = []
    if not isinstance(results, dict):
        problems.append("the file holds no JSON object")
    else:
        if not isinstance(results.get("model"), dict) or "spec" not in results["model"]:
            problems.append("'model.spec' is missing")
        tasks = results.get("tasks")
        if not isinstance(tasks, dict):
            problems.append("'tasks' is missing or not an object")
        else:
            problems += [f"'tasks.{name}.scores' is missing or not an object" for name, entry in tasks.items()
                         if not isinstance(entry, dict) or not isinstance(entry.get("scores"), dict)]
    if problems:
        raise ConfigError(f"{path} is not a results file of ecomtune bench",
                          [Problem(p, str(path)) for p in problems], fix=fix)
    return results


def compare_table(before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str] = ("A", "B"),
                  exclude: tuple[str, ...] = ()) -> Table:
    """Metrics present in both, side by side, with the difference (B - A). Metrics whose path has a part in
    `exclude` (e.g. "by_subset") are left out."""
    a, b = flat_scores(before), flat_scores(after)
    a = {k: v for k, v in a.items() if not set(k.split("/")) & set(exclude)}
    table = Table(title=f"{labels[0]}: {before['model']['spec']}  vs  {labels[1]}: {after['model']['spec']}")
    for column in ("metric", labels[0], labels[1], "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in [k for k in a if k in b]:
        delta = b[key] - a[key]
        style = "green" if delta > 0 else "red" if delta < 0 else ""
        table.add_row(key, f"{a[key]:.3f}", f"{b[key]:.3f}", f"[{style}]{delta:+.3f}[/{style}]" if style else "+0.000")
    return table


def print_table(table: Table) -> None:
    Console().print(table)


def print_strategy_study(report: dict[str, Any], stdout: Console) -> None:
    """`ecomtune bench strategies`: per strategy, images and visual tokens per item, speed and item F1."""
    table = Table(title=f"multi-image strategies on {report['items']} held-out catalog items (item-intelligence)")
    for column in ("strategy", "images / item", "visual tokens / item", "predict items/s", "F1", "precision",
                   "recall", "JSON parse rate"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, row in report["strategies"].items():
        scores = row["scores"]
        table.add_row(name, f"{row['images_per_item']['median']:g} (max {row['images_per_item']['max']})",
                      f"{row['visual_tokens_per_item']['median']:g} (max {row['visual_tokens_per_item']['max']})",
                      f"{row['predict_items_per_second']:.2f}", f"{scores['f1']:.3f}", f"{scores['precision']:.3f}",
                      f"{scores['recall']:.3f}", f"{scores['json_parse_rate']:.2f}")
    stdout.print(table)
