"""`ecomtune bench` and its subcommands (export, compare, report, strategies), and `ecomtune predict`: scoring a
model on the benchmark tasks, and its raw predictions for one task."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ecomtune.cli.options import ImagesOpt, MaxImagesOpt, OverwriteOpt, SetOpt, console, stdout
from ecomtune.library_output import quiet_libraries

bench_app = typer.Typer(help="The compact benchmark suite.", invoke_without_command=True, no_args_is_help=False)


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
    quiet_libraries()
    from ecomtune.bench.result_tables import print_table
    from ecomtune.bench.run_options import bench_from_options, bench_tables

    results = bench_from_options(model, tasks, data, out, overwrite, general, images, max_images, limit=limit,
                                 batch_size=batch_size, judge=judge, load_in_4bit=load_in_4bit,
                                 judge_plain_http=judge_plain_http)
    for table in bench_tables(results, bool(general)):
        print_table(table)
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
    from ecomtune.bench.run_options import DEFAULT_DATA
    from ecomtune.tasks.registry import resolve_tasks

    check_format(fmt)
    package = export_lmms_eval(out, data or DEFAULT_DATA, resolve_tasks(tasks), overwrite)
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
    quiet_libraries()
    from ecomtune.bench.result_tables import print_strategy_study
    from ecomtune.studies.strategy_study import STUDY_FILE, run_strategy_study

    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    report = run_strategy_study(output, chosen, items, seed, steps, sets, overwrite)
    print_strategy_study(report, stdout)
    stdout.print(f"study: {output / STUDY_FILE}")


def predict(
    model: str = typer.Option(..., "--model", "-m", help="Backbone alias, hub id, local folder, or a run folder."),
    data: Path = typer.Option(..., "--data", "-d", help="Items JSONL: id, images and the fields the task's prompt "
                              "reads (docs/benchmark.md#your-own-labelled-data)."),
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
    quiet_libraries()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ecomtune.bench.predict import run_predict
    from ecomtune.bench.run_options import image_settings

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} items/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("predict", total=None, rate="-")
        clock: list[float] = []

        def show(done: int, total: int) -> None:
            clock.append(time.perf_counter())
            rate = f"{done / (clock[-1] - clock[0]):.2f}" if done else "-"
            progress.update(bar, completed=done, total=total, rate=rate)

        summary = run_predict(model, data, task, out, image_settings(model, images, max_images), batch_size,
                              limit, load_in_4bit, on_progress=show, root=data_root, overwrite=overwrite)
    stdout.print(f"{summary.out}: {summary.total} items ({summary.skipped} already answered, {summary.predicted} "
                 f"predicted, {summary.parsed} parsed), {summary.items_per_second:.2f} items/s, "
                 f"{summary.images_per_item:.1f} images per item")
