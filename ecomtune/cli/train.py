"""The training commands: one per stage of the recipe (`ecomtune align`, `mid`, `sft`), and `ecomtune plan` and
`ecomtune profile`, which measure a stage before (or instead of) training it."""

from __future__ import annotations

from pathlib import Path

import typer

from ecomtune.cli.options import (
    BackboneOpt,
    DataOpt,
    ImagesOpt,
    OutputOpt,
    OverwriteOpt,
    RecipeOpt,
    ResumeOpt,
    SetOpt,
    stdout,
)
from ecomtune.config.stages import STAGES  # cheap: names and titles only
from ecomtune.library_output import quiet_libraries, set_verbose
from ecomtune.runs.files import LIBRARY_LOG


def stage_command(name: str, title: str, starts_from: tuple[str, ...]):
    """The command of one stage of the registry: every stage takes the same options."""
    init_help = (f"A finished run to start from: {' or '.join(starts_from)} (an align run gives its projector; a "
                 "LoRA run's adapter is continued)." if starts_from else "Not taken: this stage starts from the "
                 "backbone.")

    def command(recipe: Path = RecipeOpt, backbone: str = BackboneOpt, data: Path = DataOpt, output: Path = OutputOpt,
                init_from: Path = typer.Option(None, "--init-from", help=init_help), sets: list[str] = SetOpt,
                resume: bool = ResumeOpt, overwrite: bool = OverwriteOpt, images: str = ImagesOpt,
                verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' own output (weight "
                                             "loading, warnings, the Trainer's bar and metric dicts); by default "
                                             f"it goes to {LIBRARY_LOG} in the run folder.")) -> None:
        set_verbose(verbose)
        quiet_libraries()
        from ecomtune.config.command_options import recipe_with_options
        from ecomtune.train.printouts import print_stage_result
        from ecomtune.train.stages import run_stage

        result = run_stage(name, recipe_with_options(recipe, sets, name, backbone, data, images), output,
                           init_from=init_from, resume=resume, overwrite=overwrite, recipe_file=recipe)
        print_stage_result(result, stdout)

    command.__doc__ = f"Stage {name}: {title}."
    return command


def register_stages(app: typer.Typer) -> None:
    """One command per stage, in the recipe's order."""
    for stage in STAGES.values():
        app.command(stage.name)(stage_command(stage.name, stage.title, stage.init_from))


def plan(recipe: Path = typer.Argument(None, help="Recipe YAML (default: the built-in recipe)."),
         stage: str = typer.Option("sft", "--stage", help=f"Which stage to plan: {', '.join(STAGES)}."),
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
    quiet_libraries()
    from ecomtune.runs.manifest import write_json_atomic
    from ecomtune.train.plan_and_profile import plan_from_options
    from ecomtune.train.printouts import print_fit_plan, print_plan

    planned = plan_from_options(recipe, stage, backbone, data, sets, images, gpu_memory, photo, images_per_sample,
                                text_tokens, out, overwrite)
    (print_fit_plan if planned.without_data else print_plan)(planned.report, stdout)
    if out:
        write_json_atomic(out, planned.report)
        stdout.print(f"plan: {out}")


def profile(recipe: Path = typer.Argument(..., help="Recipe YAML."),
            steps: int = typer.Option(10, "--steps", min=2, help="Optimizer steps per run (the first is untimed)."),
            stage: str = typer.Option("sft", "--stage", help=f"Which stage to profile: {', '.join(STAGES)}."),
            repeats: int = typer.Option(1, "--repeats", min=1, help="Rounds of all runs; each run's median is "
                                        "shown (3 steadies figures on a busy machine)."),
            backbone: str = BackboneOpt, data: Path = DataOpt, sets: list[str] = SetOpt,
            out: Path = typer.Option(None, "--out", "-o", help="Also write the figures as JSON."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.")) -> None:
    """Train N steps with TRL's collator, then ecomtune with packing off and on: tokens/s, padding, memory."""
    quiet_libraries()
    from ecomtune.train.plan_and_profile import profile_context, profile_from_options
    from ecomtune.train.printouts import print_profile
    from ecomtune.train.profile import write_profile

    profiled = profile_from_options(recipe, stage, backbone, data, sets, steps, repeats, out, overwrite,
                                    progress=lambda mode: stdout.print(f"[dim]profiling {mode}...[/dim]"))
    print_profile(profiled.rows, profiled.recipe, stage, steps, repeats, stdout)
    if out:
        write_profile(profiled.rows, out, profile_context(recipe, stage, steps, repeats))
        stdout.print(f"profile: {out}")
