"""What `ecomtune crop` runs: its options checked, the boxes found (a boxes file, the records' own, or a grounding
model's), and every item cropped into the output folder.

Asking a grounding model for boxes is model inference, which sits above the data layer: the command hands that
step in as `find_boxes` (`ecomtune.bench.grounding.grounding_boxes`), and this module only calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.data.images.item_crops import BoxesFile, ItemSummary, boxes_from_file, crop_file
from ecomtune.errors import ConfigError

COORD_CHOICES = ("auto", "pixels", "norm1000", "resized")  # what a grounding model's boxes may be in
# (model, image paths, coords) -> (boxes per image path, counts of boxes, images and dropped boxes)
FindBoxes = Callable[[str, list[str], str], tuple[Callable[[str], list], dict[str, Any]]]


def check_crop_options(boxes: Path | None, grounding: str | None, grounding_coords: str) -> None:
    """--grounding-coords is known, and at most one of --boxes and --grounding gives the boxes."""
    if grounding_coords not in COORD_CHOICES:
        raise ConfigError(f"--grounding-coords {grounding_coords} is not known",
                          fix="use auto, pixels, norm1000 or resized")
    if boxes and grounding:
        raise ConfigError("--boxes and --grounding both give boxes", fix="pass one of them")


def run_crop(items: Path, out_dir: Path, boxes: Path | None, margin: float, max_images: int, threshold: int,
             backbone: str, grounding: str | None, grounding_coords: str, overwrite: bool, *,
             find_boxes: FindBoxes, say: Callable[[str], None], warn: Callable[[str], None]) -> list[ItemSummary]:
    """Crop `items` into `out_dir`; `backbone`'s processor counts the visual tokens before and after. `say` gets
    what the grounding model found, `warn` the boxes-file keys no image matches."""
    check_crop_options(boxes, grounding, grounding_coords)
    processor = load_processor(resolve_backbone(backbone))
    boxes_for: BoxesFile | Callable[[str], list] | None = boxes_from_file(boxes) if boxes else None
    if grounding:
        paths = list(dict.fromkeys(p for s in load_canonical_file(items) for p in s.images))
        boxes_for, found = find_boxes(grounding, paths, grounding_coords)
        say(f"grounding {grounding}: {found['boxes']} boxes on {found['images']} images "
            f"({found['dropped']} outside their image, dropped)")
    return crop_file(items, out_dir, boxes_for, processor, margin, max_images, threshold, overwrite, boxes, warn=warn)
