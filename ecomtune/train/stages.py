"""The recipe's stages: one registry entry each (`STAGES`) and one runner (`run_stage`).

Every stage follows one path: lock the output -> decide where it writes (fresh, resumed, or replacing;
`run_folder`) -> read and check the data (before any model is loaded) and measure every sample with the real
processor -> check the output stays apart from every input, probe it, write a "running" manifest -> load the
model -> set what trains per component -> train through TRL -> save standard outputs and a "complete" manifest
(main process only, so torchrun / accelerate runs write once).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecomtune.backbones.model_loading import load_processor, pick_compute_dtype, role_overrides
from ecomtune.backbones.registry import ResolvedBackbone, resolve_backbone
from ecomtune.backbones.spec import ResolvedRoles
from ecomtune.config.schema import LoraStage, Recipe, StageSettings, end_checkpoint_note
from ecomtune.config.stages import STAGE_INFO, StageInfo
from ecomtune.data.lengths import prepare_store
from ecomtune.data.packing import check_packable, packing_stats, plan_packs
from ecomtune.data.sample_store import SampleStore
from ecomtune.data.sources.detect import MIXTURE_SUFFIXES
from ecomtune.data.stage_samples import StageSamples, load_stage_samples, mixture_table
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.library_output import capture_to, verbose
from ecomtune.runs.files import ADAPTER_WEIGHTS, LIBRARY_LOG, METRICS_FILE, PROJECTOR_FILE, TRAINING_ARGS
from ecomtune.runs.manifest import finished_run, write_manifest
from ecomtune.runs.outputs import Guarded, check_location, check_writable, locked, swap_in
from ecomtune.runtime import decided_by_main, is_main_process
from ecomtune.train.distributed import (
    LaunchSetup,
    check_engine,
    check_samples,
    check_wrap_classes,
    gather_full_state_at_save,
    module_classes,
    read_setup,
    recipe_for_engine,
    uniform_frozen_dtype,
)
from ecomtune.train.lora_targets import check_lora_targets_early
from ecomtune.train.models import (
    align_model,
    load_aligned_projector,
    lora_model,
    projector_state,
)
from ecomtune.train.packed_attention import language_attention
from ecomtune.train.run_folder import clear_leftovers, plan_run_folder
from ecomtune.train.trl_bridge import (
    build_trainer,
    checkpoint_steps,
    restore_finished_checkpoint,
    sft_config,
    training_data,
)
from ecomtune.train.watch import (
    BenchProbe,
    LiveProgress,
    RecipeToTrackers,
    check_trackers,
    probe_records,
    quiet_trainer,
)

__all__ = ["STAGES", "StageResult", "align_model", "load_aligned_projector", "lora_model",
           "run_align", "run_sft", "run_stage"]


@dataclass
class StageResult:
    """Where a stage wrote its outputs, its manifest, and the trained model (for callers that go on)."""

    output: Path
    manifest: dict[str, Any]
    model: Any = field(default=None, repr=False)
    complete: bool = True  # False when training stopped before its last step (nothing final was saved)


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=not is_main_process())


def _length_report(processor, read: StageSamples, stage: StageSettings,
                   conversation: str = "chat") -> tuple[SampleStore, dict[str, Any], array]:
    """Measure every sample (text + image tokens, exact; `ecomtune.data.lengths`), and tokenize its text once for
    the training steps (`Sample.text`; `read.samples` becomes the store that holds it); over-long samples are an
    error or dropped, never cut. Returns the samples kept, the stats and the kept samples' lengths."""
    prepared = prepare_store(processor, read.samples, conversation, workers=stage.prepare_workers)
    samples = read.samples = prepared.samples
    lengths = prepared.totals
    limit = stage.max_length
    over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
    ordered = sorted(lengths)
    stats = {"samples": len(samples), "min": ordered[0], "median": ordered[len(ordered) // 2],
             "max": ordered[-1], "over_max_length": len(over), "max_length": limit}
    del ordered

    def located(indices: list[int]) -> list[Problem]:
        return [Problem(f"{lengths[i]} tokens", where) for i, where in zip(indices, samples.locations(indices),
                                                                           strict=True)]

    if over and stage.on_overlong == "error":
        raise DataError(
            f"{len(over)} sample(s) are longer than max_length={limit} tokens (cutting them could split image "
            "tokens)", located(over[:20]),
            fix="raise max_length, lower backbone.resolution (max_pixels, longest_edge, max_tiles), or set "
            "on_overlong: drop")
    if over and len(over) == len(samples):
        raise DataError(f"every sample ({len(samples)}) is longer than max_length={limit} tokens, so on_overlong: "
                        "drop left nothing to train on", located(over[:5]),
                        fix="raise max_length, or lower backbone.resolution (max_pixels, longest_edge, max_tiles)")
    if over:
        _console().print(f"[yellow]dropped {len(over)} sample(s) longer than {limit} tokens[/yellow]")
        dropped = set(over)
        kept = [i for i in range(len(samples)) if i not in dropped]
        samples, lengths = samples.select(kept), array("i", (lengths[i] for i in kept))
    return samples, stats, lengths


@dataclass
class StageInput:
    """A stage's data read and checked, before anything is measured: the backbone, its processor, the samples as
    the strategy presents them, and the realised mixture."""

    backbone: ResolvedBackbone
    processor: Any
    read: StageSamples


def read_stage(recipe: Recipe, stage: StageSettings, stage_name: str) -> StageInput:
    """Resolve the backbone, refuse what cannot run, read and check every source of the stage's mixture. Shared by
    training, `plan` and `profile`, so they never disagree about the data."""
    if stage.data is None:
        raise ConfigError(f"No training data for {stage_name}", fix=f"pass --data FILE or set {stage_name}.data")
    backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.seed, recipe.backbone.revision)
    if stage.packing:
        check_packable(backbone.spec, f"{stage_name}.packing")
    read = load_stage_samples(stage.data, backbone.spec, stage.images, stage.train.seed, f"{stage_name}.data",
                              stage.prepare_workers)
    for note in read.notes:
        _console().print(f"[yellow]{stage_name}.data: {note}[/yellow]")
    if isinstance(stage, LoraStage):  # after the data check (which never contacts the hub), before measuring
        check_lora_targets_early(recipe, stage, stage_name, backbone)
    return StageInput(backbone, load_processor(backbone, recipe.backbone), read)


