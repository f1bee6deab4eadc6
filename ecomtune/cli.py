"""The `ecomtune` command line. Each command is thin: parse -> build -> run -> report.

User mistakes arrive as `EcomtuneError` and are printed as one block with a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ecomtune.config.stages import STAGE_INFO  # cheap: names and titles only

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt any Hugging Face vision-language model to e-commerce understanding: align -> mid -> sft.")
console = Console(stderr=True)
stdout = Console()


RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe YAML (see `ecomtune recipes`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key: --set sft.lora.r=8 (repeatable).")
BackboneOpt = typer.Option(None, "--backbone", "-b", help="Alias, hub id or local folder (overrides the recipe).")
DataOpt = typer.Option(None, "--data", "-d", help="The stage's data (overrides the recipe): a JSONL / JSON file, a "
                       "dataset folder, a hub dataset id or a LLaVA-OneVision mixture YAML.")
OutputOpt = typer.Option(..., "--output", "-o", help="Run folder to write.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
ImagesOpt = typer.Option(None, "--images", help="Multi-image strategy: all, primary, grid or crops "
                         "(default: the recipe's; for a run, the strategy it trained with).")
MaxImagesOpt = typer.Option(None, "--max-images", min=1, help="Cap on images per item (all, crops).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a non-empty output folder (the old one is replaced "
                            "only once the new one is complete).")


def _quiet_libraries() -> None:
    from ecomtune.library_output import quiet_libraries

    quiet_libraries()


def _recipe(recipe: Path | None, sets: list[str] | None, stage: str, backbone: str | None, data: Path | None,
            images: str | None = None):
    """The recipe with --set overrides, then the typed options (which win over a --set of the same key).

    The options go in as values, not `key=value` strings: re-read as YAML, `--data "data #1.jsonl"` would lose
    everything after the `#`.
    """
    from ecomtune.config.recipe_files import load_recipe

    options = {"backbone.name": backbone, f"{stage}.data": data, f"{stage}.images.strategy": images}
    return load_recipe(recipe, list(sets or []), {key: value for key, value in options.items() if value})


def _image_settings(model: str, strategy: str | None, max_images: int | None):
    """The strategy for bench / predict: the run's (or the default), with the command line's changes."""
    from pydantic import ValidationError

    from ecomtune.config.schema import ImageSettings
    from ecomtune.errors import ConfigError
    from ecomtune.runs.loading import run_images

    if strategy is None and max_images is None:
        return None
    changes = {k: v for k, v in (("strategy", strategy), ("max_images", max_images)) if v is not None}
    try:
        return ImageSettings(**{**run_images(model).model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(f"--images {strategy}: {exc.errors()[0]['msg']}",
                          fix="choose all, primary, grid or crops") from None


def recipe_dirs() -> list[Path]:
    from ecomtune.config.recipe_files import SHIPPED_RECIPES

    return list(dict.fromkeys(p.resolve() for p in (Path.cwd() / "recipes", SHIPPED_RECIPES) if p.is_dir()))


@app.command()
def backbones(
    inspect: str = typer.Option(None, "--inspect", help="A model (alias, hub id or folder) to show the resolved "
                                "roles and parameter counts of; weights are not loaded."),
    vision_tower: str = typer.Option(None, "--vision-tower", help="With --inspect: the vision tower's module path."),
    projector: list[str] = typer.Option(None, "--projector", help="With --inspect: the projector's module path(s)."),
    language_model: str = typer.Option(None, "--language-model", help="With --inspect: the LM's module path."),
) -> None:
    """The capability matrix of every family, or (--inspect MODEL) what ecomtune finds in one model."""
    if inspect:
        _quiet_libraries()
        from ecomtune.backbones.inspection import inspect_backbone, print_inspection
        from ecomtune.backbones.spec import RoleOverrides

        overrides = RoleOverrides(vision_tower, tuple(projector) if projector else None, language_model)
        print_inspection(inspect_backbone(inspect, overrides), stdout)
        return
    from ecomtune.backbones.inspection import print_capabilities

    print_capabilities(stdout)


@app.command()
def recipes() -> None:
    """List the shipped recipes with the first line of each header."""
    table = Table(title="recipes")
    table.add_column("recipe")
    table.add_column("what it is")
    seen = set()
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.name in seen:
                continue
            seen.add(path.name)
            lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
            table.add_row(str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path),
                          lines[0] if lines else "")
    stdout.print(table)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML to check."), sets: list[str] = SetOpt) -> None:
    """Check a recipe: every problem (unknown key, wrong type, impossible combination) at once."""
    from ecomtune.config.recipe_files import load_recipe

    load_recipe(recipe, sets)
    stdout.print(f"[green]{recipe}: valid[/green]")


def _stage_command(name: str, title: str, starts_from: tuple[str, ...]):
    """The command of one stage of the registry: every stage takes the same options."""
    init_help = (f"A finished run to start from: {' or '.join(starts_from)} (an align run gives its projector; a "
                 "LoRA run's adapter is continued)." if starts_from else "Not taken: this stage starts from the "
                 "backbone.")

    def command(recipe: Path = RecipeOpt, backbone: str = BackboneOpt, data: Path = DataOpt, output: Path = OutputOpt,
                init_from: Path = typer.Option(None, "--init-from", help=init_help), sets: list[str] = SetOpt,
                resume: bool = ResumeOpt, overwrite: bool = OverwriteOpt, images: str = ImagesOpt,
                verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' own output (weight "
                                             "loading, warnings, the Trainer's bar and metric dicts); by default "
                                             "it goes to train.log in the run folder.")) -> None:
        from ecomtune.library_output import set_verbose

        set_verbose(verbose)
        _quiet_libraries()
        from ecomtune.train.printouts import print_stage_result
        from ecomtune.train.stages import run_stage

        result = run_stage(name, _recipe(recipe, sets, name, backbone, data, images), output, init_from=init_from,
                           resume=resume, overwrite=overwrite, recipe_file=recipe)
        print_stage_result(result, stdout)

    command.__doc__ = f"Stage {name}: {title}."
    return command


for _stage in STAGE_INFO.values():
    app.command(_stage.name)(_stage_command(_stage.name, _stage.title, _stage.init_from))


@app.command()
def plan(recipe: Path = typer.Argument(None, help="Recipe YAML (default: the built-in recipe)."),
         stage: str = typer.Option("sft", "--stage", help=f"Which stage to plan: {', '.join(STAGE_INFO)}."),
         backbone: str = BackboneOpt, data: Path = DataOpt, sets: list[str] = SetOpt, images: str = ImagesOpt,
         gpu_memory: float = typer.Option(None, "--gpu-memory", min=1, help="GPU memory in GB (the stage's "
                                          "gpu_memory_gb, 24 by default)."),
         photo: str = typer.Option("1200x1600", "--photo", help="Without data: the photo size (WxH) planned."),
         images_per_sample: int = typer.Option(1, "--images-per-sample", min=0, help="Without data: photos per "
                                               "sample."),
         text_tokens: int = typer.Option(256, "--text-tokens", min=1, help="Without data: text tokens per sample."),
         out: Path = typer.Option(None, "--out", "-o", help="Also write the plan as JSON."),
         overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.")) -> None:
    """Measure every sample with the real processor and estimate peak GPU memory, before training. Without data,
    plan a sample of --text-tokens and --images-per-sample photos of --photo pixels: what fits, the largest
    max_length / images / batch that fit, and the setting to change."""
    _quiet_libraries()
    from ecomtune.runs.manifest import write_json_atomic
    from ecomtune.train.plan import plan_stage, plan_without_data
    from ecomtune.train.printouts import print_fit_plan, print_plan

    _check_stage(stage)
    extra = [f"{stage}.gpu_memory_gb={gpu_memory}"] if gpu_memory else []
    chosen = _recipe(recipe, [*(sets or []), *extra], stage, backbone, data, images)
    _check_results_file(out, overwrite, recipe, getattr(chosen, stage).data)
    if getattr(chosen, stage).data is None:
        report = plan_without_data(chosen, stage, _photo_size(photo), images_per_sample, text_tokens)
        print_fit_plan(report, stdout)
    else:
        report = plan_stage(chosen, stage)
        print_plan(report, stdout)
    if out:
        write_json_atomic(out, report)
        stdout.print(f"plan: {out}")


def _photo_size(text: str) -> tuple[int, int]:
    from ecomtune.errors import ConfigError

    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ConfigError(f"--photo {text}: not a size", fix="give width x height in pixels, e.g. --photo 1200x1600")
    return int(width), int(height)


@app.command()
def profile(recipe: Path = typer.Argument(..., help="Recipe YAML."),
            steps: int = typer.Option(10, "--steps", min=2, help="Optimizer steps per run (the first is untimed)."),
            stage: str = typer.Option("sft", "--stage", help=f"Which stage to profile: {', '.join(STAGE_INFO)}."),
            repeats: int = typer.Option(1, "--repeats", min=1, help="Rounds of all runs; each run's median is "
                                        "shown (3 steadies figures on a busy machine)."),
            backbone: str = BackboneOpt, data: Path = DataOpt, sets: list[str] = SetOpt,
            out: Path = typer.Option(None, "--out", "-o", help="Also write the figures as JSON."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.")) -> None:
    """Train N steps with TRL's collator, then ecomtune with packing off and on: tokens/s, padding, memory."""
    _quiet_libraries()
    from ecomtune.train.printouts import print_profile
    from ecomtune.train.profile import profile_recipe, write_profile

    _check_stage(stage)
    chosen = _recipe(recipe, sets, stage, backbone, data, None)
    _check_results_file(out, overwrite, recipe, getattr(chosen, stage).data)
    rows = profile_recipe(chosen, stage, steps, progress=lambda mode: stdout.print(f"[dim]profiling {mode}...[/dim]"),
                          repeats=repeats)
    print_profile(rows, chosen, stage, steps, repeats, stdout)
    if out:
        write_profile(rows, out, {"recipe": str(recipe), "stage": stage, "steps": steps, "repeats": repeats,
                                  "device": "cuda" if _cuda() else "cpu"})
        stdout.print(f"profile: {out}")


