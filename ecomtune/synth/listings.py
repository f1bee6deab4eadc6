"""Raw seller listings of the synthetic catalog, as a seller would type them, with the truth kept apart.

`ecomtune curate` needs listings whose noise is known to measure what visual verification removes. Each item's
seller aspects (`Item.seller_aspects`: a wrong colour now and then, a size or material no picture shows) get
the rest of a real listing's mess here: wrong patterns, aspect names spelled several ways, values in odd case or
as synonyms, and boilerplate values ("N/A", "See description"). The truth file says, per aspect as written,
what the pictures show and whether the seller's value is right, wrong, not visible or boilerplate.

The noise draws from its own generator per item (`listing:<seed>:<id>`), so writing listings changed no byte of
the catalog's other files.
"""

from __future__ import annotations

import random

from ecomtune.synth.items import PATTERNS, Item
from ecomtune.tasks.metrics import normalise

# How sellers spell an aspect's name, per canonical name (the first is the catalog's own).
NAME_SPELLINGS = {"colour": ("Colour", "Color", "colour", "COLOR", "Main Colour"),
                  "pattern": ("Pattern", "pattern", "PATTERN"), "size": ("Size", "size", "Size Type")}
# Ways of writing a value that mean the same (ecomtune's normalisation folds them back).
VALUE_SPELLINGS = {"striped": ("stripes", "Striped"), "dotted": ("polka dots", "Dotted"),
                   "checked": ("checkered", "Checked"), "solid": ("plain", "Solid")}
BOILERPLATE = (("Style", "N/A"), ("Features", "See description"), ("Theme", ""), ("Character", "does not apply"),
               ("Model", "-"))
WRONG_PATTERN_RATE = 0.3
STATUSES = ("right", "wrong", "not_visible", "boilerplate")


def _respell(rng: random.Random, value: str) -> str:
    """A value as a seller may type it: as it is, capitalised, upper case, padded, or a synonym."""
    choice = rng.random()
    if value in VALUE_SPELLINGS and choice < 0.4:
        return rng.choice(VALUE_SPELLINGS[value])
    if choice < 0.6:
        return value.capitalize()
    if choice < 0.7:
        return value.upper()
    if choice < 0.8:
        return f"  {value} "
    return value


def _seller_values(item: Item, rng: random.Random) -> dict[str, str]:
    """Canonical name -> the seller's value: the item's noisy aspects plus a wrong pattern now and then."""
    values = {name.lower(): value for name, value in item.seller_aspects.items()}
    if "pattern" in values and rng.random() < WRONG_PATTERN_RATE:
        values["pattern"] = rng.choice([p for p in PATTERNS if p != item.attributes["pattern"]])
    return values


def _status(truth: str | None, value: str) -> str:
    if truth is None:
        return "not_visible"
    return "right" if normalise(value) == normalise(truth) else "wrong"


def seller_listing(item: Item, image_paths: list[str], seed: int) -> tuple[dict, dict]:
    """(listing, truth) for one item. The listing is what `ecomtune curate` reads (id, title, category, aspects as
    written, images); the truth lists each written aspect with its canonical name, the pictured value (None when
    no picture shows it) and its status (`STATUSES`)."""
    rng = random.Random(f"listing:{seed}:{item.item_id}")
    aspects: dict[str, str] = {}
    truth: list[dict] = []
    for canonical, value in _seller_values(item, rng).items():
        name = rng.choice(NAME_SPELLINGS.get(canonical, (canonical.title(),)))
        written = _respell(rng, value) if canonical != "brand" else value
        pictured = item.attributes.get(canonical)
        aspects[name] = written
        truth.append({"name": name, "aspect": canonical, "value": written, "truth": pictured,
                      "status": _status(pictured, value)})
    if rng.random() < 0.4:
        name, value = rng.choice(BOILERPLATE)
        aspects[name] = value
        truth.append({"name": name, "aspect": name.lower(), "value": value, "truth": None, "status": "boilerplate"})
    listing = {"id": item.item_id, "title": item.title, "category": item.category, "aspects": aspects,
               "images": image_paths}
    return listing, {"id": item.item_id, "aspects": truth}
