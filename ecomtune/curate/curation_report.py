"""The curation report: per aspect what cleaning dropped and what verification kept, contradicted or found not
visible, with examples; throughput per step; and, when the truth is known, how well wrong values were removed
and right ones kept. `build_report` makes the JSON; `render_report` prints it as tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from ecomtune.curate.clean import ACTIONS
from ecomtune.curate.truth import shares
from ecomtune.curate.verify import VERDICTS

EXAMPLES_PER_VERDICT = 2


def aspect_counts(clean_lines: list[dict], verdict_lines: list[dict]) -> dict[str, dict[str, int]]:
    """Per canonical aspect: how often sellers gave it, what cleaning did (`clean_<action>`, ACTIONS) and how
    often each verdict was given."""
    counts: dict[str, Counter] = {}
    for line in clean_lines:
        for entry in line["log"]:
            row = counts.setdefault(entry["aspect"], Counter())
            row["given"] += 1
            row[f"clean_{entry['action']}"] += 1
    for line in verdict_lines:
        for verdict in line["verdicts"]:
            counts.setdefault(verdict["aspect"], Counter())[verdict["verdict"]] += 1
    keys = ("given", *(f"clean_{action}" for action in ACTIONS), *VERDICTS)
    return {aspect: {k: row.get(k, 0) for k in keys} for aspect, row in sorted(counts.items(),
                                                                              key=lambda kv: -kv[1]["given"])}


def examples(verdict_lines: list[dict]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """A few listings per aspect and verdict, with the value and the evidence, to read what the verifier did."""
    found: dict[str, dict[str, list[dict[str, str]]]] = {}
    for line in verdict_lines:
        for v in line["verdicts"]:
            bucket = found.setdefault(v["aspect"], {}).setdefault(v["verdict"], [])
            if len(bucket) < EXAMPLES_PER_VERDICT:
                bucket.append({"id": line["id"], "value": v["value"], "evidence": v["evidence"]})
    return found


def build_report(settings: dict[str, Any], clean_lines: list[dict], verdict_lines: list[dict],
                 throughput: dict[str, dict[str, Any]], bad_rows: list[dict[str, str]], outputs: dict[str, str],
                 instructions: int, truth: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    report = {"settings": settings, "listings": len(clean_lines), "bad_rows": bad_rows,
              "aspects": aspect_counts(clean_lines, verdict_lines), "examples": examples(verdict_lines),
              "throughput": throughput, "instructions": instructions, "outputs": outputs}
    if truth is not None:
        report["truth"] = {aspect: {**row, **shares(row)} for aspect, row in truth.items()}
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def aspect_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"ecomtune curate: {report['listings']} listings, verified by {report['settings']['verify']}")
    for column in ("aspect", "given", "dropped in clean", "kept", "contradicted", "not visible", "unparsed"):
        table.add_column(column, justify="left" if column == "aspect" else "right")
    for aspect, row in report["aspects"].items():
        dropped = row["given"] - row["clean_kept"]
        table.add_row(aspect, str(row["given"]), str(dropped), str(row["supported"]), str(row["contradicted"]),
                      str(row["not_visible"]), str(row["unparsed"]))
    return table


def truth_table(report: dict[str, Any]) -> Table:
    table = Table(title="against the truth: wrong seller values removed, right ones kept, per aspect")
    for column in ("aspect", "wrong", "wrong removed", "right", "right kept", "not visible", "not visible removed",
                   "boilerplate removed"):
        table.add_column(column, justify="left" if column == "aspect" else "right")
    for aspect, row in report["truth"].items():
        table.add_row(aspect, str(row["wrong"]), _pct(row["wrong_removed_share"]), str(row["right"]),
                      _pct(row["right_kept_share"]), str(row["not_visible"]), _pct(row["not_visible_removed_share"]),
                      _pct(row["boilerplate_removed_share"]))
    return table


def throughput_table(report: dict[str, Any]) -> Table:
    table = Table(title="throughput (this run)")
    for column in ("step", "model", "listings done", "already done", "generated", "cached", "seconds", "listings/s"):
        table.add_column(column, justify="left" if column in ("step", "model") else "right")
    for step, row in report["throughput"].items():
        rate = row["done"] / row["seconds"] if row["seconds"] and row["done"] else None
        table.add_row(step, row.get("model") or "-", str(row["done"]), str(row["skipped"]), str(row["generated"]),
                      str(row["cached"]), f"{row['seconds']:.1f}", "-" if rate is None else f"{rate:.2f}")
    return table


def render_report(report: dict[str, Any], console: Console) -> None:
    """The tables, the bad rows left out, a few examples, and where the outputs are."""
    console.print(aspect_table(report))
    if "truth" in report:
        console.print(truth_table(report))
    console.print(throughput_table(report))
    for row in report["bad_rows"][:10]:
        console.print(f"left out: {row['where']}: {row['what']}", markup=False, highlight=False, soft_wrap=True)
    for aspect, verdicts in list(report["examples"].items())[:4]:
        for verdict, found in verdicts.items():
            first = found[0]
            console.print(f"e.g. {aspect} {verdict}: {first['id']} {first['value']!r} ({first['evidence']})",
                          markup=False, highlight=False, soft_wrap=True)
    console.print(f"{report['instructions']} instructions -> {report['outputs']['instruct']}", soft_wrap=True)
    if report["outputs"].get("captions"):
        console.print(f"captions -> {report['outputs']['captions']}", soft_wrap=True)
    console.print(f"report -> {report['outputs']['report']}", soft_wrap=True)