def _check_results_file(out: Path | None, overwrite: bool, recipe: Path | None, data) -> None:
    """A plan or profile JSON may not overwrite the recipe, the data or an earlier file unless told to."""
    from ecomtune.runs.outputs import Guarded, check_file_output

    if out is None:
        return
    inputs = [("recipe", recipe)] if recipe else []
    if data is not None and not isinstance(data, list):
        inputs.append(("data", Path(data)))
    check_file_output(out, overwrite, Guarded(files=inputs))


def _check_stage(stage: str) -> None:
    from ecomtune.errors import ConfigError

    if stage not in STAGE_INFO:
        raise ConfigError(f"--stage {stage} is not a stage", fix=f"use --stage {' or '.join(STAGE_INFO)}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


bench_app = typer.Typer(help="The compact benchmark suite.", invoke_without_command=True, no_args_is_help=False)
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="Backbone alias, hub id, local folder, or a run folder."),
    tasks: str = typer.Option("all", "--tasks", "-t", help="all, or a comma list of task names."),
    data: Path = typer.Option(None, "--data", "-d",
                              help="Folder with <task>.jsonl files; default: data_samples/bench."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the results JSON here."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most N examples per task."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts per generation batch."),
    judge: str = typer.Option(None, "--judge", help="Item-intelligence judge: field-match (default), an "
                              "OpenAI-compatible URL, or a local model folder / hub id."),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit/--no-4bit",
                                      help="Base precision; default: 4-bit when the run trained on a 4-bit base."),
    images: str = ImagesOpt,
    max_images: int = MaxImagesOpt,
    judge_plain_http: bool = typer.Option(False, "--judge-plain-http", help="Send ECOMTUNE_JUDGE_API_KEY to an "
                                          "http:// judge on another machine (refused by default: it travels "
                                          "unencrypted)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    general: str = typer.Option(None, "--general", help="Also run lmms-eval tasks for the general-skill check, e.g. "
                                "lmms-eval:mmbench_en_dev,mme,textvqa_val (needs the eval extra, a model folder and "
                                "the tasks' data cached or the hub reachable; scores under general_harness)."),
) -> None:
    """Run the benchmark tasks on a model: `ecomtune bench --model runs/sft --tasks all`."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        raise typer.BadParameter("--model is required", param_hint="--model")
    _quiet_libraries()
    from ecomtune.bench.result_tables import attribute_table, print_table, results_table
    from ecomtune.bench.runner import run_bench

    data = data or Path("data_samples/bench")
    settings = dict(limit=limit, batch_size=batch_size, judge=judge, load_in_4bit=load_in_4bit,
                    images=_image_settings(model, images, max_images), judge_plain_http=judge_plain_http)
    if general:
        from ecomtune.bench.general_harness import general_table, run_bench_with_general

        results = run_bench_with_general(general, model, tasks, data, out=out, overwrite=overwrite, **settings)
    else:
        results = run_bench(model, tasks, data, out=out, overwrite=overwrite, **settings)
    print_table(results_table(results))
    if "deep-fashion" in results["tasks"]:
        print_table(attribute_table(results))
    if general:
        print_table(general_table(results))
    if out:
        stdout.print(f"results: {out}")


@bench_app.command("export")
def bench_export(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the task package (YAML per task + utils.py)."),
    fmt: str = typer.Option("lmms-eval", "--format", help="Harness to export for: lmms-eval."),
    data: Path = typer.Option(None, "--data", "-d", help="Folder with <task>.jsonl files; default: "
                              "data_samples/bench. The package reads it in place (absolute paths)."),
    tasks: str = typer.Option("all", "--tasks", "-t", help="all, or a comma list of task names."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Write the benchmark as an lmms-eval task package: `lmms-eval --include_path OUT --tasks ecomtune`."""
    from ecomtune.bench.lmms_eval_export import check_format, export_lmms_eval
    from ecomtune.bench.runner import resolve_tasks

    check_format(fmt)
    package = export_lmms_eval(out, data or Path("data_samples/bench"), resolve_tasks(tasks), overwrite)
    for name, harness_task in package.tasks.items():
        stdout.print(f"{harness_task}: {package.items[name]} items ({name})")
    stdout.print(f"package: {package.out} (group: ecomtune)\nrun: python -m lmms_eval --include_path {package.out} "
                 "--tasks ecomtune --model qwen2_vl --model_args pretrained=MODEL_FOLDER --batch_size 1",
                 soft_wrap=True)


