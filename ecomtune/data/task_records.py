"""Reading benchmark and prediction records: every record checked before a model loads, images presented
by the multi-image strategy.

A record is one JSON object per line with an `id`, its `images` (a path or a list of paths, relative to
the file; relative paths may reach the folder above the file's, no further: `records_root`; checked as
training images are, see `ecomtune.data.schema.check_record_images`), optional `boxes` (one list per image)
and the fields its task reads (`Task.prompt_fields`, plus `Task.reference_fields` when it is scored). Problems
are collected for the whole file and reported together, each with its file:line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecomtune.backbones.spec import BackboneSpec
from ecomtune.config.schema import ImageSettings
from ecomtune.data.images.strategies import apply_strategy
from ecomtune.data.jsonl import read_jsonl
from ecomtune.data.schema import Sample, check_record_images, parse_boxes
from ecomtune.errors import DataError, Problem
from ecomtune.tasks.image_turn import image_turn
from ecomtune.tasks.registry import Task

MAX_REPORTED = 20
ESCAPE_FIX = ("keep images inside the dataset folder (a link there to where they are is followed), give "
              "absolute paths, or name a wider dataset root (--data-root)")


def records_root(path: Path) -> Path:
    """Where a records file's relative image paths may reach: the folder above the file's own (a catalog keeps
    `bench/` beside `images/`, and `bench/general.jsonl` names `../images/...`), no further. The one rule for
    `bench`, `predict`, the in-training probe and the lmms-eval package; `--data-root` names another folder."""
    return Path(path).resolve().parent.parent


def present_images(record: dict[str, Any], settings: ImageSettings) -> list:
    """The record's images as the strategy presents them (all, primary, a grid, or the primary plus crops)."""
    user = image_turn(record["images"])
    sample = Sample(list(record["images"]), [user], record.get("_source", ""), record.get("boxes"))
    return apply_strategy(sample, settings).images


def read_task_records(path: Path, task: Task, images: ImageSettings | None = None, root: Path | None = None,
                      scored: bool = True, spec: BackboneSpec | None = None) -> list[dict[str, Any]]:
    """A task's records with absolute image paths (presented by `images` when given). `root`: the folder
    relative image paths may not leave (default: `records_root`, the folder above the file's). `scored`: the
    reference fields are required too. `spec`: the backbone that will read them, so that an image its processor
    refuses (aspect ratio) is named with its file:line before the model loads."""
    if not path.is_file():
        raise DataError(f"No data for task {task.name}: {path} does not exist",
                        fix=f"pass --data FOLDER holding {path.name} (formats in "
                        "docs/benchmark.md#your-own-labelled-data), or make a compact instance with "
                        "`ecomtune synth --out catalog` and use --data catalog/bench")
    needed = task.prompt_fields + (task.reference_fields if scored else ())
    records, problems = [], []
    for where, record, problem in read_jsonl(path):
        if problem is not None:
            problems.append(problem)
            continue
        if not isinstance(record, dict) or "id" not in record or not record.get("images"):
            problems.append(Problem("record needs an 'id' and a non-empty 'images' list (or one path)", where,
                                    'e.g. {"id": "item1", "images": ["images/item1_0.png"], ...}'))
            continue
        missing = [key for key in needed if key not in record]
        if missing:
            problems.append(Problem(f"{task.name} record lacks {missing}", where,
                                    "see docs/benchmark.md#your-own-labelled-data for the fields each task reads"))
        paths, sizes, image_problems = check_record_images(record["images"], path.parent, where,
                                                           root or records_root(path), spec, ESCAPE_FIX)
        problems.extend(image_problems)
        boxes, box_problems = parse_boxes(record.get("boxes"), sizes, where)
        problems.extend(box_problems)
        records.append({**record, "images": paths, "boxes": boxes, "_source": where})
    if problems:
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} problem(s){more}; no model was loaded", problems[:MAX_REPORTED])
    if images is not None:
        for record in records:
            record["images"] = present_images(record, images)
    return records


def check_records_fit(records: list[dict[str, Any]], spec: BackboneSpec) -> None:
    """Records with more images (as presented) than the backbone family takes: one DataError naming each, before
    any weights load."""
    if spec.max_images is None:
        return
    over = [r for r in records if len(r["images"]) > spec.max_images]
    if over:
        raise DataError(
            f"{len(over)} record(s) have more images than {spec.title} takes ({spec.max_images} per sample)",
            [Problem(f"{len(r['images'])} images", r["_source"]) for r in over[:MAX_REPORTED]],
            fix="present them as one image: --images grid (stitched) or --images primary")
