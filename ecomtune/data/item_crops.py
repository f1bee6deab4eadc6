"""From an item's images and the boxes on them to the images a model should see.

The paper's recipe, per item: every image's boxes are expanded by a margin and merged; each image
with boxes gets ONE crop, the smallest enclosing square of its merged boxes (the encoder's input is
square); originals and crops are de-duplicated by perceptual hash; the result is capped at
`max_images` (more than ~10 images per item runs out of memory or gets slow).

Order (and so what the cap keeps): each original is followed by its crop, in listing order, so the
primary image and its close-up come first.

Boxes come from a file (`{"image path": [[x0, y0, x1, y1], ...]}`) or from a grounding VLM answering
in the Qwen2.5-VL JSON style (`[{"bbox_2d": [x0, y0, x1, y1], "label": "..."}]`), parsed tolerantly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ecomtune.data.crops import Box, check_box, dedupe, enclosing_square, expand_box, merge_boxes
from ecomtune.data.json_repair import parse_json_value

GROUNDING_PROMPT = ('Find every region with text or numbers on the product (labels, logos, model numbers, '
                    'barcodes, warnings). Answer as JSON: [{"bbox_2d": [x0, y0, x1, y1], "label": "..."}].')


def parse_grounding_boxes(text: str) -> list[list[float]]:
    """Boxes from a grounding model's answer: a JSON list of {"bbox_2d" | "bbox": [4 numbers]} objects or
    of plain 4-number lists, with the usual noise (code fences, prose around it, single quotes,
    trailing commas, a truncated last entry). Entries that are not 4 numbers are skipped."""
    brace, bracket = text.find("{"), text.find("[")
    if brace >= 0 and (bracket < 0 or brace < bracket):  # a lone object, not a list of them
        single = parse_json_value(text, dict)
        value = [single] if single else []
    else:
        value = parse_json_value(text, list) or []
    boxes = []
    for entry in value:
        if isinstance(entry, dict):
            entry = entry.get("bbox_2d", entry.get("bbox"))
        if isinstance(entry, list) and len(entry) == 4 and all(isinstance(v, (int, float)) for v in entry):
            boxes.append([float(v) for v in entry])
    return boxes


@dataclass(frozen=True)
class CropResult:
    """The images an item ends with, and where each came from."""

    images: list[Image.Image]
    sources: list[str]  # "original:i" or "crop:i" (i = index of the original image)
    before: int
    crops_made: int
    duplicates_dropped: int
    capped: int


def crop_item(images: Sequence[Image.Image], boxes: Sequence[Sequence[Sequence[float]]], margin: float = 0.1,
              max_images: int = 10, dedupe_threshold: int = 6, where: str = "") -> CropResult:
    """Originals plus one enclosing-square crop per image that has boxes, de-duplicated and capped.
    `boxes[i]` are the boxes on `images[i]` (an empty list for none)."""
    if len(boxes) != len(images):
        raise ValueError(f"{len(boxes)} box lists for {len(images)} images")
    candidates: list[Image.Image] = []
    sources: list[str] = []
    crops_made = 0
    for index, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
        candidates.append(image)
        sources.append(f"original:{index}")
        if not image_boxes:
            continue
        checked: list[Box] = [check_box(b, image.size, f"{where} image {index}") for b in image_boxes]
        grown = [expand_box(b, margin, image.size) for b in checked]
        square = enclosing_square(merge_boxes(grown), image.size)
        candidates.append(image.crop(square))
        sources.append(f"crop:{index}")
        crops_made += 1
    kept = dedupe(candidates, dedupe_threshold)
    capped = kept[:max_images]
    return CropResult([candidates[i] for i in capped], [sources[i] for i in capped], len(images), crops_made,
                      len(candidates) - len(kept), len(kept) - len(capped))
