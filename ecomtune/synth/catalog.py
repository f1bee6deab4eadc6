"""A deterministic synthetic catalog: products rendered with Pillow, with ground truth for every field.

Each product is a garment or accessory silhouette (shirt, top, handbag, sneaker) in one colour and
one pattern on a white studio background. From the ground truth it writes training data in the
canonical JSONL: captions for stage 1, and instructions for stage 3 in the paper's families
(visual QA, yes/no QA, attribute extraction as JSON, listing titles). The same seed always gives
the same bytes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 150, 50), "yellow": (230, 200, 20),
    "black": (20, 20, 20), "purple": (120, 40, 160),
}
PATTERNS = ("solid", "striped", "dotted", "checked")
PRODUCTS = ("shirt", "top", "handbag", "sneakers")
DEPARTMENTS = {"shirt": "Men", "top": "Women", "handbag": "Women", "sneakers": "Unisex"}
SIZE = 96


@dataclass(frozen=True)
class Product:
    item_id: str
    product: str
    colour: str
    pattern: str
    department: str

    @property
    def title(self) -> str:
        return f"{self.department}'s {self.colour} {self.pattern} {self.product}"


def _silhouette(draw: ImageDraw.ImageDraw, product: str) -> list[tuple[int, int]]:
    """The outline of the product as a polygon on a SIZE x SIZE canvas."""
    if product == "shirt":
        return [(30, 14), (66, 14), (88, 34), (76, 44), (70, 38), (70, 86), (26, 86), (26, 38), (20, 44), (8, 34)]
    if product == "top":
        return [(34, 16), (62, 16), (70, 30), (70, 84), (26, 84), (26, 30)]
    if product == "handbag":
        draw.arc((30, 8, 66, 44), 180, 360, fill=(90, 90, 90), width=4)
        return [(16, 30), (80, 30), (86, 84), (10, 84)]
    return [(8, 50), (50, 50), (62, 62), (88, 66), (90, 80), (8, 80)]  # sneakers


def _pattern_layer(colour: tuple[int, int, int], pattern: str) -> Image.Image:
    """A SIZE x SIZE fabric swatch: the colour, with white stripes, dots or checks over it."""
    swatch = Image.new("RGB", (SIZE, SIZE), colour)
    draw = ImageDraw.Draw(swatch)
    light = (245, 245, 245)
    if pattern == "striped":
        for y in range(0, SIZE, 12):
            draw.rectangle((0, y, SIZE, y + 4), fill=light)
    elif pattern == "dotted":
        for y in range(4, SIZE, 14):
            for x in range(4, SIZE, 14):
                draw.ellipse((x, y, x + 6, y + 6), fill=light)
    elif pattern == "checked":
        for y in range(0, SIZE, 16):
            for x in range(0, SIZE, 16):
                if (x // 16 + y // 16) % 2 == 0:
                    draw.rectangle((x, y, x + 7, y + 7), fill=light)
    return swatch


def render(product: Product) -> Image.Image:
    """The product's studio photo: its pattern clipped to its silhouette on white."""
    canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    mask = Image.new("L", (SIZE, SIZE), 0)
    outline = _silhouette(ImageDraw.Draw(canvas), product.product)
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    canvas.paste(_pattern_layer(COLOURS[product.colour], product.pattern), (0, 0), mask)
    return canvas


def make_products(count: int, seed: int) -> list[Product]:
    """`count` products with balanced colours and patterns, shuffled by `seed`."""
    rng = random.Random(seed)
    combos = [(c, p, pr) for c in COLOURS for p in PATTERNS for pr in PRODUCTS]
    rng.shuffle(combos)
    return [Product(f"item{i:04d}", pr, c, p, DEPARTMENTS[pr])
            for i, (c, p, pr) in enumerate(combos[i % len(combos)] for i in range(count))]


def _chat(image: str, question: str, answer: str) -> dict:
    return {"images": [image], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]}


def caption_record(product: Product, image: str) -> dict:
    return _chat(image, "Describe the product in the image.",
                 f"A {product.colour} {product.pattern} {product.product} on a white background.")


def instruction_records(product: Product, image: str, rng: random.Random) -> list[dict]:
    """One sample of each instruction family for a product."""
    other = rng.choice([c for c in COLOURS if c != product.colour])
    asked = rng.choice([product.colour, other])
    attrs = {"colour": product.colour, "pattern": product.pattern, "department": product.department}
    return [
        _chat(image, "What is the main colour of this item? Answer with one word.", product.colour),
        _chat(image, f"Which pattern is shown? Choose one of: {', '.join(PATTERNS)}.", product.pattern),
        _chat(image, f"Is this item {asked}? Answer yes or no.", "yes" if asked == product.colour else "no"),
        _chat(image, "Extract the visible attributes as JSON key-value pairs.", json.dumps(attrs)),
        _chat(image, "Write a listing title for this item.", product.title),
    ]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def write_catalog(out_dir: Path, count: int, seed: int) -> dict[str, Path]:
    """Render `count` products and write captions.jsonl, instruct.jsonl and products.jsonl (ground truth)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    products = make_products(count, seed)
    captions, instructions = [], []
    for product in products:
        image = f"images/{product.item_id}.png"
        render(product).save(out_dir / image, format="PNG", optimize=False)
        captions.append(caption_record(product, image))
        instructions.extend(instruction_records(product, image, rng))
    paths = {"captions": out_dir / "captions.jsonl", "instruct": out_dir / "instruct.jsonl",
             "products": out_dir / "products.jsonl"}
    _write_jsonl(paths["captions"], captions)
    _write_jsonl(paths["instruct"], instructions)
    _write_jsonl(paths["products"], [asdict(p) for p in products])
    return paths
