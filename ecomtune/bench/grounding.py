"""Boxes from a grounding VLM, for `ecomtune crop --grounding MODEL`.

The model is asked, per image, for the regions with text or numbers in the Qwen2.5-VL JSON style
(`GROUNDING_PROMPT`); answers are parsed tolerantly (`parse_grounding_boxes`) and mapped back to the
original image's pixels, whatever coordinates the family answers in (`to_image_pixels`). Boxes a
model puts outside the image are dropped and counted: model output is not user input.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from ecomtune.data.images.item_crops import GROUNDING_PROMPT, parse_grounding_boxes, to_image_pixels
from ecomtune.data.images.load import load_rgb
from ecomtune.errors import ConfigError
from ecomtune.infer.generate import generate
from ecomtune.infer.load import load_for_inference

GROUNDING_COORDS = {"qwen2.5-vl": "resized", "qwen2-vl": "norm1000", "qwen3-vl": "norm1000"}


def model_input_size(processor, image: Image.Image) -> tuple[int, int] | None:
    """(width, height) of the image as a Qwen-style processor resizes it (from its patch grid), else None."""
    batch = processor.image_processor(images=[image], return_tensors="pt")
    grid = batch.get("image_grid_thw")
    patch = getattr(processor.image_processor, "patch_size", None)
    if grid is None or patch is None:
        return None
    _, rows, cols = (int(v) for v in grid[0])
    return cols * patch, rows * patch


def grounding_boxes(model: str, image_paths: list[str], coords: str = "auto",
                    batch_size: int = 8) -> tuple[Callable[[str], list], dict[str, int]]:
    """Ask a grounding VLM for the informative regions of every image; returns a lookup path -> boxes (original
    pixels, clipped, empty ones dropped) and counts of what came back."""
    loaded = load_for_inference(model)
    coords = GROUNDING_COORDS.get(loaded.info["family"], "pixels") if coords == "auto" else coords
    answers = generate(loaded, [GROUNDING_PROMPT] * len(image_paths), [[p] for p in image_paths], 256, batch_size,
                       "grounding")
    table: dict[str, list] = {}
    counts = {"images": len(image_paths), "boxes": 0, "dropped": 0}
    for path, answer in zip(image_paths, answers, strict=True):
        image = load_rgb(path)
        model_input = model_input_size(loaded.processor, image) if coords == "resized" else None
        if coords == "resized" and model_input is None:
            raise ConfigError(f"--grounding-coords resized needs a processor that reports how it resized the image "
                              f"(Qwen families); {loaded.info['family']} does not",
                              fix="use --grounding-coords pixels or norm1000, whichever the model answers in")
        raw = to_image_pixels(parse_grounding_boxes(answer), coords, image.size, model_input)
        kept = [b for b in raw if min(b[2], image.width) > max(b[0], 0) and min(b[3], image.height) > max(b[1], 0)]
        counts["boxes"] += len(kept)
        counts["dropped"] += len(raw) - len(kept)
        table[path] = kept
    return (lambda image: table.get(image, [])), counts