@dataclass
class HeldOut:
    """Samples kept apart for the eval loss (measured like the training samples; packed when the stage packs)."""

    samples: SampleStore
    lengths: Sequence[int]
    packs: list[list[int]] | None
    source: str  # "eval_fraction" or the eval_data it was read from


@dataclass
class PreparedData:
    """A stage's data, checked and measured: the samples kept, their stats and token lengths, the packed rows
    (sample indices per row) when the stage packs, the realised mixture, and the held-out samples if any."""

    backbone: ResolvedBackbone
    processor: Any
    samples: SampleStore
    stats: dict[str, Any]
    lengths: Sequence[int]
    packs: list[list[int]] | None
    read: StageSamples
    held_out: HeldOut | None = None


def prepare_stage(recipe: Recipe, stage: StageSettings, stage_name: str) -> PreparedData:
    """Everything before the model loads: `read_stage`, then measure every sample (over-long ones are an error or
    dropped, per on_overlong) and plan packed rows."""
    given = read_stage(recipe, stage, stage_name)
    conversation = given.backbone.spec.conversation
    samples, stats, lengths = _length_report(given.processor, given.read, stage, conversation)
    given.read.count_tokens(lengths, samples.origins)
    held_out = None
    if stage.eval_fraction > 0:
        samples, lengths, held_samples, held_lengths = split_held_out(samples, lengths, stage.eval_fraction,
                                                                      stage.train.seed, f"{stage_name}.eval_fraction")
        held_out = HeldOut(held_samples, held_lengths, None, "eval_fraction")
    elif stage.eval_data is not None:
        read = load_stage_samples(stage.eval_data, given.backbone.spec, stage.images, stage.train.seed,
                                  f"{stage_name}.eval_data", stage.prepare_workers)
        held_samples, _, held_lengths = _length_report(given.processor, read, stage, conversation)
        held_out = HeldOut(held_samples, held_lengths, None, str(stage.eval_data))
    packs = None
    if stage.packing:
        packs = _packs(samples, lengths, stage)
        stats["packing"] = packing_stats(packs, lengths, stage.max_length)
        if held_out is not None:
            held_out.packs = _packs(held_out.samples, held_out.lengths, stage)
    return PreparedData(given.backbone, given.processor, samples, stats, lengths, packs, given.read, held_out)


def _packs(samples: SampleStore, lengths: Sequence[int], stage: StageSettings) -> list[list[int]]:
    """The packed rows (sample indices per row) of measured samples, within the stage's length and image caps."""
    return plan_packs(lengths, samples.image_counts, stage.max_length, stage.max_images_per_pack)


