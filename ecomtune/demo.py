"""`ecomtune demo`: the whole recipe on the embedded default, offline, on a CPU, in a few minutes.

Generates the synthetic catalog, benchmarks the untrained tiny-qwen2-vl, runs align -> mid -> sft with
the shipped tiny recipe (mid continues from align's projector, sft continues mid's adapter), benchmarks
again, prints before/after per task, and exports the sft run as one merged model folder, verified against the
run, and writes an HTML report of both benchmarks. The bar is printed as
measured: after sft, deep-fashion colour and pattern accuracy should beat their majority-class
baselines, i.e. the model reads the picture.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ecomtune.bench.html_report import write_report
from ecomtune.bench.report import attribute_table, compare_table
from ecomtune.bench.runner import run_bench
from ecomtune.config.loading import SHIPPED_RECIPES, load_recipe
from ecomtune.export.runner import run_export
from ecomtune.runs.outputs import locked, refuse_non_empty
from ecomtune.synth.catalog import write_catalog
from ecomtune.train.stages import run_stage

DEMO_RECIPE = SHIPPED_RECIPES / "tiny-qwen2-vl.yaml"
BAR_ATTRIBUTES = ("colour", "pattern")


def bar_report(results: dict) -> list[tuple[str, float, float, bool]]:
    """(attribute, accuracy, majority baseline, beats it) for the attributes of the demo's bar."""
    rows = results["tasks"]["deep-fashion"]["scores"]["by_attribute"]
    return [(a, rows[a]["accuracy"], rows[a]["majority_baseline"], rows[a]["accuracy"] > rows[a]["majority_baseline"])
            for a in BAR_ATTRIBUTES if a in rows]


def run_demo(output: Path, seed: int = 0, items: int = 480, overwrite: bool = False,
             overrides: list[str] | None = None) -> dict[str, Path]:
    """The whole demo into `output`, which must be empty unless `overwrite` (then each part is replaced once its
    new version is complete). `overrides`: `--set` changes to the tiny recipe (e.g. fewer steps)."""
    output = Path(output)
    with locked(output):
        refuse_non_empty(output, overwrite)
        return _run_demo(output, seed, items, overrides or [])


def _run_demo(output: Path, seed: int, items: int, overrides: list[str]) -> dict[str, Path]:
    console = Console()
    console.rule("[bold]1/7 synthetic catalog")
    data = write_catalog(output / "catalog", items, seed, overwrite=True)
    console.print(f"{items} items -> {data['captions']}, {data['instruct']}, benchmark in {data['bench']}")
    recipe = load_recipe(DEMO_RECIPE, overrides, values={"align.data": data["captions"], "mid.data": data["mid"],
                                                         "sft.data": data["instruct"]})

    console.rule("[bold]2/7 bench: untrained backbone")
    before = run_bench(recipe.backbone.name, "all", data["bench"], out=output / "bench-before.json",
                     overwrite=True)
    console.rule("[bold]3/7 align: projector only")
    aligned = run_stage("align", recipe, output / "align", overwrite=True)
    console.rule("[bold]4/7 mid: re-captions and label reading, QLoRA")
    mid = run_stage("mid", recipe, output / "mid", init_from=aligned.output, overwrite=True)
    console.rule("[bold]5/7 sft: instructions, continuing mid's adapter")
    tuned = run_stage("sft", recipe, output / "sft", init_from=mid.output, overwrite=True)
    console.rule("[bold]6/7 bench: after align + mid + sft")
    after = run_bench(str(tuned.output), "all", data["bench"], out=output / "bench-after.json",
                    overwrite=True)
    console.rule("[bold]7/7 export: one merged model folder that plain transformers load")
    exported = run_export(tuned.output, output / "export", overwrite=True)
    check = exported.verification
    console.print(f"{exported.model_folder}: {exported.manifest['dtype']}, verified against the sft run on "
                  f"{check.samples} images: max logit difference {check.relative_diff:.2%} of the largest logit "
                  f"(allowed {check.tolerance:.0%}), greedy tokens agree at {check.token_agreement:.0%}")

    console.rule("[bold]results")
    console.print(compare_table(before, after, ("before", "after"), exclude=("by_subset", "by_aspect")))
    console.print(attribute_table(after))
    for attribute, accuracy, majority, beats in bar_report(after):
        verdict = "[green]beats[/green]" if beats else "[red]does not beat[/red]"
        console.print(f"deep-fashion {attribute}: accuracy {accuracy:.3f} {verdict} the majority-class baseline "
                      f"{majority:.3f}")
    for result in (aligned, mid, tuned):
        m = result.manifest
        trained = ", ".join(f"{r['component']} {r['trainable']:,}" for r in m["parameters"] if r["trainable"])
        console.print(f"{m['stage']}: trained {trained} params in {m['metrics']['global_step']} steps "
                      f"({m['metrics'].get('train_runtime', 0):.0f}s) -> {result.output}")
    report = write_report([output / "bench-before.json", output / "bench-after.json"], output / "report.html")
    console.print(f"bench results: {output / 'bench-before.json'}, {output / 'bench-after.json'} "
                  f"(compare again with `ecomtune bench compare`); open {report} for bars and examples")
    return {"align": aligned.output, "mid": mid.output, "sft": tuned.output, "before": output / "bench-before.json",
            "after": output / "bench-after.json", "export": exported.model_folder, "report": report}
