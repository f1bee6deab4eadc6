"""`ecomtune demo`: the whole recipe on the embedded default, offline, on a CPU, in a few minutes.

Generates the synthetic catalog, builds tiny-qwen2-vl, runs align then sft with the shipped tiny
recipe, and prints what each stage trained and where it saved it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ecomtune.config.loading import load_recipe
from ecomtune.synth.catalog import write_catalog
from ecomtune.train.stages import run_align, run_sft

DEMO_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-qwen2-vl.yaml"


def run_demo(output: Path, seed: int = 0, items: int = 96) -> dict[str, Path]:
    console = Console()
    output = Path(output)
    console.rule("[bold]1/3 synthetic catalog")
    data = write_catalog(output / "catalog", items, seed)
    console.print(f"{items} products -> {data['captions']} and {data['instruct']}")

    overrides = [f"align.data={data['captions']}", f"sft.data={data['instruct']}"]
    recipe = load_recipe(DEMO_RECIPE if DEMO_RECIPE.is_file() else None, overrides)

    console.rule("[bold]2/3 align: projector only")
    aligned = run_align(recipe, output / "align", overwrite=True)
    console.rule("[bold]3/3 sft: QLoRA")
    tuned = run_sft(recipe, output / "sft", init_from=aligned.output, overwrite=True)

    console.rule("[bold]done")
    for result in (aligned, tuned):
        m = result.manifest
        trained = ", ".join(f"{r['component']} {r['trainable']:,}" for r in m["parameters"] if r["trainable"])
        console.print(f"[bold]{m['stage']}[/bold]: trained {trained} params in {m['metrics']['global_step']} steps, "
                      f"final mean loss {m['metrics']['train_loss']:.3f} -> {result.output}")
    console.print(f"load the adapter with plain transformers + peft: base {tuned.manifest['outputs']['base']}, "
                  f"adapter {tuned.output}")
    return {"align": aligned.output, "sft": tuned.output}
