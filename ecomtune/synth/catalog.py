"""`ecomtune synth`: write a synthetic catalog as training data and benchmark splits.

Output folder:
- `images/`: every view of every item, PNG;
- `captions.jsonl`: stage-1 captions (primary images of training items);
- `mid.jsonl`: stage-1.5 data from every view of the training items: a detailed re-caption of each view and
  OCR-style reading of the text drawn on it (see `ecomtune/synth/mid.py`);
- `instruct.jsonl`: stage-3 instructions in the paper's single-item families: VQA (choice, yes/no, with and
  without title & category), attribute extraction, precise instruction following, listings;
- `compliance.jsonl`: stage-3 multi-image item intelligence, the compliance JSON from all of a packaged item's
  views. A file of its own so that a mixture can give it its own sampling rule: its answers are the longest and
  its records the fewest (one per packaged item), and the tiny recipe takes them four times over;
- `bench/<task>.jsonl`: benchmark records for held-out items (disjoint from training by item); `bench/general.jsonl`
  is the general world's probe split (`ecomtune/tasks/general_world.py`);
- `general-train.jsonl`: the general world's training split, general replay to mix into mid and sft (its scenes
  are never probe scenes);
- `items.jsonl`: the ground truth, with the noisy seller aspects and each item's split;
- `listings.jsonl`: every item as a seller lists it (id, title, category, aspects as typed, images), the input
  of `ecomtune curate`; `listings-truth.jsonl`, kept apart: per written aspect, what the pictures show and
  whether the seller's value is right, wrong, not visible or boilerplate (see `ecomtune/synth/listings.py`).
Multi-image records (listings, compliance, item-intelligence bench) carry `boxes`: the text drawn on
each view, exactly as rendered, standing in for a grounding model's boxes (the `crops` strategy and
`ecomtune crop` use them).
Training targets use only the visually verified attributes, never the seller's aspects: this is
the paper's "visual verification" already applied.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

from ecomtune.data.jsonl import write_jsonl_atomic
from ecomtune.synth.items import APPAREL, BRANDS, COLOURS, PATTERNS, Item, make_items
from ecomtune.synth.listings import seller_listing
from ecomtune.synth.mid import view_pairs
from ecomtune.synth.render import render_view_with_marks
from ecomtune.tasks import prompts
from ecomtune.tasks.general_world import write_general
from ecomtune.tasks.prompts import chat_record as chat
from ecomtune.tasks.prompts import compact

# Deep Fashion options per attribute (the choices a benchmark question offers).
OPTIONS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "pattern": PATTERNS, "brand": BRANDS,
    "sleeve length": ("short sleeve", "long sleeve", "sleeveless"),
    "neckline": tuple(sorted({n for spec in APPAREL.values() for n in spec["necklines"]})),
}
# The general world (ecomtune/tasks/general_world.py): probe items (30 per skill, so a fall of 0.05 is about 9
# answers) and training items for general replay.
GENERAL_PROBE_ITEMS = 180
GENERAL_TRAIN_ITEMS = 1200
GENERAL_TRAIN_FILE = "general-train.jsonl"  # general replay: the general world's training split
FASHION_ATTRIBUTES = {"shirts": ("sleeve length", "neckline", "pattern", "colour"),
                      "tops": ("sleeve length", "neckline", "pattern", "colour"),
                      "handbags": ("colour", "brand"), "sneakers": ("colour", "brand")}


def image_paths(item: Item) -> list[str]:
    return [f"images/{item.item_id}_{i}.png" for i in range(len(item.views))]


def caption(item: Item) -> str:
    words = " ".join(item.attributes[k] for k in ("colour", "pattern") if k in item.attributes)
    return f"A {words} {item.product} on a white background."


def instructions(item: Item, rng: random.Random, boxes: list) -> list[dict]:
    """Training instructions for one item, one or more per family. Multi-image records carry the text boxes of
    every view (`boxes`), as a grounding model would have marked them."""
    return prompts.instruction_records(image_paths(item), item.attributes, item.aspects, item.title, item.category,
                                       OPTIONS, list(FASHION_ATTRIBUTES.get(item.subset, ())), rng, boxes)


def compliance_records(item: Item, boxes: list) -> list[dict]:
    """The multi-image item-intelligence instruction of a packaged item (none for other items): fill the
    compliance JSON from every view."""
    if not item.compliance:
        return []
    return [chat(image_paths(item), prompts.compliance_prompt(len(item.views)), compact(item.compliance), boxes)]


def bench_records(item: Item, boxes: list) -> dict[str, list[dict]]:
    """Benchmark records for one held-out item, per task (see ecomtune/tasks/registry.py for the formats)."""
    primary = image_paths(item)[:1]
    out: dict[str, list[dict]] = {"aspect-prediction": [], "deep-fashion": [], "attribute-extraction": [],
                                  "item-intelligence": []}
    subsets = ["general"] if item.kind == "packaged" else ["fashion", "fashion+context"]
    for subset in subsets:
        record = {"id": f"{item.item_id}:{subset}", "images": primary, "subset": subset, "aspects": item.aspects}
        if subset == "fashion+context":
            record.update(title=item.title, category=item.category)
        out["aspect-prediction"].append(record)
    for attr in FASHION_ATTRIBUTES.get(item.subset, ()):
        out["deep-fashion"].append({"id": f"{item.item_id}:{attr}", "images": primary, "subset": item.subset,
                                    "attribute": attr, "options": list(OPTIONS[attr]),
                                    "answer": item.attributes[attr]})
    out["attribute-extraction"].append({"id": item.item_id, "images": primary, "attributes": item.attributes})
    if item.compliance:
        out["item-intelligence"].append({"id": item.item_id, "images": image_paths(item), "boxes": boxes,
                                         "category": item.category, "fields": item.compliance})
    return out


def write_catalog(out_dir: Path, count: int, seed: int, general: int = GENERAL_PROBE_ITEMS,
                  general_train: int = GENERAL_TRAIN_ITEMS, overwrite: bool = False) -> dict[str, Path]:
    """Render `count` items and write the training files, the benchmark splits and the ground truth into
    `out_dir`, which must be empty unless `overwrite`. The catalog is written aside and swapped in whole, so an
    interrupted run leaves no half catalog and a replaced one no stale files."""
    from ecomtune.runs.outputs import Guarded, replacing_folder

    out_dir = Path(out_dir)
    with replacing_folder(out_dir, overwrite, Guarded()) as staging:
        written = _write_catalog_files(staging, count, seed, general, general_train)
    return {name: out_dir / path.relative_to(staging) for name, path in written.items()}


def _write_catalog_files(out_dir: Path, count: int, seed: int, general: int, general_train: int) -> dict[str, Path]:
    from rich.progress import track

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    items = make_items(count, seed)
    rng = random.Random(seed + 1)
    # The mid set draws from its own generator, so adding it left every other file's bytes as they were.
    mid_rng = random.Random(f"mid:{seed}")
    captions, mid, instruct, compliance, bench = [], [], [], [], {}
    for item in track(items, description="rendering catalog", transient=True, disable=count < 200):
        boxes, marks = [], []
        for index, (view, path) in enumerate(zip(item.views, image_paths(item), strict=True)):
            image, view_marks = render_view_with_marks(item, view, index)
            image.save(out_dir / path, format="PNG")
            boxes.append([list(mark.box) for mark in view_marks])
            marks.append(view_marks)
        if item.split == "train":
            captions.append(chat(image_paths(item)[:1], prompts.caption_prompt(), caption(item)))
            for view, path, view_marks in zip(item.views, image_paths(item), marks, strict=True):
                mid.extend(chat([path], q, a) for q, a in view_pairs(item, view, view_marks, mid_rng))
            instruct.extend(instructions(item, rng, boxes))
            compliance.extend(compliance_records(item, boxes))
        else:
            for task, records in bench_records(item, boxes).items():
                bench.setdefault(task, []).extend(records)
    bench["general"] = write_general(out_dir, "probe", general, seed)
    paths = {"captions": out_dir / "captions.jsonl", "mid": out_dir / "mid.jsonl",
             "general_train": out_dir / GENERAL_TRAIN_FILE,
             "instruct": out_dir / "instruct.jsonl", "compliance": out_dir / "compliance.jsonl",
             "items": out_dir / "items.jsonl", "bench": out_dir / "bench",
             "listings": out_dir / "listings.jsonl", "listings_truth": out_dir / "listings-truth.jsonl"}
    write_jsonl_atomic(paths["captions"], captions)
    write_jsonl_atomic(paths["mid"], mid)
    write_jsonl_atomic(paths["instruct"], instruct)
    write_jsonl_atomic(paths["compliance"], compliance)
    write_jsonl_atomic(paths["general_train"], write_general(out_dir, "train", general_train, seed))
    write_jsonl_atomic(paths["items"], [asdict(i) for i in items])
    listings = [seller_listing(item, image_paths(item), seed) for item in items]
    write_jsonl_atomic(paths["listings"], [listing for listing, _ in listings])
    write_jsonl_atomic(paths["listings_truth"], [truth for _, truth in listings])
    for task, records in bench.items():
        # bench image paths are relative to the bench folder
        for record in records:
            record["images"] = [f"../{p}" for p in record["images"]]
        write_jsonl_atomic(paths["bench"] / f"{task}.jsonl", records)
    return paths
