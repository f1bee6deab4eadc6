"""The recipe's stages run by one orchestrator, `run_stage`; what each stage is and does is its unit's
(`ecomtune.config.stages` declares it, `ecomtune.train.stage_units` holds its behaviour).

Every stage follows one path: lock the output -> decide where it writes (fresh, resumed, or replacing;
`run_folder`) -> read and check the data (before any model is loaded) and measure every sample with the real
processor (`preparation`) -> check the launch (`launch`), keep the output apart from every input (`guards`), probe
it, write a "running" manifest -> build the stage's model -> train through TRL -> save the stage's outputs and a
"complete" manifest (`saving`; main process only, so torchrun / accelerate runs write once).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecomtune.backbones.model_loading import pick_compute_dtype
from ecomtune.config.schema import Recipe, StageSettings, end_checkpoint_note
from ecomtune.errors import ConfigError
from ecomtune.library_output import capture_to, verbose
from ecomtune.runs.files import LIBRARY_LOG, METRICS_FILE
from ecomtune.runs.manifest import finished_run, write_manifest
from ecomtune.runs.outputs import check_location, check_writable, locked, swap_in
from ecomtune.runtime import decided_by_main, is_main_process
from ecomtune.train.distributed import LaunchSetup
from ecomtune.train.guards import guarded_inputs
from ecomtune.train.launch import build_for_launch, check_data_for_launch, check_launch
from ecomtune.train.preparation import (
    PreparedData,
    data_record,
    prepare_stage,
    stage_console,
    stage_data,
    tokens_per_step,
)
from ecomtune.train.run_folder import clear_leftovers, plan_run_folder
from ecomtune.train.saving import common_manifest
from ecomtune.train.stage_units import StageUnit, stage_unit
from ecomtune.train.trl_bridge import build_trainer, checkpoint_steps, restore_finished_checkpoint, sft_config
from ecomtune.train.watch import (
    BenchProbe,
    LiveProgress,
    RecipeToTrackers,
    chain_baseline,
    check_trackers,
    probe_identity,
    probe_records,
    quiet_trainer,
)


@dataclass
class StageResult:
    """Where a stage wrote its outputs, its manifest, and the trained model (for callers that go on)."""

    output: Path
    manifest: dict[str, Any]
    model: Any = field(default=None, repr=False)
    complete: bool = True  # False when training stopped before its last step (nothing final was saved)


def run_stage(name: str, recipe: Recipe, output: Path, init_from: Path | None = None, resume: bool = False,
              overwrite: bool = False, callbacks: list | None = None, recipe_file: Path | None = None) -> StageResult:
    """Run one stage of the recipe into `output` (see the module docstring). `recipe_file`: the recipe's path,
    which the output may not hold. `--resume` on a finished run does nothing and returns its manifest."""
    unit = stage_unit(name)  # a ConfigError naming the stages there are, for any other name
    stage = unit.settings(recipe)
    output, main, console = Path(output), is_main_process(), stage_console()
    if init_from is not None and not unit.init_from:
        raise ConfigError(f"--init-from: {name} starts from the backbone, not from another run",
                          fix="drop --init-from")
    setup = check_launch(unit, recipe)
    with locked(output, enabled=main):
        folder = decided_by_main(lambda: plan_run_folder(output, name, recipe.model_dump(mode="json"), init_from,
                                                         resume, overwrite,
                                                         lambda text: console.print(f"[yellow]{text}[/yellow]")))
        if folder.finished is not None:
            console.print(f"{output} is a finished {name} run ({folder.finished['metrics']['global_step']} steps): "
                          "nothing to resume")
            return StageResult(output, folder.finished)
        start = finished_run(init_from, "--init-from", unit.init_from) if init_from is not None else None
        check_trackers(stage.train.report_to, f"{name}.train.report_to")
        prepared = prepare_stage(recipe, stage, name)
        probe = _probe(stage, prepared, start, console)
        check_data_for_launch(setup, prepared, name, recipe)
        check_location(output, guarded_inputs(stage, prepared.read, recipe_file, init_from))
        common = common_manifest(name, recipe, prepared.backbone, init_from)
        if main:
            clear_leftovers(folder)
            check_writable(folder.write_to)
            write_manifest(folder.write_to, status="running", **common)
        if (note := end_checkpoint_note(stage.train)) is not None:
            console.print(f"[yellow]{name}: {note}[/yellow]")
        with capture_to(folder.write_to / LIBRARY_LOG) if main else contextlib.nullcontext():
            return _train_and_save(unit, recipe, stage, setup, prepared, start, folder, common, probe,
                                   callbacks, output, console)


def _probe(stage: StageSettings, prepared: PreparedData, start, console) -> BenchProbe | None:
    """The stage's in-training bench probe, its items read and checked now, before any model loads; its guard
    measures from the `--init-from` chain's baseline when the probe says so (`chain_baseline`)."""
    if stage.probe is None:
        return None
    probe = stage.probe
    return BenchProbe(prepared.processor, probe_records(probe, prepared.backbone.spec, stage.images), probe.every,
                      probe.general_drop_limit, probe.on_general_drop, probe.batch_size, console,
                      chain_baseline(probe, start), probe_identity(probe))


