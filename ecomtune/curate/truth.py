"""Scoring a curation against known truth (the synthetic catalog's `listings-truth.jsonl`): per aspect, the share
of wrong seller values it removed, of right ones it kept, and of values no picture shows it removed.

An aspect counts as removed when cleaning dropped it or verification did not support it (contradicted, not
visible or unparsed), and as kept only when it was supported. The truth names aspects as the seller wrote them,
so it is joined to the clean log by the written name, with no reliance on cleaning's own renaming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecomtune.data.jsonl import read_jsonl
from ecomtune.errors import DataError, Problem

STATUSES = ("right", "wrong", "not_visible", "boilerplate")


def read_truth(path: Path) -> dict[str, list[dict[str, Any]]]:
    """id -> the truth entries of that listing (name, aspect, value, truth, status)."""
    truth, problems = {}, []
    for where, record, problem in read_jsonl(Path(path)):
        entries = record.get("aspects") if isinstance(record, dict) else None
        if problem is None and (not isinstance(entries, list) or "id" not in record
                                or not all(isinstance(e, dict) and e.get("status") in STATUSES for e in entries)):
            problem = Problem("a truth line needs an 'id' and 'aspects': [{name, status}, ...] with a status of "
                              f"{', '.join(STATUSES)}", where)
        if problem is not None:
            problems.append(problem)
            continue
        truth[str(record["id"])] = entries
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s) in the truth file", problems[:20],
                        fix="pass the listings-truth.jsonl that `ecomtune synth` wrote beside the listings")
    return truth


def outcome(name: str, clean_log: list[dict], verdicts: list[dict]) -> str:
    """What curation did to the aspect the seller wrote as `name`: kept, or why it was removed."""
    entry = next((e for e in clean_log if e["name"] == name), None)
    if entry is None or entry["action"] != "kept":
        return "dropped in clean"
    verdict = next((v["verdict"] for v in verdicts if v["aspect"] == entry["aspect"]), "unparsed")
    return "kept" if verdict == "supported" else verdict


def score_against_truth(truth: dict[str, list[dict]], clean: dict[str, dict], verdicts: dict[str, dict]
                        ) -> dict[str, dict[str, int]]:
    """Per aspect (canonical name as the truth gives it): counts of each status and of those kept. Only listings
    this curation finished are scored."""
    table: dict[str, dict[str, int]] = {}
    for listing_id, entries in truth.items():
        if listing_id not in clean or listing_id not in verdicts:
            continue
        for entry in entries:
            row = table.setdefault(entry["aspect"], {f"{s}{k}": 0 for s in STATUSES for k in ("", "_kept")})
            row[entry["status"]] += 1
            kept = outcome(entry["name"], clean[listing_id]["log"], verdicts[listing_id]["verdicts"]) == "kept"
            row[f"{entry['status']}_kept"] += kept
    return dict(sorted(table.items()))


def shares(row: dict[str, int]) -> dict[str, float | None]:
    """The shares of wrong values removed, right ones kept and not-visible ones removed (None where there were
    none)."""
    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {"wrong_removed_share": share(row["wrong"] - row["wrong_kept"], row["wrong"]),
            "right_kept_share": share(row["right_kept"], row["right"]),
            "not_visible_removed_share": share(row["not_visible"] - row["not_visible_kept"], row["not_visible"]),
            "boilerplate_removed_share": share(row["boilerplate"] - row["boilerplate_kept"], row["boilerplate"])}
