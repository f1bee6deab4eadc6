"""The benchmark tasks: each turns records into prompts, parses answers, and scores them.

Record formats (one JSON object per line in `<data>/<task>.jsonl`; image paths relative to the file):
- aspect-prediction: `{"id", "images", "subset", "aspects": {name: value}, "title"?, "category"?}`
- deep-fashion: `{"id", "images", "subset", "attribute", "options": [...], "answer"}`
- attribute-extraction: `{"id", "images", "attributes": {name: value}}`
- item-intelligence: `{"id", "images", "category", "fields": {section: {name: value}}}`
- general: `{"id", "images", "attribute" (the skill), "question"?, "options": [...], "answer"}`
Scoring never raises on a bad answer: it scores 0 and is counted (parse rates are reported).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecomtune.bench import metrics, prompts
from ecomtune.bench.judges import VERDICTS, Judge, judge_item

Scored = tuple[dict[str, Any], list[dict[str, Any]]]  # (scores, per-example details)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    max_new_tokens: int
    prompt: Callable[[dict], str]
    score: Callable[[list[dict], list[str], Judge], Scored]
    parse: Callable[[dict, str], Any] = lambda record, answer: answer  # the answer as scoring reads it
    prompt_fields: tuple[str, ...] = ()  # record keys the prompt reads (predict needs only these)
    reference_fields: tuple[str, ...] = ()  # record keys scoring reads (bench needs these too)


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


TASKS: dict[str, Task] = {
    "aspect-prediction": Task(
        "aspect-prediction", "values of named aspects; string match after normalisation", 64,
        lambda r: prompts.aspect_prompt(list(r["aspects"]), r.get("title"), r.get("category")), score_aspects,
        lambda r, a: metrics.parse_key_values(a) or None, prompt_fields=("aspects",), reference_fields=("aspects",)),
    "deep-fashion": Task(
        "deep-fashion", "pick the attribute value from given options; accuracy vs baselines", 8,
        lambda r: prompts.choice_prompt(r["attribute"], r["options"]), score_choices, parse_choice,
        prompt_fields=("attribute", "options"), reference_fields=("answer",)),
    "attribute-extraction": Task(
        "attribute-extraction", "schema-free JSON of visible attributes; key-value P/R/F1, hallucinations", 96,
        lambda r: prompts.extraction_prompt(), score_extraction, parse_json, reference_fields=("attributes",)),
    "item-intelligence": Task(
        "item-intelligence", "compliance JSON from all images; judged F1 and verifiability", 192,
        lambda r: prompts.compliance_prompt(len(r["images"])), score_compliance, parse_json,
        reference_fields=("fields",)),
    "general": Task(
        "general", "general skills on generic scenes (count, colour, shape, spatial, existence, reading); accuracy "
        "per skill vs baselines", 6,
        lambda r: prompts.general_prompt(prompts.general_question(r), r["options"]), score_choices, parse_choice,
        prompt_fields=("attribute", "options"), reference_fields=("answer",)),
}

HEADLINE = {"aspect-prediction": "accuracy", "deep-fashion": "accuracy", "attribute-extraction": "f1",
            "item-intelligence": "f1", "general": "accuracy"}
