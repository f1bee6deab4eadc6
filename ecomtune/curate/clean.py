"""Step 1, clean: seller aspects with one name per aspect and comparable values, boilerplate dropped.

Sellers write "Color", "COLOUR" and "Main Colour" for one aspect, "Stripes" for "striped", and fill required
fields with "N/A" or "See description". Verification and training need one spelling, so each aspect name is
folded (case, separators, synonyms) and each value normalised the way the benchmark compares values
(`tasks.metrics.normalise`: case, spacing, synonyms), except identifiers such as brands and sizes, whose case
carries meaning. Every decision is logged per aspect, so the report can say what cleaning removed and why.
Pure functions: nothing here reads a file or a model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ecomtune.tasks.metrics import normalise, normalise_key

# Aspect names that mean one aspect, mapped to ecomtune's name for it (the synthetic catalog's and the bench's).
NAME_SYNONYMS = {
    "color": "colour", "main colour": "colour", "main color": "colour", "colours": "colour", "colors": "colour",
    "size type": "size", "sizes": "size", "sleeve": "sleeve length", "sleeve type": "sleeve length",
    "sleeves": "sleeve length", "neck": "neckline", "neck style": "neckline", "neckline style": "neckline",
    "brand name": "brand", "manufacturer": "brand", "fabric": "material", "main material": "material",
    "outer material": "material", "type": "product type", "item type": "product type", "gender": "department",
}
# Values that say nothing about the product: sellers fill required fields with them.
# Written as `_plain` leaves them (lower case, punctuation as spaces); a value of punctuation alone is one too.
BOILERPLATE = {
    "n a", "na", "none", "null", "nil", "unknown", "does not apply", "not applicable", "see description",
    "see photos", "see pictures", "see images", "see listing", "as pictured", "as shown", "as per photo", "tbd",
    "other", "not specified", "unspecified", "",
}
# Aspects whose values are identifiers: their case is kept (NOVA, XL, iPhone).
CASE_KEPT = {"brand", "model", "model number", "mpn", "size", "upc", "ean", "isbn", "sku"}
MAX_VALUE_CHARS = 80  # longer "values" are prose pasted into a field, not an aspect
_SPACE = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[\W_]+")
ACTIONS = ("kept", "empty", "boilerplate", "too_long", "duplicate")


@dataclass(frozen=True)
class Cleaned:
    aspects: dict[str, str]  # canonical name -> cleaned value, the seller's order
    log: list[dict[str, str | None]]  # one entry per aspect as written: name, aspect, value, clean, action


def aspect_name(name: str) -> str:
    """The canonical name of an aspect: "Main Colour", "COLOR" and "colour" are all "colour"."""
    key = normalise_key(name).strip(" .:")
    return NAME_SYNONYMS.get(key, key)


def clean_value(aspect: str, value: str) -> str:
    """A value as verification compares it: normalised, except identifiers, which keep their case."""
    text = _SPACE.sub(" ", value).strip(" \t.,;:")
    return text if aspect in CASE_KEPT else normalise(text)


def _plain(text: str) -> str:
    return _NOT_WORD.sub(" ", text.lower()).strip()


def _action(aspect: str, raw: str, value: str, seen: set[str]) -> str:
    if not raw.strip():
        return "empty"
    if _plain(raw) in BOILERPLATE or not value:
        return "boilerplate"
    if len(value) > MAX_VALUE_CHARS:
        return "too_long"
    return "duplicate" if aspect in seen else "kept"


def clean_aspects(raw: dict[str, str]) -> Cleaned:
    """The seller's aspects cleaned: one entry per canonical name (the first kept, later spellings logged as
    duplicates), empty, boilerplate and overlong values dropped and logged."""
    aspects: dict[str, str] = {}
    log = []
    for name, text in raw.items():
        aspect = aspect_name(name)
        value = clean_value(aspect, text)
        action = _action(aspect, text, value, set(aspects))
        if action == "kept":
            aspects[aspect] = value
        log.append({"name": name, "aspect": aspect, "value": text, "clean": value if action == "kept" else None,
                    "action": action})
    return Cleaned(aspects, log)


def vocabulary(cleaned: list[dict[str, str]], max_options: int = 12) -> dict[str, list[str]]:
    """Per aspect, the values sellers used across all listings (most used first), where there are between 2 and
    `max_options` of them: the options of a choice question about that aspect. An aspect with one value, or free
    text with many, gets none."""
    counts: dict[str, Counter] = {}
    for aspects in cleaned:
        for aspect, value in aspects.items():
            counts.setdefault(aspect, Counter())[value] += 1
    return {aspect: sorted(counter, key=lambda v: (-counter[v], v)) for aspect, counter in counts.items()
            if 2 <= len(counter) <= max_options}
