"""Multi-image strategies: which images of a listing the model sees, and in what form.

- `all`: every image, in listing order, interleaved where the text places them, capped at
  `max_images` (`keep`: the first ones, or the primary plus evenly spaced others);
- `primary`: the first image only;
- `grid`: all images stitched into one canvas (for backbones that take one image);
- `crops`: the primary image plus one square crop per image that has boxes (the paper's targeted
  crops: boxes expanded, merged, smallest enclosing square), de-duplicated by pHash and capped.

A derived image is not written to disk: it is an `ImageRef`, a path or a small dict saying how to
make it from paths (`{"path": p, "crop": [x0, y0, x1, y1]}`, `{"grid": [p, ...], "columns": c,
"size": s}`), opened when a batch is built. Selection and layout are pure functions of counts and
sizes; `apply_strategy` turns one sample into another, its messages' image placeholders rewritten to
match.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from PIL import Image

from ecomtune.config.schema import ImageSettings
from ecomtune.data.images.crop_boxes import Box, check_box, dedupe, enclosing_square, expand_box, merge_boxes
from ecomtune.data.images.load import image_size, load_rgb
from ecomtune.data.schema import ImageRef, Sample

WHITE = (255, 255, 255)


def keep_indices(count: int, cap: int, keep: str = "first") -> list[int]:
    """Which of `count` images survive a cap of `cap`. first: 0..cap-1. spread: 0 (the primary) plus cap-1
    indices evenly spaced over 1..count-1, both ends included (one pick: the last view), so late views such
    as label close-ups survive. `keep_indices(8, 2, "spread") == [0, 7]`; `keep_indices(8, 4, "spread") ==
    [0, 1, 4, 7]`."""
    if count <= cap:
        return list(range(count))
    if keep == "first" or cap == 1:
        return list(range(cap))
    if cap == 2:
        return [0, count - 1]
    picks = {1 + round(i * (count - 2) / (cap - 2)) for i in range(cap - 1)}
    return [0, *sorted(picks)]


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) of a grid for `count` images: `columns` given, else the smallest square that holds them."""
    cols = min(columns or math.ceil(math.sqrt(count)), count)
    return cols, math.ceil(count / cols)