@bench_app.command("compare")
def bench_compare(a: Path = typer.Argument(..., help="Results JSON (before)."),
                  b: Path = typer.Argument(..., help="Results JSON (after).")) -> None:
    """Print two results files side by side with the deltas (B - A)."""
    from ecomtune.bench.result_tables import compare_table, load_results, print_table

    print_table(compare_table(load_results(a), load_results(b)))


@bench_app.command("report")
def bench_report(
    results: list[Path] = typer.Argument(..., help="Results JSON files, oldest first (e.g. before.json after.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write."),
    examples: int = typer.Option(50, "--examples", min=0, help="Example cards per task (from the last file)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """One self-contained HTML page: scores per task and attribute as bars, example cards filterable to failures.
    The terminal gets the same files side by side: headline per task, the general suite per skill."""
    from ecomtune.bench.html_report import labels, write_report
    from ecomtune.bench.result_tables import columns_table, load_results
    from ecomtune.runs.outputs import Guarded, check_file_output

    check_file_output(out, overwrite, Guarded(files=[("results file", p) for p in results]))
    stdout.print(columns_table([(label, load_results(p)) for label, p in zip(labels(results), results, strict=True)]))
    stdout.print(f"report: {write_report(results, out, examples)}")


@bench_app.command("strategies")
def bench_strategies(
    output: Path = typer.Option(Path("runs/strategies"), "--output", "-o", help="Folder for the study's runs."),
    strategies: str = typer.Option("all,crops,primary", "--strategies", help="Comma list of strategies."),
    items: int = typer.Option(480, "--items", min=12, help="Catalog size (a quarter is held out)."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(None, "--steps", min=1, help="sft steps per strategy (default: the tiny recipe's)."),
    sets: list[str] = SetOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train one tiny model per multi-image strategy and compare visual tokens, items/s and item F1."""
    _quiet_libraries()
    from ecomtune.bench.result_tables import print_strategy_study
    from ecomtune.studies.strategy_study import run_strategy_study

    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    report = run_strategy_study(output, chosen, items, seed, steps, sets, overwrite)
    print_strategy_study(report, stdout)
    stdout.print(f"study: {output / 'study.json'}")


@app.command()
def predict(
    model: str = typer.Option(..., "--model", "-m", help="Backbone alias, hub id, local folder, or a run folder."),
    data: Path = typer.Option(..., "--data", "-d", help="Items JSONL: id, images and the fields the task's prompt "
                              "reads (README, 'Benchmark')."),
    task: str = typer.Option(..., "--task", "-t", help="One benchmark task, e.g. item-intelligence."),
    out: Path = typer.Option(..., "--out", "-o", help="Predictions JSONL (resumed if it exists)."),
    data_root: Path = typer.Option(None, "--data-root", help="Folder that relative image paths must stay inside "
                                   "(default: the folder above the data file's, as for bench)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Items per generation batch."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most N items."),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit/--no-4bit", help="Base precision (as bench)."),
    images: str = ImagesOpt,
    max_images: int = MaxImagesOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an --out made by another model, task, data "
                                   "or settings (once the new file is complete)."),
) -> None:
    """Batched greedy predictions for one task, parsed like bench; resumable (items already answered are
    skipped); the output file appears only once every item is answered."""
    _quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ecomtune.bench.predict import run_predict

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} items/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("predict", total=None, rate="-")
        clock: list[float] = []

        def show(done: int, total: int) -> None:
            clock.append(time.perf_counter())
            rate = f"{done / (clock[-1] - clock[0]):.2f}" if done else "-"
            progress.update(bar, completed=done, total=total, rate=rate)

        summary = run_predict(model, data, task, out, _image_settings(model, images, max_images), batch_size,
                              limit, load_in_4bit, on_progress=show, root=data_root, overwrite=overwrite)
    stdout.print(f"{summary.out}: {summary.total} items ({summary.skipped} already answered, {summary.predicted} "
                 f"predicted, {summary.parsed} parsed), {summary.items_per_second:.2f} items/s, "
                 f"{summary.images_per_item:.1f} images per item")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A finished run folder (align, mid or sft)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the exported model to."),
    fmt: str = typer.Option("merged", "--format", help="merged: one model folder (transformers, lmms-eval, vLLM); "
                            "vllm: base with the projector baked in + a language-model-only LoRA adapter."),
    merge_base: str = typer.Option("dequantized", "--merge-base", help="dequantized: the 4-bit base the adapter "
                                   "trained on, dequantized (reproduces the run); pristine: the base's original "
                                   "weights (no 4-bit rounding, drifts from the run by the quantization error)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
    samples: int = typer.Option(4, "--samples", min=1, help="Rendered product images to verify on."),
    image: list[Path] = typer.Option(None, "--image", help="Verify on this image instead (repeatable)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """A merged model (or vLLM's base + adapter layout) that plain transformers load, verified against the run."""
    _quiet_libraries()
    from ecomtune.export.runner import run_export
    from ecomtune.export.summary import print_export

    choices = {"--format": (fmt, ("merged", "vllm")), "--merge-base": (merge_base, ("dequantized", "pristine")),
               "--dtype": (dtype, ("bfloat16", "float16", "float32"))}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: choose from {', '.join(allowed)}", param_hint=option)
    with console.status("exporting: merge, save, verify against the run"):
        result = run_export(run, out, fmt, merge_base, dtype, samples, image or None, overwrite)  # type: ignore[arg-type]
    print_export(result, stdout)


@app.command()
def crop(items: Path = typer.Argument(..., help="Items in the canonical JSONL format (several images each)."),
         out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for images/ and items.jsonl."),
         boxes: Path = typer.Option(None, "--boxes", help='JSON {"image path": [[x0, y0, x1, y1], ...]}, each key '
                                    "an image path as the items file writes it (or absolute); default: each "
                                    "record's own 'boxes' (one list per image)."),
         margin: float = typer.Option(0.1, min=0.0, help="Grow each box by this fraction of its size."),
         max_images: int = typer.Option(10, "--max-images", min=1, help="Images per item after cropping."),
         threshold: int = typer.Option(6, "--dedupe-threshold", min=0, help="pHash bits under which two images "
                                       "count as duplicates."),
         backbone: str = typer.Option("tiny-qwen2-vl", "--backbone", "-b",
                                      help="Whose processor counts the visual tokens."),
         grounding: str = typer.Option(None, "--grounding", help="A grounding VLM (alias, folder or run) asked "
                                       "for the boxes of every image, instead of --boxes or the records' own."),
         grounding_coords: str = typer.Option("auto", "--grounding-coords", help="What the grounding model's boxes "
                                              "are in: auto (by family), pixels, norm1000 or resized."),
         overwrite: bool = OverwriteOpt) -> None:
    """Originals plus one square crop per boxed image, de-duplicated and capped; prints images and visual
    tokens per item before and after."""
    _quiet_libraries()
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.data.item_crops import boxes_from_file, crop_file, print_crop_summary
    from ecomtune.errors import ConfigError

    if grounding_coords not in ("auto", "pixels", "norm1000", "resized"):
        raise ConfigError(f"--grounding-coords {grounding_coords} is not known",
                          fix="use auto, pixels, norm1000 or resized")
    if boxes and grounding:
        raise ConfigError("--boxes and --grounding both give boxes", fix="pass one of them")
    processor = load_processor(resolve_backbone(backbone))
    boxes_for = boxes_from_file(boxes) if boxes else None
    if grounding:
        from ecomtune.bench.grounding import grounding_boxes
        from ecomtune.data.schema import load_samples

        paths = list(dict.fromkeys(p for s in load_samples(items) for p in s.images))
        boxes_for, found = grounding_boxes(grounding, paths, grounding_coords)
        stdout.print(f"grounding {grounding}: {found['boxes']} boxes on {found['images']} images "
                     f"({found['dropped']} outside their image, dropped)")
    summaries = crop_file(items, out_dir, boxes_for, processor, margin, max_images, threshold, overwrite, boxes,
                          warn=lambda text: console.print(text, style="bold yellow", markup=False, highlight=False))
    print_crop_summary(summaries, out_dir, stdout)


@app.command()
def curate(
    listings: Path = typer.Argument(..., help="Raw listings, JSONL or CSV: id, title, category, aspects, images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the steps, instruct.jsonl, captions.jsonl and "
                             "report.json (resumed when it holds this same curation)."),
    captioner: str = typer.Option(None, "--captioner", help="VLM that describes each primary image: alias, hub id, "
                                  "folder, run folder, or an OpenAI-compatible endpoint URL."),
    verifier: str = typer.Option(None, "--verifier", help="Model that gives the verdicts (default: the captioner): "
                                 "an LLM reading captions, or with --verify vqa a VLM looking at the image."),
    verify: str = typer.Option("caption", "--verify", help="caption (an LLM reads the caption, as in the paper) or "
                               "vqa (the VLM is asked about the image)."),
    caption_images: str = typer.Option("primary", "--caption-images", help="primary, or all (one caption each)."),
    truth: Path = typer.Option(None, "--truth", help="Known truth to score against (default: NAME-truth.jsonl "
                               "beside the listings, as `ecomtune synth` writes it)."),
    cache: Path = typer.Option(None, "--cache", help="Answer cache JSONL shared between curations (default: "
                               "OUT/cache.jsonl)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Questions per generation batch."),
    limit: int = typer.Option(None, "--limit", min=1, help="The first N listings only."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out bad rows (listed in the report) instead of "
                                  "stopping."),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="Model name sent to an endpoint URL."),
    plain_http: bool = typer.Option(False, "--plain-http", help="Allow sending ECOMTUNE_API_KEY over plain http "
                                    "to another machine."),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit/--no-4bit", help="Base precision (as bench)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Visual verification: clean seller aspects, caption, keep only what the image supports, build instructions."""
    _quiet_libraries()
    from ecomtune.curate.curation_report import render_report
    from ecomtune.curate.runner import CurateOptions, run_curate

    options = CurateOptions(captioner, verifier, verify, caption_images, batch_size, seed=0, load_in_4bit=load_in_4bit,
                            endpoint_model=endpoint_model, plain_http=plain_http, skip_bad=skip_bad, limit=limit,
                            truth=truth, cache=cache, overwrite=overwrite)
    render_report(run_curate(listings, out, options, console), stdout)


@app.command()
def demo(output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Folder for the demo's runs."),
         seed: int = typer.Option(0, help="Seed of the synthetic catalog."),
         items: int = typer.Option(480, "--items", min=12, help="Catalog size (a quarter is held out)."),
         sets: list[str] = SetOpt, overwrite: bool = OverwriteOpt) -> None:
    """Run the recipe end to end on the embedded default: tiny Qwen2-VL, synthetic catalog, CPU."""
    _quiet_libraries()
    from ecomtune.studies.demo import run_demo

    run_demo(output, seed, items, overwrite, sets)


@app.command()
def synth(out_dir: Path = typer.Option(..., "--out", help="Folder to write images and JSONL files to."),
          items: int = typer.Option(48, "--items", min=1, help="Number of products."),
          seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
          general: int = typer.Option(180, "--general", min=6, help="General-world probe items (bench/general.jsonl)."),
          general_train: int = typer.Option(1200, "--general-train", min=0,
                                            help="General-world training items for replay (general-train.jsonl)."),
          overwrite: bool = OverwriteOpt) -> None:
    """Generate a deterministic synthetic catalog (rendered products + captions + instructions)."""
    from ecomtune.synth.catalog import write_catalog

    written = write_catalog(out_dir, items, seed, general=general, general_train=general_train, overwrite=overwrite)
    for name, path in written.items():
        stdout.print(f"{name}: {path}")


def main() -> None:
    """Run the app. User mistakes and faults of the environment end in one message and exit 2 (see
    `ecomtune.errors.user_facing`); anything else is a bug and keeps its traceback, saying so."""
    from ecomtune.errors import user_facing

    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: a training run can be continued with --resume; finished outputs are intact")
        sys.exit(130)
    except Exception as exc:
        error = user_facing(exc)
        if error is None:
            console.print("[bold red]This is a bug in ecomtune, not something you did; please report it with the "
                          "traceback below.[/bold red]")
            raise
        # Every process of a launch meets the same checks: the first process of each machine prints the message,
        # the others one line, so 8 GPUs do not print it 8 times.
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            console.print("[bold red]error:[/bold red] ", end="")
            console.print(error.render(), markup=False, highlight=False)
        else:
            console.print(f"process {os.environ.get('RANK', '?')}: stopped: {error.title.splitlines()[0]} (the "
                          "machine's first process prints it in full)", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
