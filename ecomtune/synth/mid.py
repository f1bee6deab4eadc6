"""The mid-stage set (`mid.jsonl`): detailed re-captions and OCR-style reading of every view of a training item.

The paper's stage 1.5 trains on re-captioned images (LLaVA-ReCap: one long, faithful description per image) and
on OCR data (synthdog: read the text in the picture). Between align's one-line captions of the primary image and
sft's task instructions, it teaches the model to describe and read *everything* a picture shows, which is what
e-commerce views carry: label close-ups, backs with model numbers and barcodes, user photos.

Both kinds come from the item's ground truth and from the renderer's own record of each view (`Mark`: the box,
the exact string drawn, the field it shows), never from seller aspects. A re-caption says only what that view
supports: the neckline is drawn on a shirt's front only, a label close-up shows no product colour. An OCR answer
is the drawn text itself, line by line as drawn, so the model is never taught to read what is not there.

Prompt wording varies over a few phrasings, picked by the caller's own generator, so the other catalog files
keep their bytes whatever this set draws.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ecomtune.synth.items import Item
from ecomtune.synth.render import Mark

RECAPTION_PROMPTS = (
    "Describe this image in detail.",
    "Give a detailed description of this photo.",
    "What does this picture show? Describe it in detail, including any text.",
)
# Read everything on one view; keyed by the view without its "user-" prefix.
READ_PROMPTS: dict[str, tuple[str, ...]] = {
    "front": ("What is written on the front?", "Read the text on the front of the product."),
    "back": ("Read all the text on the back.", "What is written on the back? Copy it line by line."),
    "side": ("What is written on the side?", "Read the text on the side of the product."),
    "label": ("Read the text on the label.", "Transcribe the label exactly, line by line."),
    "box": ("What is written on the box?", "Read the text on the box."),
}
READ_ANY = ("Read all the text in the image.",)
# Read one field of a view that shows several; the answer is that field's drawn line(s), exactly as printed.
FIELD_PROMPTS: dict[str, tuple[str, ...]] = {
    "brand": ("Read the brand name.", "What brand name is printed on it?"),
    "product type": ("Read the product name printed on it.",),
    "model number": ("Read the model number line.", "Read the line with the model number."),
    "barcode digits": ("Read the digits under the barcode.", "Read the barcode number."),
    "country of manufacture": ("Read the line that says where it was made.",),
    "certification marks": ("Read the certification marks.", "Which certification marks are printed? Read them."),
    "warning": ("Read the warning.", "What does the warning say? Copy it exactly."),
    "ingredients": ("Read the ingredients list.",),
}
# How a re-caption names what a field's text is.
FIELD_NAMES = {"brand": "the brand name", "product type": "the product name", "model number": "the model line",
               "barcode digits": "the barcode digits", "country of manufacture": "the origin line",
               "certification marks": "the certification marks", "warning": "the warning",
               "ingredients": "the ingredients"}
PATTERN_WORDS = {"solid": "solid {colour}", "striped": "{colour} with white horizontal stripes (striped)",
                 "dotted": "{colour} with small white dots (dotted)",
                 "checked": "{colour} with a white checkerboard (checked)"}
SLEEVE_WORDS = {"short sleeve": "short sleeves", "long sleeve": "long sleeves", "sleeveless": "no sleeves (sleeveless)"}


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _subject(item: Item) -> str:
    """The thing in the picture: packaged goods are seen as their box, the other kinds as the product itself."""
    if item.kind == "packaged":
        return _article(f"{item.product} box")
    return "a sneaker" if item.product == "sneakers" else _article(item.product)


def _setting(item: Item, view: str) -> str:
    """What kind of picture this is and which side of the item it shows."""
    base, subject = view.removeprefix("user-"), _subject(item)
    if view.startswith("user-"):
        return (f"A user photo of the {base} of {subject}, shown smaller and off-centre on a cluttered background "
                "of coloured shapes.")
    if base == "label":
        return f"A close-up of the label of {subject}, printed in black on white."
    if base == "box":
        return f"A studio photo of {subject} seen at an angle, on a white background."
    return f"A studio photo of the {base} of {subject}, on a white background."


def _looks(item: Item, base: str, marks: Sequence[Mark]) -> str:
    """The attributes this view lets one see, in words; only what the renderer draws on it."""
    attrs = item.attributes
    colour = attrs.get("colour", "")
    if item.kind == "apparel":
        look = PATTERN_WORDS[attrs["pattern"]].format(colour=colour)
        sentence = f"The {item.product} is {look}. It has {SLEEVE_WORDS[attrs['sleeve length']]}"
        if base == "front":  # the renderer draws the neckline on the front only
            return f"{sentence} and a {attrs['neckline']} neckline."
        return f"{sentence}; the neckline cannot be seen from the back."
    if item.kind == "accessory":
        detail = "a grey handle" if item.product == "handbag" else "a white sole"
        return f"The {'bag' if item.product == 'handbag' else 'sneaker'} is {colour}, with {detail}."
    sentences = {"front": f"The box is {colour}.", "back": f"The box has a {colour} border.",
                 "box": f"The box is {colour}."}.get(base, "")
    if any(mark.field == "barcode" and mark.text is None for mark in marks):
        sentences += " There is a barcode."
    return sentences.strip()


def _fields(marks: Sequence[Mark]) -> list[tuple[str, list[str]]]:
    """The drawn text grouped by field, in reading order: [(field, lines)]."""
    groups: list[tuple[str, list[str]]] = []
    for mark in marks:
        if mark.text is None:
            continue
        if groups and groups[-1][0] == mark.field:
            groups[-1][1].append(mark.text)
        else:
            groups.append((mark.field, [mark.text]))
    return groups


def _quote(field: str, lines: list[str]) -> str:
    if field == "certification marks":
        return f"{FIELD_NAMES[field]} " + " and ".join(f'"{line}"' for line in lines) + ", each in a box"
    return f'{FIELD_NAMES[field]} "{" ".join(lines)}"'  # wrapped lines read as one sentence


def _text(marks: Sequence[Mark]) -> str:
    groups = _fields(marks)
    if not groups:
        return "There is no text on it."
    listed = "; ".join(_quote(field, lines) for field, lines in groups)
    order = ", top to bottom" if len(groups) > 1 else ""
    return f"The text on it reads{order}: {listed}" + ("" if listed.endswith('."') else ".")


def recaption(item: Item, view: str, marks: Sequence[Mark]) -> str:
    """A detailed, faithful description of one view: the kind of picture, the visible attributes, the text."""
    return " ".join(s for s in (_setting(item, view), _looks(item, view.removeprefix("user-"), marks), _text(marks))
                    if s)


def drawn_lines(marks: Sequence[Mark]) -> list[str]:
    """Every string drawn on a view, in reading order: what an OCR answer may contain, and nothing else."""
    return [mark.text for mark in marks if mark.text is not None]


def ocr_pairs(view: str, marks: Sequence[Mark], rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, answer) pairs reading one view: all of its text, and each field on its own where it shows several.
    Answers are the drawn lines joined by newlines, exactly as printed; a view without text gets none."""
    lines = drawn_lines(marks)
    if not lines:
        return []
    pairs = [(rng.choice(READ_PROMPTS.get(view.removeprefix("user-"), READ_ANY)), "\n".join(lines))]
    groups = _fields(marks)
    if len(groups) > 1:
        pairs += [(rng.choice(FIELD_PROMPTS[field]), "\n".join(field_lines)) for field, field_lines in groups]
    return pairs


def view_pairs(item: Item, view: str, marks: Sequence[Mark], rng: random.Random) -> list[tuple[str, str]]:
    """The mid-stage (prompt, answer) pairs of one view of a training item: its re-caption first, then its OCR
    samples."""
    return [(rng.choice(RECAPTION_PROMPTS), recaption(item, view, marks)), *ocr_pairs(view, marks, rng)]
