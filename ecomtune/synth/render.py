"""Drawing items with Pillow: studio views on white, cluttered "user photos", and out-of-domain scenes.

Every function is pure: the same item (or seed) draws the same pixels. Text is drawn through
`Writer`, which also records the box of everything written (wordmarks, model numbers, barcodes,
warnings): the informative regions a grounding model would be asked to find, here known exactly.
It records the drawn string and what it stands for with each box too (`Mark`), so OCR-style
training text is the renderer's own, never re-derived from the ground truth and never out of step.
"""

from __future__ import annotations

import random
import textwrap
from functools import lru_cache
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from ecomtune.synth.items import COLOURS, Item

SIZE = 96  # drawing canvas of apparel and accessories
OUT_SIZE = 112  # delivered size: 4x4 merged image tokens in the tiny processor, enough to tell patterns apart
PACK_SIZE = 128  # packaged goods carry text
WHITE = (255, 255, 255)
LIGHT = (245, 245, 245)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


Box = tuple[int, int, int, int]


class Mark(NamedTuple):
    """One informative region of a view: its box, the string drawn there (None for a region without characters,
    such as a barcode's bars) and the field it shows ("brand", "model number", "warning", ...)."""

    box: Box
    text: str | None
    field: str


class Writer:
    """Draws text on an image and remembers where and what: `marks` in drawing order (which is reading order,
    top to bottom), boxes as (x0, y0, x1, y1), half-open pixels."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.marks: list[Mark] = []

    @property
    def boxes(self) -> list[Box]:
        return [mark.box for mark in self.marks]

    def text(self, xy: tuple[int, int], text: str, fill, size: int, field: str) -> None:
        self.draw.text(xy, text, fill=fill, font=font(size))
        x0, y0, x1, y1 = self.draw.textbbox(xy, text, font=font(size))
        self.marks.append(Mark((int(x0), int(y0), int(x1) + 1, int(y1) + 1), text, field))

    def region(self, box: Box, field: str) -> None:
        """Record a drawn non-text region that carries information (a barcode's bars)."""
        self.marks.append(Mark(box, None, field))


def swatch(colour: tuple[int, int, int], pattern: str, size: int = SIZE) -> Image.Image:
    """Fabric: the colour with white stripes, dots or checks over it."""
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    if pattern == "striped":  # bold horizontal bands
        for y in range(0, size, 12):
            draw.rectangle((0, y, size, y + 5), fill=LIGHT)
    elif pattern == "dotted":  # small round dots on a grid
        for y in range(3, size, 12):
            for x in range(3, size, 12):
                draw.ellipse((x, y, x + 5, y + 5), fill=LIGHT)
    elif pattern == "checked":  # a full checkerboard
        for y in range(0, size, 12):
            for x in range(0, size, 12):
                if (x // 12 + y // 12) % 2 == 0:
                    draw.rectangle((x, y, x + 11, y + 11), fill=LIGHT)
    return image


def garment_outline(sleeve: str) -> list[tuple[int, int]]:
    """Torso with sleeves: long sleeves reach the hem, short ones stop at the chest, sleeveless has none."""
    if sleeve == "long sleeve":
        return [(30, 14), (66, 14), (90, 80), (80, 84), (70, 44), (70, 88), (26, 88), (26, 44), (16, 84), (6, 80)]
    if sleeve == "short sleeve":
        return [(30, 14), (66, 14), (88, 34), (76, 44), (70, 38), (70, 88), (26, 88), (26, 38), (20, 44), (8, 34)]
    return [(34, 14), (62, 14), (70, 30), (70, 88), (26, 88), (26, 30)]


def draw_neckline(draw: ImageDraw.ImageDraw, neckline: str) -> None:
    if neckline == "v-neck":
        draw.polygon([(38, 13), (58, 13), (48, 34)], fill=WHITE)
    elif neckline == "crew neck":
        draw.ellipse((38, 6, 58, 22), fill=WHITE)
    elif neckline == "collared":
        draw.polygon([(36, 12), (48, 14), (40, 28)], fill=(230, 230, 230), outline=(60, 60, 60))
        draw.polygon([(60, 12), (48, 14), (56, 28)], fill=(230, 230, 230), outline=(60, 60, 60))


def draw_apparel(item: Item, view: str) -> Image.Image:
    canvas = Image.new("RGB", (SIZE, SIZE), WHITE)
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).polygon(garment_outline(item.attributes["sleeve length"]), fill=255)
    canvas.paste(swatch(COLOURS[item.attributes["colour"]], item.attributes["pattern"]), (0, 0), mask)
    if view == "front":
        draw_neckline(ImageDraw.Draw(canvas), item.attributes["neckline"])
    return canvas


def draw_accessory(item: Item, view: str) -> tuple[Image.Image, list[Mark]]:
    canvas = Image.new("RGB", (SIZE, SIZE), WHITE)
    writer = Writer(canvas)
    draw = writer.draw
    colour = COLOURS[item.attributes["colour"]]
    if item.product == "handbag":
        draw.arc((30, 6, 66, 44), 180, 360, fill=(90, 90, 90), width=4)
        body = [(16, 28), (80, 28), (86, 84), (10, 84)] if view == "front" else [(30, 28), (66, 28), (70, 84), (26, 84)]
        draw.polygon(body, fill=colour)
        text_at = (24, 50)
    else:
        body = [(6, 48), (50, 48), (62, 60), (90, 64), (90, 80), (6, 80)] if view == "front" else \
            [(20, 40), (76, 40), (80, 82), (16, 82)]
        draw.polygon(body, fill=colour)
        draw.rectangle((6, 76, 90, 84), fill=WHITE)
        text_at = (12, 58) if view == "front" else (26, 52)
    writer.text(text_at, item.attributes["brand"], WHITE, 13, "brand")
    return canvas, writer.marks


def draw_barcode(writer: Writer, digits: str, x: int, y: int) -> None:
    for i, digit in enumerate(digits):
        width = 1 + int(digit) % 3
        writer.draw.rectangle((x + i * 7, y, x + i * 7 + width, y + 18), fill=(0, 0, 0))
    writer.region((x, y, x + 7 * len(digits), y + 19), "barcode")
    writer.text((x, y + 20), digits, (0, 0, 0), 10, "barcode digits")


def draw_packaged(item: Item, view: str) -> tuple[Image.Image, list[Mark]]:
    canvas = Image.new("RGB", (PACK_SIZE, PACK_SIZE), WHITE)
    writer = Writer(canvas)
    draw = writer.draw
    ident, safety = item.compliance["identifiers"], item.compliance["safety"]
    colour = COLOURS[item.attributes["colour"]]
    text = (0, 0, 0)
    if view == "front":
        draw.rectangle((14, 10, 114, 118), fill=colour)
        writer.text((22, 30), ident["brand"], WHITE, 22, "brand")
        writer.text((22, 70), item.product, WHITE, 14, "product type")
    elif view == "back":
        draw.rectangle((14, 10, 114, 118), outline=colour, width=4)
        writer.text((20, 18), f"MODEL {ident['model number']}", text, 11, "model number")
        draw_barcode(writer, ident["barcode"], 20, 40)
        writer.text((20, 92), f"Made in {item.compliance['origin']['country of manufacture']}", text, 11,
                    "country of manufacture")
    elif view == "label":
        y = 8
        for mark in safety.get("certification marks", "").split(", "):
            if mark:
                draw.rectangle((8, y, 40, y + 18), outline=text, width=2)
                writer.text((12, y + 2), mark, text, 12, "certification marks")
                y += 24
        for key in ("warning", "ingredients"):
            if key in safety:
                for line in textwrap.wrap(f"{key.title()}: {safety[key]}", width=26):
                    writer.text((8, y), line, text, 9, key)
                    y += 12
    else:  # box: the pack at an angle, brand on the side
        draw.polygon([(20, 30), (90, 20), (110, 40), (110, 110), (40, 118), (20, 100)], fill=colour)
        writer.text((40, 60), ident["brand"], WHITE, 14, "brand")
    return canvas, writer.marks


def clutter(image: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
    """A user photo: the product at 3/4 size and off-centre on a busy background; also where it was pasted."""
    size = image.size[0]
    scene = Image.new("RGB", image.size, tuple(rng.randint(90, 200) for _ in range(3)))
    draw = ImageDraw.Draw(scene)
    for _ in range(12):
        x, y = rng.randint(0, size), rng.randint(0, size)
        draw.rectangle((x, y, x + rng.randint(5, 30), y + rng.randint(5, 30)),
                       fill=tuple(rng.randint(0, 255) for _ in range(3)))
    small = image.resize((size * 3 // 4, size * 3 // 4))
    offset = (rng.randint(0, size // 4), rng.randint(0, size // 4))
    scene.paste(small, offset)
    return scene, offset


def _scaled(boxes: list[Box], scale: float, offset: tuple[int, int] = (0, 0)) -> list[Box]:
    return [(int(x0 * scale) + offset[0], int(y0 * scale) + offset[1], -int(-x1 * scale) + offset[0],
             -int(-y1 * scale) + offset[1]) for x0, y0, x1, y1 in boxes]


def render_view_with_marks(item: Item, view: str, index: int) -> tuple[Image.Image, list[Mark]]:
    """View `index` of an item, e.g. "front" or "user-back", and the marks on it (boxes in delivered pixels, with
    the text drawn there) in reading order."""
    base_view = view.removeprefix("user-")
    if item.kind == "apparel":
        image, marks = draw_apparel(item, base_view), []
    else:
        image, marks = (draw_accessory if item.kind == "accessory" else draw_packaged)(item, base_view)
    boxes = [mark.box for mark in marks]
    if item.kind != "packaged":
        image = image.resize((OUT_SIZE, OUT_SIZE), Image.Resampling.NEAREST)
        boxes = _scaled(boxes, OUT_SIZE / SIZE)
    if view.startswith("user-"):
        image, offset = clutter(image, random.Random(f"{item.item_id}:{index}"))
        boxes = _scaled(boxes, (image.width * 3 // 4) / image.width, offset)
    return image, [mark._replace(box=box) for mark, box in zip(marks, boxes, strict=True)]


def render_view_with_boxes(item: Item, view: str, index: int) -> tuple[Image.Image, list[Box]]:
    """View `index` of an item, e.g. "front" or "user-back", and the boxes of the text on it."""
    image, marks = render_view_with_marks(item, view, index)
    return image, [mark.box for mark in marks]


def render_view(item: Item, view: str, index: int) -> Image.Image:
    """View `index` of an item, e.g. "front" or "user-back"."""
    return render_view_with_boxes(item, view, index)[0]


SHAPES = ("circle", "square", "triangle")
SCENE_COLOURS = ("red", "blue", "green", "yellow")


def render_scene(seed: int) -> tuple[Image.Image, dict[str, str]]:
    """Out-of-domain probe: 1-4 shapes of one kind and colour on grey. Returns the image and its facts."""
    rng = random.Random(f"scene:{seed}")
    shape, colour, count = rng.choice(SHAPES), rng.choice(SCENE_COLOURS), rng.randint(1, 4)
    image = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i in range(count):
        x, y = 6 + (i % 2) * 46, 6 + (i // 2) * 46
        box = (x, y, x + 36, y + 36)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x + 18, y), (x + 36, y + 36), (x, y + 36)], fill=fill)
    return image, {"shape": shape, "colour": colour, "count": str(count)}
