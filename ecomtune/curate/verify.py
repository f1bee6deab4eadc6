"""Step 3, verify: for each cleaned aspect a verdict, `supported`, `contradicted` or `not_visible`, with evidence.

Two ways, as the listing's images allow:
- `caption` (the paper's): an LLM reads the step-2 caption and the aspects, and answers one JSON object with a
  verdict and the deciding words per aspect. It can only keep what the caption mentions.
- `vqa`: a VLM is asked about the primary image directly, with the benchmark's own questions: a choice among
  the values sellers use for that aspect (`choice_prompt`) and a yes/no question on the seller's value
  (`yes_no_prompt`). The aspect is supported when both answers agree with the seller, contradicted when both
  disagree, and not visible when they disagree with each other: a model that cannot see the aspect answers two
  phrasings of one question inconsistently. An aspect without options gets the yes/no question alone.
Answers are read tolerantly (repaired JSON, free-text options and yes/no words); what cannot be read is the
verdict `unparsed`: counted in the report, never kept, never a crash.
"""

from __future__ import annotations

import re

from ecomtune.curate.clean import aspect_name
from ecomtune.curate.generation import Request
from ecomtune.tasks import prompts
from ecomtune.tasks.metrics import normalise, normalise_key, parse_key_values, pick_option

VERDICTS = ("supported", "contradicted", "not_visible", "unparsed")
MODES = ("caption", "vqa")
# Words a verifier may use for each verdict; the earliest in an answer wins, so "not supported" is not read as
# "supported" (a claim the caption does not back is not kept, whatever the reason).
VERDICT_WORDS = {
    "not supported": "not_visible", "unsupported": "not_visible", "no evidence": "not_visible",
    "not visible": "not_visible", "not shown": "not_visible", "not mentioned": "not_visible",
    "cannot tell": "not_visible", "can't tell": "not_visible", "unverifiable": "not_visible",
    "unknown": "not_visible", "supported": "supported", "supports": "supported", "consistent": "supported",
    "confirmed": "supported", "contradicted": "contradicted", "contradicts": "contradicted",
    "inconsistent": "contradicted", "wrong": "contradicted",
}
YES, NO = ("yes", "true", "correct"), ("no", "false", "incorrect")


def verify_prompt(caption: str, aspects: dict[str, str]) -> str:
    """The caption-reading question: every aspect at once, one JSON object back."""
    claims = "\n".join(f"- {name}: {value}" for name, value in aspects.items())
    example = ", ".join(f'"{name}": {{"verdict": "...", "evidence": "..."}}' for name in list(aspects)[:2])
    return (f"A product photo is described as follows:\n{caption}\n\nThe seller claims:\n{claims}\n\n"
            "For each claim, say whether the description supports it (supported), contradicts it (contradicted) "
            "or does not show it (not_visible), quoting the words of the description that decide it as evidence. "
            f"Answer only with JSON: {{{example}}}.")


NEGATIONS = ("not", "no", "never")


def parse_verdict(text: object) -> str | None:
    """The verdict a free-text answer names first, or None. A verdict word right after a negation ("not
    consistent", "not contradicted") decides nothing either way: not visible."""
    words = " " + re.sub(r"[^a-z' ]+", " ", str(text).lower().replace("_", " ")) + " "
    found = []
    for word, verdict in VERDICT_WORDS.items():
        at = words.find(f" {word} ")
        if at < 0:
            continue
        before = words[:at].split()
        negated = bool(before) and before[-1] in NEGATIONS and not word.startswith(NEGATIONS)
        found.append((at - (len(before[-1]) + 1 if negated else 0), "not_visible" if negated else verdict))
    return min(found)[1] if found else None


def parse_yes_no(text: str) -> bool | None:
    words = normalise(text).replace(",", " ").split()
    first = next((w for w in words if w in YES + NO), None)
    return None if first is None else first in YES


def _entry(aspect: str, value: str, verdict: str, evidence: str) -> dict[str, str]:
    return {"aspect": aspect, "value": value, "verdict": verdict, "evidence": evidence}


def caption_verdicts(aspects: dict[str, str], answer: str) -> list[dict[str, str]]:
    """One entry per aspect from the LLM's answer: a JSON object (repaired) or `name: verdict` lines, names
    matched however the answer spells them; an aspect the answer leaves out is `unparsed`."""
    found = {aspect_name(k): v for k, v in parse_key_values(answer).items()}
    entries = []
    for aspect, value in aspects.items():
        said = found.get(aspect_name(aspect))
        detail = said if isinstance(said, dict) else {"verdict": said}
        verdict = parse_verdict(detail.get("verdict", "")) if said is not None else None
        entries.append(_entry(aspect, value, verdict or "unparsed", str(detail.get("evidence") or "")[:200]))
    return entries


def vqa_requests(image: str, aspects: dict[str, str], options: dict[str, list[str]]) -> list[Request]:
    """The questions for every aspect, in order: a choice question (when the aspect has options that include the
    seller's value) then the yes/no question."""
    requests = []
    for aspect, value in aspects.items():
        if value in options.get(aspect, ()):
            requests.append(Request(prompts.choice_prompt(aspect, options[aspect]), (image,)))
        requests.append(Request(prompts.yes_no_prompt(aspect, value), (image,)))
    return requests


def _combine(value: str, picked: str | None, said_yes: bool | None, asked_choice: bool) -> str:
    """The verdict from the two answers (see the module docstring)."""
    votes = [] if said_yes is None else ["supported" if said_yes else "contradicted"]
    if asked_choice and picked is not None:
        votes.append("supported" if normalise(picked) == normalise(value) else "contradicted")
    if not votes:
        return "unparsed"
    if asked_choice and len(votes) < 2:
        return "not_visible"
    return votes[0] if len(set(votes)) == 1 else "not_visible"


def vqa_verdicts(aspects: dict[str, str], options: dict[str, list[str]], answers: list[str]) -> list[dict[str, str]]:
    """One entry per aspect from the answers to `vqa_requests` (same order)."""
    entries, used = [], 0
    for aspect, value in aspects.items():
        asked_choice = value in options.get(aspect, ())
        picked = pick_option(answers[used], options[aspect]) if asked_choice else None
        said = answers[used + asked_choice]
        used += 1 + asked_choice
        evidence = (f"chose {picked or answers[used - 2]!r}; " if asked_choice else "") + \
            f"asked whether {normalise_key(aspect)} is {value!r}: {said!r}"
        entries.append(_entry(aspect, value, _combine(value, picked, parse_yes_no(said), asked_choice),
                              evidence[:200]))
    return entries