def split_held_out(samples: SampleStore, lengths: Sequence[int], fraction: float, seed: int,
                   key: str) -> tuple[SampleStore, array, SampleStore, array]:
    """(train samples, their lengths, held-out samples, their lengths): a seeded share kept apart, at least one,
    never all."""
    import random

    count = max(1, round(len(samples) * fraction))
    if count >= len(samples):
        raise ConfigError(f"{key} = {fraction} of {len(samples)} samples leaves none to train on",
                          fix=f"lower {key}, or give more data")
    chosen = set(random.Random(f"held-out:{seed}").sample(range(len(samples)), count))
    train = [i for i in range(len(samples)) if i not in chosen]
    held = sorted(chosen)
    return (samples.select(train), array("i", (lengths[i] for i in train)), samples.select(held),
            array("i", (lengths[i] for i in held)))


def stage_data(prepared: PreparedData, model, stage: StageSettings):
    """The (dataset, collator) a stage trains on, and the held-out dataset (or None) for the same collator. A
    packed run records the attention its rows go through."""
    spec = prepared.backbone.spec
    data = training_data(model, prepared.processor, prepared.samples, stage.train, stage.max_length,
                         spec.conversation, prepared.packs, spec.packing)
    if prepared.packs is not None:
        prepared.stats["packing"]["attention"] = language_attention(model)
    held = prepared.held_out
    held_rows = None if held is None else training_data(
        model, prepared.processor, held.samples, stage.train, stage.max_length, spec.conversation, held.packs,
        spec.packing)[0]
    return data, held_rows


def _data_record(stage: StageSettings, prepared: PreparedData) -> dict[str, Any]:
    """The manifest's record of the data: every source (available, rule, taken, tokens, share, sha256), one
    sha256 over all of them and the images used, and the token statistics."""
    path = str(stage.data) if not isinstance(stage.data, list) else None
    record = {"path": path, "sources": mixture_table(prepared.read.sources),
              "sha256": prepared.read.fingerprint(prepared.samples.image_paths()), "tokens": prepared.stats}
    if prepared.held_out is not None:
        record["eval"] = {"source": prepared.held_out.source, "samples": len(prepared.held_out.samples),
                          "train_samples": len(prepared.samples)}
    return record


def _save_align(trainer, model, roles: ResolvedRoles, processor, folder: Path) -> None:
    from safetensors.torch import save_file

    if trainer.is_world_process_zero():
        save_file(projector_state(model, roles), str(folder / PROJECTOR_FILE),
                  metadata={"modules": ",".join(roles.projector)})
        processor.save_pretrained(folder)


