"""Synthetic catalog items: the ground truth every image, instruction and benchmark record comes from.

Three kinds, as in a marketplace: apparel (men's shirts, women's tops), accessories (handbags and
sneakers with brand wordmarks) and packaged goods in regulated categories (toys, electronics,
batteries, cosmetics, food, appliances) with identifiers, origin and safety text. Each item has
2-8 views, a title, a category, and seller aspects that are deliberately noisy (a wrong colour, a
size no picture shows), like real listings. Generation is a pure function of (index, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 150, 50), "yellow": (230, 200, 20),
    "black": (20, 20, 20), "purple": (120, 40, 160),
}
PATTERNS = ("solid", "striped", "dotted", "checked")
BRANDS = ("ACME", "NOVA", "ZEPH", "LUMA")
APPAREL = {
    "shirt": {"category": "Men's shirts", "department": "Men", "subset": "shirts",
              "sleeves": ("short sleeve", "long sleeve"), "necklines": ("collared", "crew neck", "v-neck")},
    "top": {"category": "Women's tops", "department": "Women", "subset": "tops",
            "sleeves": ("short sleeve", "long sleeve", "sleeveless"), "necklines": ("crew neck", "v-neck")},
}
ACCESSORIES = {
    "handbag": {"category": "Handbags", "department": "Women", "subset": "handbags"},
    "sneakers": {"category": "Sneakers", "department": "Unisex", "subset": "sneakers"},
}
PACKAGED = {
    "toy": {"category": "Toys", "marks": ("CE",), "warning": "Choking hazard. Not for children under 3 years."},
    "charger": {"category": "Electronics", "marks": ("CE", "FCC"), "warning": "Risk of electric shock."},
    "battery": {"category": "Batteries", "marks": ("CE", "UL"), "warning": "Do not dispose of in fire."},
    "lotion": {"category": "Cosmetics", "marks": (), "warning": "For external use only.",
               "ingredients": "water, glycerin, aloe vera"},
    "cereal": {"category": "Food", "marks": (), "warning": None, "ingredients": "oats, honey, salt"},
    "kettle": {"category": "Appliances", "marks": ("UL", "CE"), "warning": "Hot surface."},
}
COUNTRIES = ("China", "Germany", "Vietnam", "Italy", "Mexico")
KINDS = ("apparel", "accessory", "packaged")


@dataclass
class Item:
    """One listing with its ground truth."""

    item_id: str
    kind: str
    product: str
    category: str
    subset: str
    attributes: dict[str, str]  # visually verifiable aspects (what the pictures show)
    department: str
    title: str
    seller_aspects: dict[str, str]  # what a seller typed: noisy, partly not visible
    views: list[str]  # front, back, label, box, side; a "user-" prefix means a cluttered user photo
    compliance: dict[str, dict[str, str]] = field(default_factory=dict)  # packaged goods only
    split: str = "train"

    @property
    def aspects(self) -> dict[str, str]:
        """Aspect Prediction targets: the visual attributes plus department."""
        return {**{k.title(): v for k, v in self.attributes.items()}, "Department": self.department}


def _views(rng: random.Random, studio: list[str], low: int, high: int) -> list[str]:
    count = rng.randint(low, high)
    views = studio[:count]
    while len(views) < count:
        views.append("user-" + rng.choice(studio[:2]))
    return views


def _noisy(rng: random.Random, attributes: dict[str, str]) -> dict[str, str]:
    aspects = {k.title(): v for k, v in attributes.items()}
    if "colour" in attributes and rng.random() < 0.3:
        aspects["Colour"] = rng.choice([c for c in COLOURS if c != attributes["colour"]])
    if rng.random() < 0.5:
        aspects["Size"] = rng.choice(("S", "M", "L", "XL"))
    if rng.random() < 0.3:
        aspects["Material"] = rng.choice(("cotton", "polyester", "leather"))
    return aspects


def make_apparel(rng: random.Random, item_id: str, product: str) -> Item:
    spec = APPAREL[product]
    attrs = {"colour": rng.choice(list(COLOURS)), "pattern": rng.choice(PATTERNS),
             "sleeve length": rng.choice(spec["sleeves"]), "neckline": rng.choice(spec["necklines"])}
    title = f"{spec['department']}'s {attrs['colour']} {attrs['pattern']} {attrs['sleeve length']} " \
            f"{attrs['neckline']} {product}"
    return Item(item_id, "apparel", product, spec["category"], spec["subset"], attrs, spec["department"], title,
                _noisy(rng, attrs), _views(rng, ["front", "back"], 2, 3))


def make_accessory(rng: random.Random, item_id: str, product: str) -> Item:
    spec = ACCESSORIES[product]
    attrs = {"colour": rng.choice(list(COLOURS)), "brand": rng.choice(BRANDS)}
    title = f"{attrs['brand']} {attrs['colour']} {product}"
    return Item(item_id, "accessory", product, spec["category"], spec["subset"], attrs, spec["department"], title,
                _noisy(rng, attrs), _views(rng, ["front", "side"], 2, 3))


def make_packaged(rng: random.Random, item_id: str, product: str) -> Item:
    spec = PACKAGED[product]
    brand = rng.choice(BRANDS)
    colour = rng.choice(list(COLOURS))
    prefix = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    model = f"{prefix}-{rng.randint(100, 999)}"
    barcode = "".join(str(rng.randint(0, 9)) for _ in range(12))
    country = rng.choice(COUNTRIES)
    safety = {}
    if spec["marks"]:
        safety["certification marks"] = ", ".join(spec["marks"])
    if spec.get("warning"):
        safety["warning"] = spec["warning"]
    if spec.get("ingredients"):
        safety["ingredients"] = spec["ingredients"]
    compliance = {
        "identifiers": {"brand": brand, "model number": model, "barcode": barcode},
        "attributes": {"colour": colour, "product type": product},
        "origin": {"country of manufacture": country},
        "safety": safety,
    }
    attrs = {"colour": colour, "brand": brand, "product type": product}
    title = f"{brand} {product} {model}"
    return Item(item_id, "packaged", product, spec["category"], "general", attrs, "Unisex", title,
                _noisy(rng, attrs), _views(rng, ["front", "back", "label", "box"], 2, 8), compliance)


def make_item(index: int, seed: int) -> Item:
    """Item `index` of the catalog with `seed`: kinds rotate so every small catalog has all three."""
    rng = random.Random(f"{seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    item_id = f"item{index:05d}"
    if kind == "apparel":
        return make_apparel(rng, item_id, rng.choice(list(APPAREL)))
    if kind == "accessory":
        return make_accessory(rng, item_id, rng.choice(list(ACCESSORIES)))
    return make_packaged(rng, item_id, rng.choice(list(PACKAGED)))


def make_items(count: int, seed: int, bench_fraction: float = 0.25) -> list[Item]:
    """`count` items; a deterministic `bench_fraction` of them (whole items) are held out for the benchmark."""
    items = [make_item(i, seed) for i in range(count)]
    order = list(range(count))
    random.Random(seed).shuffle(order)
    for i in order[: round(count * bench_fraction)]:
        items[i].split = "bench"
    return items
