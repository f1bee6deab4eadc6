"""Metrics as pure functions: normalisation, tolerant JSON parsing, matching and scores.

Nothing here touches a model or a file. An unparseable answer is a value (None / empty dict) that
scores 0 and is counted, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from ecomtune.tasks.lenient_json import parse_json_value

# Values that mean the same thing in listings; both sides are mapped to the left-hand form.
SYNONYMS: dict[str, str] = {
    "gray": "grey", "navy blue": "navy", "tee": "t-shirt", "tshirt": "t-shirt", "t shirt": "t-shirt",
    "short sleeved": "short sleeve", "short sleeves": "short sleeve", "long sleeved": "long sleeve",
    "long sleeves": "long sleeve", "no sleeves": "sleeveless", "crewneck": "crew neck", "crew": "crew neck",
    "vneck": "v-neck", "v neck": "v-neck", "collar": "collared", "stripes": "striped", "stripe": "striped",
    "dots": "dotted", "polka dot": "dotted", "polka dots": "dotted", "checks": "checked", "check": "checked",
    "checkered": "checked", "plain": "solid", "mens": "men", "men's": "men", "womens": "women",
    "women's": "women", "uk": "united kingdom", "usa": "united states", "us": "united states",
}
_PUNCT = re.compile(r"[^\w\s\-'.+]")
_SPACE = re.compile(r"\s+")
_MULTI = re.compile(r"\s*(?:,|;|/|&|\band\b)\s*")


def _canonical(part: str) -> str:
    """One value, cleaned and mapped through SYNONYMS (hyphen and space spellings both looked up)."""
    part = _SPACE.sub(" ", _PUNCT.sub(" ", part)).strip(" .'")
    for candidate in (part, part.replace("-", " "), part.replace(" ", "-")):
        if candidate in SYNONYMS:
            return SYNONYMS[candidate]
    return part


def normalise(value: object) -> str:
    """Case, spacing, punctuation and synonyms folded; multi-value answers ("Wool, Cotton") sorted so that
    order does not matter. `normalise("Cotton and WOOL.") == normalise("wool, cotton") == "cotton, wool"`."""
    if value is None:
        return ""
    text = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple, set)) else str(value)
    parts = {_canonical(p) for p in _MULTI.split(text.lower())}
    return ", ".join(sorted(p for p in parts if p))


def normalise_key(key: object) -> str:
    """Attribute names: "Sleeve Length", "sleeve_length" and "sleeve-length" are one key."""
    return _SPACE.sub(" ", re.sub(r"[_\-]+", " ", str(key).lower())).strip()


def values_match(predicted: object, reference: object) -> bool:
    return bool(normalise(reference)) and normalise(predicted) == normalise(reference)


def parse_json_object(text: str) -> dict | None:
    """The first JSON object in a model's answer, repaired when possible. Duplicate keys: the last wins."""
    value = parse_json_value(text, dict)
    return value if isinstance(value, dict) else None


def parse_key_values(text: str) -> dict[str, str]:
    """A JSON object, or `Key: value` lines / `Key: value; Key: value` as a fallback."""
    parsed = parse_json_object(text)
    if parsed is not None:
        return {str(k): v for k, v in parsed.items()}
    found: dict[str, str] = {}
    for chunk in re.split(r"[;\n]", text or ""):
        key, sep, value = chunk.partition(":")
        if sep and key.strip() and value.strip():
            found[key.strip()] = value.strip()
    return found


def pick_option(text: str, options: Iterable[str]) -> str | None:
    """The option a free-text answer names: exact after normalisation, else the single option the answer
    contains (longest first, so "long sleeve" is not read as "sleeve"). None when ambiguous or absent."""
    options = list(options)
    answer = normalise(text)
    for option in options:
        if normalise(option) == answer:
            return option
    contained = [o for o in sorted(options, key=len, reverse=True) if normalise(o) and normalise(o) in answer]
    if not contained:
        return None
    best = contained[0]
    others = [o for o in contained[1:] if normalise(o) not in normalise(best)]
    return None if others else best


def accuracy(correct: Iterable[bool]) -> float:
    values = list(correct)
    return sum(values) / len(values) if values else 0.0


def majority_baseline(answers: list[str]) -> float:
    """Accuracy of always answering the most frequent reference answer."""
    if not answers:
        return 0.0
    counts: dict[str, int] = {}
    for answer in answers:
        counts[normalise(answer)] = counts.get(normalise(answer), 0) + 1
    return max(counts.values()) / len(answers)


def random_baseline(option_counts: list[int]) -> float:
    """Expected accuracy of picking uniformly among the given options."""
    return sum(1.0 / n for n in option_counts if n) / len(option_counts) if option_counts else 0.0


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def prf(true_positives: int, predicted: int, reference: int) -> PRF:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / reference if reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested sections to flat keys: {"origin": {"country": "China"}} -> {"origin.country": "China"}."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{normalise_key(key)}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class KeyValueScore:
    """Key-value matching of one predicted dict against its reference."""

    true_positives: int
    predicted: int
    reference: int
    hallucinated: int  # predicted keys with no reference key at all


def score_key_values(predicted: Mapping, reference: Mapping) -> KeyValueScore:
    pred, ref = flatten(predicted), flatten(reference)
    hits = sum(1 for k, v in pred.items() if k in ref and values_match(v, ref[k]))
    return KeyValueScore(hits, len(pred), len(ref), sum(1 for k in pred if k not in ref))


def sum_scores(scores: Iterable[KeyValueScore]) -> KeyValueScore:
    total = [0, 0, 0, 0]
    for s in scores:
        total = [total[0] + s.true_positives, total[1] + s.predicted, total[2] + s.reference,
                 total[3] + s.hallucinated]
    return KeyValueScore(*total)