def _train_and_save(unit: StageUnit, recipe: Recipe, stage: StageSettings, setup: LaunchSetup,
                    prepared: PreparedData, start, folder, common: dict[str, Any], probe: BenchProbe | None,
                    callbacks: list | None, output: Path, console) -> StageResult:
    """Load, train and save (with the library output in the run's log file); the outputs are swapped in when the
    stage replaces an earlier run. A probe's guard that stopped training still saves: its weights are the last
    ones within the limit."""
    compute_dtype = pick_compute_dtype(stage.quant.compute_dtype)
    evaluate = prepared.held_out is not None
    # ZeRO-3 partitions weights as they load only if the training arguments exist first (they hand
    # DeepSpeed's config to transformers), so under DeepSpeed they are made before the model.
    args = sft_config(stage.train, folder.write_to, compute_dtype, evaluate) if setup.engine == "deepspeed" else None
    model, roles, rows = build_for_launch(unit, recipe, setup, prepared, start)
    data, held_rows = stage_data(prepared, model, stage)
    quiet = not verbose()
    watchers = [*(callbacks or [])]
    if quiet:
        metrics_file = folder.write_to / METRICS_FILE if is_main_process() else None
        watchers.append(LiveProgress(unit.name, tokens_per_step(prepared, stage, setup.processes), metrics_file))
    trackers = RecipeToTrackers(stage.train.report_to, common) if stage.train.report_to else None
    watchers += [w for w in (probe, trackers) if w is not None]
    trainer = build_trainer(model, prepared.processor, data, stage.train, folder.write_to, compute_dtype, watchers,
                            args, held_rows)
    for watcher in (probe, trackers):
        if watcher is not None:
            watcher.attach(trainer)
    if quiet:
        quiet_trainer(trainer)
    try:
        metrics = _train(trainer, folder.checkpoint, stage.train.max_steps)
    finally:
        for watcher in watchers:
            if isinstance(watcher, LiveProgress):
                watcher.close()
    evaluated = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if evaluated:
        metrics["eval_loss"] = evaluated[-1]
    manifest = {**common, "roles": asdict(roles), "parameters": [asdict(r) for r in rows],
                "data": data_record(stage, prepared), "metrics": metrics,
                "outputs": unit.outputs(prepared.backbone)}
    if probe is not None:
        manifest["probe"] = probe.summary()
    # a watcher that ended training on purpose (the general-skill guard) has put back the weights to keep
    stopper = next((w for w in watchers if getattr(w, "stopped", None)), None)
    if stopper is not None:
        manifest["stopped_early"] = stopper.stopped
    complete = trainer.state.global_step >= trainer.state.max_steps or stopper is not None
    if complete:
        unit.save(trainer, model, roles, prepared.processor, folder.write_to)
        if trainer.is_world_process_zero():
            write_manifest(folder.write_to, **manifest)
            if folder.replacing:
                swap_in(folder.write_to, output)
    return StageResult(output, manifest, model, complete)


def run_align(recipe: Recipe, output: Path, resume: bool = False, overwrite: bool = False,
              callbacks: list | None = None, recipe_file: Path | None = None) -> StageResult:
    """Stage 1: train only the projector on caption data; save its weights, the processor, a manifest."""
    return run_stage("align", recipe, output, None, resume, overwrite, callbacks, recipe_file)


def run_sft(recipe: Recipe, output: Path, init_from: Path | None = None, resume: bool = False,
            overwrite: bool = False, callbacks: list | None = None, recipe_file: Path | None = None) -> StageResult:
    """Stage 3: QLoRA through TRL's SFTTrainer; saves a PEFT adapter, the processor and a manifest."""
    return run_stage("sft", recipe, output, init_from, resume, overwrite, callbacks, recipe_file)


def _train(trainer, checkpoint: Path | None, planned_steps: int) -> dict[str, Any]:
    """Train (from `checkpoint` when resuming); a checkpoint already at the planned end is restored, not trained
    past (`planned_steps` -1: the number of steps the epochs make, as the checkpoint recorded it)."""
    if checkpoint is not None:
        step, recorded = checkpoint_steps(checkpoint)
        if step >= (planned_steps if planned_steps > 0 else recorded):
            return restore_finished_checkpoint(trainer, checkpoint, planned_steps)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return {"global_step": result.global_step, "train_loss": result.training_loss, **result.metrics}