def _save_lora(trainer, model, roles: ResolvedRoles, processor, folder: Path) -> None:
    gather_full_state_at_save(trainer)  # FSDP: the adapter and projector whole on rank 0, not shards
    trainer.save_model(str(folder))  # the PEFT adapter; every process calls it, the main one writes
    if trainer.is_world_process_zero():
        (folder / TRAINING_ARGS).unlink(missing_ok=True)  # a pickle; the manifest has the recipe
        processor.save_pretrained(folder)


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe as data: what the command line knows of it (`info`: name, title, which finished
    stages `--init-from` may name), how its model is built (`build(recipe, backbone, start, show)`, `start`
    being the finished `--init-from` run or None), what it saves and which outputs its manifest names."""

    info: StageInfo
    build: Callable[..., tuple[Any, ResolvedRoles, list]]
    save: Callable[..., None]
    outputs: Callable[[ResolvedBackbone], dict[str, str]]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def init_from(self) -> tuple[str, ...]:
        return self.info.init_from


def _adapter_outputs(backbone: ResolvedBackbone) -> dict[str, str]:
    return {"adapter": ADAPTER_WEIGHTS, "processor": ".", "base": backbone.source}


def _lora_build(name: str) -> Callable[..., tuple[Any, ResolvedRoles, list]]:
    return lambda recipe, backbone, start, show: lora_model(recipe, name, backbone, start, show)


# A new stage is one entry here, one in `ecomtune.config.stages.STAGE_INFO` and its settings in the recipe schema.
STAGES: dict[str, Stage] = {
    "align": Stage(STAGE_INFO["align"], lambda recipe, backbone, start, show: align_model(recipe, backbone, show),
                   _save_align, lambda backbone: {"projector": PROJECTOR_FILE, "processor": "."}),
    "mid": Stage(STAGE_INFO["mid"], _lora_build("mid"), _save_lora, _adapter_outputs),
    "sft": Stage(STAGE_INFO["sft"], _lora_build("sft"), _save_lora, _adapter_outputs),
}


def _train(trainer, checkpoint: Path | None, planned_steps: int) -> dict[str, Any]:
    """Train (from `checkpoint` when resuming); a checkpoint already at the planned end is restored, not trained
    past (`planned_steps` -1: the number of steps the epochs make, as the checkpoint recorded it)."""
    if checkpoint is not None:
        step, recorded = checkpoint_steps(checkpoint)
        if step >= (planned_steps if planned_steps > 0 else recorded):
            return restore_finished_checkpoint(trainer, checkpoint, planned_steps)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return {"global_step": result.global_step, "train_loss": result.training_loss, **result.metrics}


def _common_manifest(stage: str, recipe: Recipe, backbone: ResolvedBackbone, init_from: Path | None) -> dict[str, Any]:
    return {
        "stage": stage,
        "backbone": {"name": recipe.backbone.name, "source": backbone.source, "family": backbone.spec.family},
        "recipe": recipe.model_dump(mode="json"),
        "init_from": str(init_from) if init_from else None,
        "init_from_resolved": str(Path(init_from).resolve()) if init_from else None,
    }


def _guarded(stage: StageSettings, read: StageSamples, recipe_file: Path | None, init_from: Path | None) -> Guarded:
    """What a stage's output may not touch: its data (files, dataset folders, a mixture YAML), the folders of every
    image its records name (before the strategy picks some), the image roots it names, the recipe and the run it
    starts from."""
    guarded = Guarded(files=[("recipe", recipe_file)] if recipe_file else [],
                      folders=[("--init-from run", Path(init_from))] if init_from else [])
    if not isinstance(stage.data, list) and Path(stage.data).suffix.lower() in MIXTURE_SUFFIXES:
        guarded.files.append(("mixture", Path(stage.data)))
    for source in read.sources:
        path = Path(source.path)
        if path.is_dir():
            guarded.folders.append(("dataset folder", path))
        elif path.exists():
            guarded.files.append(("data file", path))
    guarded.folders += [("image folder", root) for root in read.image_roots]
    guarded.folders += [("image folder", Path(folder)) for folder in read.image_folders]
    held_out = stage.eval_data if isinstance(stage.eval_data, list) else \
        ([] if stage.eval_data is None else [stage.eval_data])
    for source in held_out:
        path = Path(getattr(source, "path", source))
        if path.exists():
            (guarded.folders if path.is_dir() else guarded.files).append(("eval data", path))
    if stage.probe is not None:
        guarded.folders.append(("probe data", Path(stage.probe.data)))
    return guarded


def _check_launch(name: str, recipe: Recipe) -> LaunchSetup:
    """The engine this process was launched under, checked against the stage's recipe before anything is read."""
    setup = read_setup()
    check_engine(recipe, name, setup)
    return setup


def _check_data_for_launch(setup: LaunchSetup, prepared: PreparedData, name: str, recipe: Recipe) -> None:
    """What the launch asks of the data and the model's layout, still before any weights load."""
    stores = [prepared.samples] + ([prepared.held_out.samples] if prepared.held_out is not None else [])
    counts = array("I")
    for store in stores:
        counts.extend(store.image_counts)

    def locate(indices: list[int]) -> list[str]:  # indices run over the training samples, then the held-out ones
        ends = list(itertools.accumulate(len(store) for store in stores))
        places = [(k, i - (ends[k - 1] if k else 0)) for i in indices for k in [bisect.bisect_right(ends, i)]]
        return [stores[k].locations([i])[0] for k, i in places]

    check_samples(counts, locate, name, setup)
    if setup.engine == "fsdp":
        check_wrap_classes(setup, module_classes(prepared.backbone, role_overrides(recipe.backbone)))


def _build(stage_def: Stage, name: str, recipe: Recipe, setup: LaunchSetup, prepared: PreparedData, start):
    """The stage's model, built from the recipe as the launch needs it (4-bit storage dtype resolved); under FSDP
    with a 4-bit base, frozen weights are brought back to one dtype per unit (`uniform_frozen_dtype`)."""
    built = recipe_for_engine(recipe, name, setup)
    model, roles, rows = stage_def.build(built, prepared.backbone, start, True)
    quant = getattr(built, name).quant
    if setup.engine == "fsdp" and quant.load_in_4bit:
        uniform_frozen_dtype(model, pick_compute_dtype(quant.compute_dtype))
    return model, roles, rows


