"""From an item's images and the boxes on them to the images a model should see.

The paper's recipe, per item: every image's boxes are expanded by a margin and merged; each image
with boxes gets ONE crop, the smallest enclosing square of its merged boxes (the encoder's input is
square); originals and crops are de-duplicated by perceptual hash; the result is capped at
`max_images` (more than ~10 images per item runs out of memory or gets slow).

Order (and so what the cap keeps): each original is followed by its crop, in listing order, so the
primary image and its close-up come first.

Boxes come from a file (`{"image path": [[x0, y0, x1, y1], ...]}`, keys as the items file writes its image
paths, or absolute; see `BoxesFile.for_images`) or from a grounding VLM answering
in the Qwen2.5-VL JSON style (`[{"bbox_2d": [x0, y0, x1, y1], "label": "..."}]`), parsed tolerantly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ecomtune.data.batches.collator import count_image_tokens
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.data.images.crop_boxes import dedupe
from ecomtune.data.images.load import load_rgb
from ecomtune.data.images.strategies import placeholders_at_first, square_crop
from ecomtune.data.jsonl import write_jsonl_atomic
from ecomtune.errors import DataError, Problem
from ecomtune.tasks.lenient_json import parse_json_value

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
        candidates.append(image.crop(square_crop(image.size, image_boxes, margin, f"{where} image {index}")))
        sources.append(f"crop:{index}")
        crops_made += 1
    kept = dedupe(candidates, dedupe_threshold)
    capped = kept[:max_images]
    return CropResult([candidates[i] for i in capped], [sources[i] for i in capped], len(images), crops_made,
                      len(candidates) - len(kept), len(kept) - len(capped))


@dataclass(frozen=True)
class ItemSummary:
    source: str
    images_before: int
    images_after: int
    tokens_before: int
    tokens_after: int


def to_image_pixels(boxes: list[list[float]], coords: str, size: tuple[int, int],
                    model_input: tuple[int, int] | None = None) -> list[list[float]]:
    """A grounding model's boxes in the original image's pixels. `coords`: `pixels` (already so), `norm1000`
    (0..1000 on both axes: Qwen2-VL, Qwen3-VL), `resized` (pixels of the image the processor fed the model,
    `model_input` = (width, height): Qwen2.5-VL)."""
    width, height = size
    if coords == "pixels":
        sx = sy = 1.0
    elif coords == "norm1000":
        sx, sy = width / 1000, height / 1000
    elif coords == "resized" and model_input is not None:
        sx, sy = width / model_input[0], height / model_input[1]
    else:
        raise ValueError(f"unknown box coordinates {coords!r}")
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]


KEY_RULE = ("a key is an image path as the items file writes it (relative to the items file's folder, e.g. "
            "'images/item1_0.png') or an absolute path")


@dataclass(frozen=True)
class BoxesFile:
    """A boxes file, its entries checked for shape: image path (as the items file writes it, or absolute) -> a
    list of [x0, y0, x1, y1] boxes."""

    path: Path
    table: dict[str, list]

    def for_images(self, items: Path, images: Sequence[str], warn: Callable[[str], None]) -> Callable[[str], list]:
        """The boxes of each of `images` (the items' resolved paths). Keys are resolved as the items file's own
        image paths are (against its folder; absolute ones as they are), so a key matches exactly the image the
        items file names with it. A file none of whose keys names one of `images` is refused; keys that name none
        while others do are reported through `warn`, with their count. Two keys naming one image are refused."""
        from ecomtune.data.schema import resolve_image_path

        wanted = set(images)
        by_image: dict[str, str] = {}
        unmatched, problems = [], []
        for key in self.table:
            path, _escape = resolve_image_path(key, Path(items).parent, Path("/"))
            if path not in wanted:
                unmatched.append((key, path))
            elif path in by_image:
                problems.append(Problem(f"keys {by_image[path]!r} and {key!r} both name {path}", str(self.path),
                                        "keep one entry per image"))
            else:
                by_image[path] = key
        if problems:
            raise DataError(f"Boxes file {self.path}: {len(problems)} image(s) named twice", problems[:20])
        if self.table and not by_image:
            raise DataError(f"Boxes file {self.path}: none of its {len(self.table)} key(s) names an image of "
                            f"{items}, so nothing would be cropped",
                            [Problem(f"{key!r} is {path}, which no item names", str(self.path))
                             for key, path in unmatched[:5]], fix=KEY_RULE)
        if unmatched:
            shown = ", ".join(repr(key) for key, _ in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
            warn(f"warning: {len(unmatched)} of {len(self.table)} key(s) of {self.path} name no image of {items} "
                 f"and are ignored: {shown} ({KEY_RULE})")
        boxes = {path: self.table[key] for path, key in by_image.items()}
        return lambda image: boxes.get(image, [])


def boxes_from_file(path: Path) -> BoxesFile:
    """A JSON file mapping image paths (see `KEY_RULE`) to lists of [x0, y0, x1, y1] boxes; images it does not
    name get none. Every entry is checked before any cropping; keys are matched to the items' images by
    `BoxesFile.for_images`."""
    fix = 'write {"images/a.png": [[x0, y0, x1, y1], ...], ...}: image paths to lists of 4-number boxes'
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Cannot read boxes file {path}: {exc}", fix=fix) from None
    if not isinstance(table, dict):
        raise DataError(f"Boxes file {path} holds a JSON {type(table).__name__}, not an object", fix=fix)
    problems = []
    for image, boxes in table.items():
        if not isinstance(boxes, list) or not all(
                isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in b) for b in boxes):
            problems.append(Problem(f"{image!r}: {json.dumps(boxes)[:80]} is not a list of [x0, y0, x1, y1] boxes",
                                    str(path), fix))
    if problems:
        raise DataError(f"Boxes file {path}: {len(problems)} entry(ies) of the wrong shape", problems[:20])
    return BoxesFile(Path(path), table)


def crop_file(items: Path, out_dir: Path, boxes_for: BoxesFile | Callable[[str], list] | None, processor,
              margin: float = 0.1, max_images: int = 10, dedupe_threshold: int = 6, overwrite: bool = False,
              boxes_file: Path | None = None, warn: Callable[[str], None] | None = None) -> list[ItemSummary]:
    """Crop every item of a canonical JSONL file into `out_dir` (images/ plus items.jsonl); record-level `boxes`
    (a list per image) are used when no `boxes_for` is given. A `BoxesFile` is matched to the items' images
    first (`BoxesFile.for_images`; `warn` gets what it ignores, default: stderr). `out_dir` must be empty unless
    `overwrite`, and may not hold or sit among the inputs (items, their images, `boxes_file`); the result is
    written aside and swapped in whole."""
    import sys

    from ecomtune.runs.outputs import Guarded, replacing_folder

    samples = load_canonical_file(items)  # every record checked first (boxes too); a bad file stops here with file:line
    if isinstance(boxes_for, BoxesFile):
        boxes_for = boxes_for.for_images(Path(items), [p for s in samples for p in s.images],
                                         warn or (lambda text: print(text, file=sys.stderr)))
    empty = [s.source for s in samples if not s.images]
    if empty:
        raise DataError(f"{len(empty)} item(s) have no images: nothing to crop",
                        [Problem("no images", where) for where in empty[:20]],
                        fix="give every item its images, or drop those records")
    guarded = Guarded(files=[("items file", Path(items))] + ([("boxes file", Path(boxes_file))] if boxes_file else []))
    guarded.add_images(p for s in samples for p in s.images)
    with replacing_folder(out_dir, overwrite, guarded, "--out") as staging:
        return _crop_samples(samples, staging, boxes_for, processor, margin, max_images, dedupe_threshold)


def _crop_samples(samples: list, out_dir: Path, boxes_for: Callable[[str], list] | None, processor, margin: float,
                  max_images: int, dedupe_threshold: int) -> list[ItemSummary]:
    from rich.progress import track

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records, summaries = [], []
    for n, sample in enumerate(track(samples, description="cropping items", transient=True)):
        images = [load_rgb(p) for p in sample.images]
        if boxes_for is not None:
            boxes = [boxes_for(path) for path in sample.images]
        else:
            boxes = sample.boxes or [[] for _ in images]
        result = crop_item(images, boxes, margin, max_images, dedupe_threshold, where=sample.source)
        paths = []
        for k, (image, origin) in enumerate(zip(result.images, result.sources, strict=True)):
            name = f"images/item{n:05d}_{k}_{origin.replace(':', '')}.png"
            image.save(out_dir / name, format="PNG")
            paths.append(name)
        records.append({"images": paths, "messages": placeholders_at_first(sample.messages, len(paths))})
        summaries.append(ItemSummary(sample.source, len(images), len(paths),
                                     count_image_tokens(processor, images),
                                     count_image_tokens(processor, result.images)))
    write_jsonl_atomic(out_dir / "items.jsonl", records)
    return summaries


def print_crop_summary(summaries: Sequence, out_dir: Path, stdout) -> None:
    """`ecomtune crop`: images and visual tokens per item before and after, median and max."""
    from statistics import median

    from rich.table import Table

    table = Table(title=f"ecomtune crop: {len(summaries)} items -> {out_dir / 'items.jsonl'}")
    for column in ("per item", "median before", "median after", "max before", "max after"):
        table.add_column(column, justify="left" if column == "per item" else "right")
    for label, before, after in (("images", "images_before", "images_after"),
                                 ("visual tokens", "tokens_before", "tokens_after")):
        b = [getattr(s, before) for s in summaries]
        a = [getattr(s, after) for s in summaries]
        table.add_row(label, f"{median(b):g}", f"{median(a):g}", str(max(b)), str(max(a)))
    stdout.print(table)
