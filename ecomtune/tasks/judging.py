"""Judging Multi-image Item Intelligence: each predicted field is verifiable-correct, verifiable-incorrect, or
unverifiable (the reference says nothing about it), as in the paper.

What a judge is and how its verdicts are counted belongs to the task, so it lives here as pure functions:
the judge protocol, the deterministic `FieldMatchJudge` (the default: the field exists in the reference and the
normalised values match), the one-word question a model judge is asked and how its reply is read. Judges that
call a model or an endpoint are `ecomtune.bench.judges`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from ecomtune.tasks.metrics import flatten, normalise, values_match

Verdict = Literal["correct", "incorrect", "unverifiable"]
VERDICTS: tuple[Verdict, ...] = ("correct", "incorrect", "unverifiable")


class Judge(Protocol):
    name: str

    def judge(self, key: str, value: object, reference: Mapping[str, object]) -> Verdict: ...


class FieldMatchJudge:
    name = "field-match"

    def judge(self, key: str, value: object, reference: Mapping[str, object]) -> Verdict:
        if key not in reference:
            return "unverifiable"
        return "correct" if values_match(value, reference[key]) else "incorrect"


def judge_prompt(key: str, value: object, reference: Mapping[str, object]) -> str:
    facts = "\n".join(f"- {k}: {v}" for k, v in reference.items())
    return (f"Reference facts about a product:\n{facts}\n\nA model claims: {key} = {value}\n"
            "Is the claim correct, incorrect (the facts say otherwise), or unverifiable (the facts do not cover "
            "it)? Answer with one word: correct, incorrect or unverifiable.")


def parse_verdict(text: str) -> Verdict:
    """The first verdict word in a judge's reply; anything else counts as unverifiable."""
    words = normalise(text).replace(",", " ").split()
    return next((w for w in words if w in VERDICTS), "unverifiable")  # type: ignore[return-value]


def judge_item(judge: Judge, predicted: Mapping, reference: Mapping) -> dict[str, int]:
    """Verdict counts for one item, over its flattened fields (section.field)."""
    ref = flatten(reference)
    counts = {v: 0 for v in VERDICTS}
    for key, value in flatten(predicted).items():
        counts[judge.judge(key, value, ref)] += 1
    counts["reference"] = len(ref)
    return counts