def run_stage(name: str, recipe: Recipe, output: Path, init_from: Path | None = None, resume: bool = False,
              overwrite: bool = False, callbacks: list | None = None, recipe_file: Path | None = None) -> StageResult:
    """Run one stage of the recipe into `output` (see the module docstring). `recipe_file`: the recipe's path,
    which the output may not hold. `--resume` on a finished run does nothing and returns its manifest."""
    stage_def, stage = STAGES.get(name), getattr(recipe, name, None)
    output, main, console = Path(output), is_main_process(), _console()
    if name not in STAGES:
        raise ConfigError(f"{name} is not a stage", fix=f"use one of {', '.join(STAGES)}")
    if init_from is not None and not stage_def.init_from:
        raise ConfigError(f"--init-from: {name} starts from the backbone, not from another run",
                          fix="drop --init-from")
    setup = _check_launch(name, recipe)
    with locked(output, enabled=main):
        folder = decided_by_main(lambda: plan_run_folder(output, name, recipe.model_dump(mode="json"), init_from,
                                                         resume, overwrite,
                                                         lambda text: console.print(f"[yellow]{text}[/yellow]")))
        if folder.finished is not None:
            console.print(f"{output} is a finished {name} run ({folder.finished['metrics']['global_step']} steps): "
                          "nothing to resume")
            return StageResult(output, folder.finished)
        start = finished_run(init_from, "--init-from", stage_def.init_from) if init_from is not None else None
        check_trackers(stage.train.report_to, f"{name}.train.report_to")
        prepared = prepare_stage(recipe, stage, name)
        probe = _probe(stage, prepared, console)
        _check_data_for_launch(setup, prepared, name, recipe)
        check_location(output, _guarded(stage, prepared.read, recipe_file, init_from))
        common = _common_manifest(name, recipe, prepared.backbone, init_from)
        if main:
            clear_leftovers(folder)
            check_writable(folder.write_to)
            write_manifest(folder.write_to, status="running", **common)
        if (note := end_checkpoint_note(stage.train)) is not None:
            console.print(f"[yellow]{name}: {note}[/yellow]")
        with capture_to(folder.write_to / LIBRARY_LOG) if main else contextlib.nullcontext():
            return _train_and_save(stage_def, name, recipe, stage, setup, prepared, start, folder, common, probe,
                                   callbacks, output, console)


def _probe(stage: StageSettings, prepared: PreparedData, console) -> BenchProbe | None:
    """The stage's in-training bench probe, its items read and checked now, before any model loads."""
    if stage.probe is None:
        return None
    probe = stage.probe
    return BenchProbe(prepared.processor, probe_records(probe, prepared.backbone.spec, stage.images), probe.every,
                      probe.general_drop_limit, probe.on_general_drop, probe.batch_size, console)


def _tokens_per_step(prepared: PreparedData, stage: StageSettings, processes: int) -> float:
    """Tokens one optimizer step trains on, on average, from the measured lengths (rows when packed)."""
    rows = len(prepared.packs) if prepared.packs is not None else len(prepared.samples)
    per_row = sum(prepared.lengths) / max(rows, 1)
    return per_row * stage.train.batch_size * stage.train.grad_accum * processes


def _train_and_save(stage_def: Stage, name: str, recipe: Recipe, stage: StageSettings, setup: LaunchSetup,
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
    model, roles, rows = _build(stage_def, name, recipe, setup, prepared, start)
    data, held_rows = stage_data(prepared, model, stage)
    quiet = not verbose()
    watchers = [*(callbacks or [])]
    if quiet:
        metrics_file = folder.write_to / METRICS_FILE if is_main_process() else None
        watchers.append(LiveProgress(name, _tokens_per_step(prepared, stage, setup.processes), metrics_file))
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
                "data": _data_record(stage, prepared), "metrics": metrics,
                "outputs": stage_def.outputs(prepared.backbone)}
    if probe is not None:
        manifest["probe"] = probe.summary()
    # a watcher that ended training on purpose (the general-skill guard) has put back the weights to keep
    stopper = next((w for w in watchers if getattr(w, "stopped", None)), None)
    if stopper is not None:
        manifest["stopped_early"] = stopper.stopped
    complete = trainer.state.global_step >= trainer.state.max_steps or stopper is not None
    if complete:
        stage_def.save(trainer, model, roles, prepared.processor, folder.write_to)
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
