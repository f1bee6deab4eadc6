"""`ecomtune bench strategies`: the multi-image strategies compared on the synthetic catalog's items.

One align run is shared; then, per strategy, sft trains with that strategy and the held-out
multi-image items are measured with it: visual tokens per item (counted by the real processor),
predict items/s (item-intelligence, greedy, batched), and item-intelligence F1 / precision / recall
of the model trained that way. Everything runs on the embedded tiny backbone, so the figures show
the mechanics (cost per item, and whether training under a strategy transfers), not what a 7B would
score.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any

from rich.console import Console

from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.bench.predict import run_predict
from ecomtune.bench.runner import run_bench
from ecomtune.config.recipe_files import SHIPPED_RECIPES, load_recipe
from ecomtune.config.schema import ImageSettings
from ecomtune.data.batches.collator import count_image_tokens
from ecomtune.data.images.strategies import open_image
from ecomtune.data.task_records import read_task_records
from ecomtune.runs.manifest import write_json_atomic
from ecomtune.runs.outputs import locked, refuse_non_empty
from ecomtune.synth.catalog import write_catalog
from ecomtune.tasks.registry import TASKS
from ecomtune.train.stages import run_align, run_sft

RECIPE = SHIPPED_RECIPES / "tiny-qwen2-vl.yaml"
TASK = "item-intelligence"
STUDY_FILE = "study.json"  # in the output folder: the study's figures, as the command prints them


def visual_tokens(processor, records: list[dict[str, Any]]) -> list[int]:
    """Image tokens per item as the processor builds them for the presented images."""
    return [count_image_tokens(processor, [open_image(ref) for ref in r["images"]]) for r in records]


def run_strategy_study(output: Path, strategies: tuple[str, ...] = ("all", "crops", "primary"), items: int = 480,
                       seed: int = 0, sft_steps: int | None = None, overrides: list[str] | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
    """Train and measure one model per strategy (see the module docstring); writes `output/study.json`. `output`
    must be empty unless `overwrite`."""
    output = Path(output)
    with locked(output):
        refuse_non_empty(output, overwrite)
        return _study(output, strategies, items, seed, sft_steps, overrides)


def _study(output: Path, strategies: tuple[str, ...], items: int, seed: int, sft_steps: int | None,
           overrides: list[str] | None) -> dict[str, Any]:
    console = Console()
    catalog = write_catalog(output / "catalog", items, seed, overwrite=True)
    # sft learns item intelligence from compliance.jsonl, beside the single-item instructions
    sft_data = [{"path": str(catalog["instruct"])}, {"path": str(catalog["compliance"])}]
    settings = [f"align.data={catalog['captions']}", *(overrides or [])]
    if sft_steps is not None:
        settings += [f"sft.train.max_steps={sft_steps}", f"sft.train.save_steps={sft_steps}"]
    base = load_recipe(RECIPE if RECIPE.is_file() else None, settings,
                       {"align.data": catalog["captions"], "sft.data": sft_data})
    console.rule("[bold]align (shared)")
    aligned = run_align(base, output / "align", overwrite=True)
    processor = load_processor(resolve_backbone(base.backbone.name, base.backbone.seed), base.backbone)
    items_file = catalog["bench"] / f"{TASK}.jsonl"
    rows: dict[str, Any] = {}
    for strategy in strategies:
        console.rule(f"[bold]sft with images: {strategy}")
        recipe = load_recipe(RECIPE if RECIPE.is_file() else None, settings,
                             {"align.data": catalog["captions"], "sft.data": sft_data,
                              "sft.images.strategy": strategy})
        tuned = run_sft(recipe, output / f"sft-{strategy}", init_from=aligned.output, overwrite=True)
        images = ImageSettings(**recipe.sft.images.model_dump())
        records = read_task_records(items_file, TASKS[TASK], images, catalog["bench"].parent)
        tokens = visual_tokens(processor, records)
        predicted = run_predict(str(tuned.output), items_file, TASK, output / f"predict-{strategy}.jsonl",
                                images, root=catalog["bench"].parent, overwrite=True)
        scores = run_bench(str(tuned.output), TASK, catalog["bench"], out=output / f"bench-{strategy}.json",
                           images=images, overwrite=True)["tasks"][TASK]["scores"]
        rows[strategy] = {
            "images_per_item": {"median": median(len(r["images"]) for r in records),
                                "max": max(len(r["images"]) for r in records)},
            "visual_tokens_per_item": {"median": median(tokens), "max": max(tokens)},
            "predict_items_per_second": round(predicted.items_per_second, 3),
            "scores": {k: scores[k] for k in ("f1", "precision", "recall", "json_parse_rate", "verifiable_correct",
                                               "verifiable_incorrect", "unverifiable")},
            "train_loss": tuned.manifest["metrics"]["train_loss"],
            "steps": tuned.manifest["metrics"]["global_step"],
        }
    report = {"items": len(records), "catalog": {"items": items, "seed": seed}, "strategies": rows}
    write_json_atomic(output / STUDY_FILE, report)
    return report
