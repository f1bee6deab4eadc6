"""The benchmark tasks' scorers, answer parsers and per-example verdicts, as pure functions.

A scorer turns records and a model's answers into `(scores, details)`: the scores a results file keeps per task,
and one detail per record (what the HTML report's example cards and `passed` read). Scoring never raises on a bad
answer: it scores 0 and is counted (parse rates are reported).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ecomtune.tasks import metrics
from ecomtune.tasks.judging import VERDICTS, Judge, judge_item

Scored = tuple[dict[str, Any], list[dict[str, Any]]]  # (scores, per-example details)


def _grouped_accuracy(rows: list[tuple[str, bool]]) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for key, ok in rows:
        groups[key].append(ok)
    return {key: metrics.accuracy(values) for key, values in sorted(groups.items())}


def score_aspects(records: list[dict], answers: list[str], judge: Judge) -> Scored:
    slots, by_subset, by_aspect, details, parsed = [], [], [], [], 0
    for record, answer in zip(records, answers, strict=True):
        predicted = {metrics.normalise_key(k): v for k, v in metrics.parse_key_values(answer).items()}
        parsed += bool(predicted)
        hits = {}
        for aspect, value in record["aspects"].items():
            ok = metrics.values_match(predicted.get(metrics.normalise_key(aspect)), value)
            hits[aspect] = ok
            slots.append(ok)
            by_subset.append((record.get("subset", "all"), ok))
            by_aspect.append((aspect, ok))
        details.append({"id": record["id"], "correct": hits})
    scores = {"accuracy": metrics.accuracy(slots), "parse_rate": parsed / len(records) if records else 0.0,
              "by_subset": _grouped_accuracy(by_subset), "by_aspect": _grouped_accuracy(by_aspect)}
    return scores, details


def score_choices(records: list[dict], answers: list[str], judge: Judge) -> Scored:
    rows, details, unparsed = [], [], 0
    for record, answer in zip(records, answers, strict=True):
        picked = metrics.pick_option(answer, record["options"])
        unparsed += picked is None
        ok = picked is not None and metrics.normalise(picked) == metrics.normalise(record["answer"])
        rows.append((record, ok))
        details.append({"id": record["id"], "picked": picked, "correct": ok})
    by_attribute: dict[str, dict[str, float]] = {}
    for attribute in sorted({r["attribute"] for r, _ in rows}):
        subset = [(r, ok) for r, ok in rows if r["attribute"] == attribute]
        by_attribute[attribute] = {
            "accuracy": metrics.accuracy(ok for _, ok in subset),
            "majority_baseline": metrics.majority_baseline([r["answer"] for r, _ in subset]),
            "random_baseline": metrics.random_baseline([len(r["options"]) for r, _ in subset]),
            "n": len(subset),
        }
    scores = {
        "accuracy": metrics.accuracy(ok for _, ok in rows),
        "unparsed_rate": unparsed / len(records) if records else 0.0,
        "by_attribute": by_attribute,
        "by_subset": _grouped_accuracy([(f"{r.get('subset', 'all')}/{r['attribute']}", ok) for r, ok in rows]),
    }
    return scores, details


def score_extraction(records: list[dict], answers: list[str], judge: Judge) -> Scored:
    totals, details, parsed = [], [], 0
    for record, answer in zip(records, answers, strict=True):
        predicted = metrics.parse_json_object(answer)
        parsed += predicted is not None
        kv = metrics.score_key_values(predicted or {}, record["attributes"])
        totals.append(kv)
        details.append({"id": record["id"], "parsed": predicted is not None, **kv.__dict__})
    total = metrics.sum_scores(totals)
    scores = {"json_parse_rate": parsed / len(records) if records else 0.0,
              **metrics.prf(total.true_positives, total.predicted, total.reference).as_dict(),
              "hallucination_rate": total.hallucinated / total.predicted if total.predicted else 0.0}
    return scores, details


def score_compliance(records: list[dict], answers: list[str], judge: Judge) -> Scored:
    counts = dict.fromkeys((*VERDICTS, "reference"), 0)
    details, parsed = [], 0
    for record, answer in zip(records, answers, strict=True):
        predicted = metrics.parse_json_object(answer)
        parsed += predicted is not None
        item = judge_item(judge, predicted or {}, record["fields"])
        for key, value in item.items():
            counts[key] += value
        details.append({"id": record["id"], "parsed": predicted is not None, **item})
    predicted_fields = counts["correct"] + counts["incorrect"] + counts["unverifiable"]
    result = metrics.prf(counts["correct"], predicted_fields, counts["reference"])

    def share(n: int) -> float:
        return n / predicted_fields if predicted_fields else 0.0

    scores = {"json_parse_rate": parsed / len(records) if records else 0.0, **result.as_dict(),
              "verifiable_correct": share(counts["correct"]), "verifiable_incorrect": share(counts["incorrect"]),
              "unverifiable": share(counts["unverifiable"]), "judge": judge.name}
    return scores, details


def parse_choice(record: dict, answer: str) -> str | None:
    return metrics.pick_option(answer, record["options"])


def parse_json(record: dict, answer: str) -> dict | None:
    return metrics.parse_json_object(answer)


def all_aspects_right(example: dict[str, Any]) -> bool:
    """Aspect Prediction: every asked aspect's value matched."""
    return all(example.get("correct", {}).values())


def choice_right(example: dict[str, Any]) -> bool:
    """A choice question: the picked option is the answer."""
    return bool(example.get("correct"))


def extraction_exact(example: dict[str, Any]) -> bool:
    """Attribute extraction: parsed, every reference attribute found, nothing made up."""
    return (example.get("parsed", False) and example.get("true_positives") == example.get("reference")
            and not example.get("hallucinated"))


def compliance_exact(example: dict[str, Any]) -> bool:
    """Item intelligence: parsed, every reference field judged correct, none incorrect."""
    return (example.get("parsed", False) and example.get("correct") == example.get("reference")
            and not example.get("incorrect"))