def fit_into(image: Image.Image, side: int) -> Image.Image:
    """The image scaled (aspect kept) to fit a `side` x `side` white square, centred."""
    scale = side / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    cell = Image.new("RGB", (side, side), WHITE)
    cell.paste(resized, ((side - resized.width) // 2, (side - resized.height) // 2))
    return cell


def stitch(images: Sequence[Image.Image], columns: int | None = None, size: int = 896) -> Image.Image:
    """Images in a row-major grid of equal square cells; the canvas's longest side is `size` (rounded down to a
    whole number of cells). One image is returned as it is."""
    if len(images) == 1:
        return images[0]
    cols, rows = grid_shape(len(images), columns)
    side = size // max(cols, rows)
    canvas = Image.new("RGB", (cols * side, rows * side), WHITE)
    for index, image in enumerate(images):
        canvas.paste(fit_into(image, side), ((index % cols) * side, (index // cols) * side))
    return canvas


def square_crop(size: tuple[int, int], boxes: Sequence[Sequence[float]], margin: float, where: str = "") -> Box:
    """The paper's targeted crop for one image: its boxes checked, grown by `margin`, merged, and covered by the
    smallest square that stays inside the image."""
    checked = [check_box(b, size, where) for b in boxes]
    return enclosing_square(merge_boxes([expand_box(b, margin, size) for b in checked]), size)


def open_image(ref: ImageRef) -> Image.Image:
    """The RGB image an `ImageRef` stands for, as a person sees its files (`load_rgb`: EXIF orientation applied,
    transparency on white), so crop boxes land on the displayed pixels they were drawn on."""
    if isinstance(ref, str):
        return load_rgb(ref)
    if "grid" in ref:
        return stitch([load_rgb(p) for p in ref["grid"]], ref.get("columns"), ref["size"])
    return load_rgb(ref["path"]).crop(tuple(ref["crop"]))


class DecodedImages:
    """`open_image` with the most recently used images kept decoded, up to `budget_bytes` of RGB pixels: a run of
    several epochs decodes each image once instead of once per epoch. The images are read-only for the caller
    (processors copy what they change). Meant for one training run, whose image files do not change under it."""

    def __init__(self, budget_bytes: int = 512 * 2**20) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.kept: OrderedDict[str, Image.Image] = OrderedDict()

    def open(self, ref: ImageRef) -> Image.Image:
        key = ref if isinstance(ref, str) else json.dumps(ref, sort_keys=True)
        image = self.kept.get(key)
        if image is not None:
            self.kept.move_to_end(key)
            return image
        image = open_image(ref)
        size = image.width * image.height * 3
        if size <= self.budget:
            self.kept[key] = image
            self.used += size
            while self.used > self.budget:
                _, dropped = self.kept.popitem(last=False)
                self.used -= dropped.width * dropped.height * 3
        return image


def ref_paths(ref: ImageRef) -> list[str]:
    """The files an `ImageRef` is made from (for fingerprints)."""
    if isinstance(ref, str):
        return [ref]
    return list(ref["grid"]) if "grid" in ref else [ref["path"]]


def ref_size(ref: ImageRef, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of the image `open_image(ref)` gives, without decoding it: `sizes` holds the displayed
    size of each file (read from its header where missing). A crop is its box as Pillow rounds it; a grid is
    `stitch`'s canvas."""
    def size_of(path: str) -> tuple[int, int]:
        return sizes[path] if path in sizes else image_size(path)

    if isinstance(ref, str):
        return size_of(ref)
    if "grid" in ref:
        if len(ref["grid"]) == 1:
            return size_of(ref["grid"][0])
        cols, rows = grid_shape(len(ref["grid"]), ref.get("columns"))
        side = ref["size"] // max(cols, rows)
        return cols * side, rows * side
    x0, y0, x1, y1 = (round(v) for v in ref["crop"])
    return x1 - x0, y1 - y0


def _placeholders_kept(messages: list[dict[str, Any]], kept: set[int]) -> list[dict[str, Any]]:
    """Messages with only the image placeholders whose index (in order of appearance) is in `kept`."""
    out, index = [], 0
    for message in messages:
        content = []
        for block in message["content"]:
            if block["type"] == "image":
                index += 1
                if index - 1 not in kept:
                    continue
            content.append(block)
        out.append({**message, "content": content})
    return out


def placeholders_at_first(messages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Messages with every image placeholder removed and `count` put where the first one was."""
    out, placed = [], False
    for message in messages:
        content: list[dict[str, Any]] = []
        for block in message["content"]:
            if block["type"] != "image":
                content.append(block)
            elif not placed:
                content.extend({"type": "image"} for _ in range(count))
                placed = True
        out.append({**message, "content": content})
    return out


def crop_refs(sample: Sample, settings: ImageSettings) -> list[ImageRef]:
    """The primary image, then one square crop per image with boxes, de-duplicated (pHash) and capped."""
    candidates: list[ImageRef] = [sample.images[0]]
    for index, (ref, boxes) in enumerate(zip(sample.images, sample.boxes or [], strict=False)):
        if boxes and isinstance(ref, str):
            square = square_crop(image_size(ref), boxes, settings.crop_margin, f"{sample.source} image {index}")
            candidates.append({"path": ref, "crop": list(square)})
    kept = dedupe([open_image(c) for c in candidates], settings.dedupe_threshold)
    return [candidates[i] for i in kept][: settings.max_images]


def apply_strategy(sample: Sample, settings: ImageSettings) -> Sample:
    """The sample as the strategy presents it. Samples with at most one image are unchanged, except that `crops`
    still adds the crop of a boxed single image."""
    images = sample.images
    if not images or (len(images) == 1 and settings.strategy != "crops"):
        return sample
    if settings.strategy == "all":
        kept = keep_indices(len(images), settings.max_images, settings.keep)
        if len(kept) == len(images):
            return sample
        boxes = [sample.boxes[i] for i in kept] if sample.boxes else None
        return replace(sample, images=[images[i] for i in kept], boxes=boxes,
                       messages=_placeholders_kept(sample.messages, set(kept)))
    if settings.strategy == "primary":
        return replace(sample, images=images[:1], boxes=sample.boxes[:1] if sample.boxes else None,
                       messages=_placeholders_kept(sample.messages, {0}))
    if settings.strategy == "grid":
        paths = [p for ref in images for p in ref_paths(ref)]
        grid: ImageRef = {"grid": paths, "columns": settings.grid_columns, "size": settings.grid_size}
        return replace(sample, images=[grid], boxes=None, messages=placeholders_at_first(sample.messages, 1))
    refs = crop_refs(sample, settings)
    return replace(sample, images=refs, boxes=None, messages=placeholders_at_first(sample.messages, len(refs)))
