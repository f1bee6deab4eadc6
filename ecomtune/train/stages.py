"""The recipe's stages as plain functions: `run_align` (stage 1) and `run_sft` (stage 3).

Both follow one path: check the data (before any model is loaded) -> measure every sample with the
real processor -> load the model -> set what trains per component -> train through TRL -> save
standard outputs and a manifest (main process only, so torchrun / accelerate runs write once).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecomtune.backbones.discovery import linear_layer_names
from ecomtune.backbones.loading import load_model, load_processor, pick_compute_dtype, role_overrides
from ecomtune.backbones.registry import ResolvedBackbone, resolve_backbone
from ecomtune.backbones.spec import ResolvedRoles, lora_target_regex, resolve_roles
from ecomtune.config.schema import Recipe, StageSettings
from ecomtune.data.collator import count_tokens
from ecomtune.data.packing import check_packable, packing_stats, plan_packs
from ecomtune.data.schema import Sample, load_samples
from ecomtune.data.strategies import ref_paths
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.runtime import is_main_process
from ecomtune.train.components import apply_plan, parameter_table, print_parameter_table
from ecomtune.train.manifest import fingerprint_file, read_manifest, write_manifest
from ecomtune.train.packed_attention import language_attention
from ecomtune.train.trl_bridge import build_trainer, last_checkpoint, training_data

PROJECTOR_FILE = "projector.safetensors"


@dataclass
class StageResult:
    """Where a stage wrote its outputs, its manifest, and the trained model (for callers that go on)."""

    output: Path
    manifest: dict[str, Any]
    model: Any = field(default=None, repr=False)


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=not is_main_process())


def prepare_output(output: Path, resume: bool, overwrite: bool) -> str | None:
    """Refuse to mix a new run into an old one; return the checkpoint to resume from, if any."""
    output = Path(output)
    checkpoint = last_checkpoint(output)
    if resume:
        if checkpoint is None:
            raise ConfigError(f"--resume: no checkpoint-* folder in {output}",
                              fix="run without --resume to start, or point --output at the interrupted run")
        return checkpoint
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"Output folder {output} is not empty",
                              fix="pass --resume to continue that run, --overwrite to replace it, or a new --output")
        if is_main_process():
            shutil.rmtree(output)
    return None


def _length_report(processor, samples: list[Sample], stage: StageSettings,
                   conversation: str = "chat") -> tuple[list[Sample], dict[str, Any], list[int]]:
    """Measure every sample (text + image tokens); over-long samples are an error or dropped, never cut."""
    from rich.progress import track

    lengths = [count_tokens(processor, s, conversation) for s in
               track(samples, description="measuring samples", transient=True, console=_console())]
    limit = stage.max_length
    over = [(s, n) for s, n in zip(samples, lengths, strict=True) if limit is not None and n > limit]
    ordered = sorted(lengths)
    stats = {"samples": len(samples), "min": ordered[0], "median": ordered[len(ordered) // 2],
             "max": ordered[-1], "over_max_length": len(over), "max_length": limit}
    if over and stage.on_overlong == "error":
        raise DataError(
            f"{len(over)} sample(s) are longer than max_length={limit} tokens (cutting them could split image "
            "tokens)", [Problem(f"{n} tokens", s.source) for s, n in over[:20]],
            fix="raise max_length, lower backbone.resolution (max_pixels, longest_edge, max_tiles), or set "
            "on_overlong: drop")
    if over:
        _console().print(f"[yellow]dropped {len(over)} sample(s) longer than {limit} tokens[/yellow]")
        kept = [i for i, n in enumerate(lengths) if limit is None or n <= limit]
        samples, lengths = [samples[i] for i in kept], [lengths[i] for i in kept]
    return samples, stats, lengths


@dataclass
class PreparedData:
    """A stage's data, checked and measured: the samples kept, their stats and token lengths, the packed rows
    (sample indices per row) when the stage packs."""

    backbone: ResolvedBackbone
    processor: Any
    samples: list[Sample]
    stats: dict[str, Any]
    lengths: list[int]
    packs: list[list[int]] | None


def prepare_stage(recipe: Recipe, stage: StageSettings, stage_name: str) -> PreparedData:
    """Everything before the model loads: resolve the backbone, refuse what cannot run, read and measure data."""
    if stage.data is None:
        raise ConfigError(f"No training data for {stage_name}", fix=f"pass --data FILE or set {stage_name}.data")
    backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.seed, recipe.backbone.revision)
    if stage.packing:
        check_packable(backbone.spec, f"{stage_name}.packing")
    samples = load_samples(stage.data, backbone.spec, stage.images)
    processor = load_processor(backbone, recipe.backbone)
    samples, stats, lengths = _length_report(processor, samples, stage, backbone.spec.conversation)
    packs = None
    if stage.packing:
        packs = plan_packs(lengths, [len(s.images) for s in samples], stage.max_length, stage.max_images_per_pack)
        stats["packing"] = packing_stats(packs, lengths, stage.max_length)
    return PreparedData(backbone, processor, samples, stats, lengths, packs)


def stage_data(prepared: PreparedData, model, stage: StageSettings):
    """The (dataset, collator) a stage trains on. A packed run records the attention its rows go through."""
    spec = prepared.backbone.spec
    data = training_data(model, prepared.processor, prepared.samples, stage.train, stage.max_length,
                         spec.conversation, prepared.packs, spec.packing)
    if prepared.packs is not None:
        prepared.stats["packing"]["attention"] = language_attention(model)
    return data


def _data_record(stage: StageSettings, samples: list[Sample], lengths: dict[str, Any]) -> dict[str, Any]:
    images = [p for s in samples for ref in s.images for p in ref_paths(ref)]
    return {"path": str(stage.data), "sha256": fingerprint_file(stage.data, images), "tokens": lengths}


def _train(trainer, checkpoint: str | None) -> dict[str, Any]:
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return {"global_step": result.global_step, "train_loss": result.training_loss, **result.metrics}


def _common_manifest(stage: str, recipe: Recipe, backbone: ResolvedBackbone, roles: ResolvedRoles,
                     rows, data: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": stage,
        "backbone": {"name": recipe.backbone.name, "source": backbone.source, "family": backbone.spec.family},
        "roles": asdict(roles),
        "recipe": recipe.model_dump(mode="json"),
        "data": data,
        "parameters": [asdict(r) for r in rows],
        "metrics": metrics,
    }


def align_model(recipe: Recipe, backbone: ResolvedBackbone, show: bool = True):
    """The model as stage 1 trains it: projector full, everything else frozen. Returns (model, roles, rows)."""
    stage = recipe.align
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    plan = {"vision_tower": "frozen", "projector": "full", "language_model": "frozen"}
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if show and is_main_process():
        print_parameter_table(rows, f"align: {backbone.spec.family} ({backbone.source})")
    return model, roles, rows


def run_align(recipe: Recipe, output: Path, resume: bool = False, overwrite: bool = False,
              callbacks: list | None = None) -> StageResult:
    """Stage 1: train only the projector on caption data; save its weights, the processor, a manifest."""
    from safetensors.torch import save_file

    stage = recipe.align
    checkpoint = prepare_output(output, resume, overwrite)
    prepared = prepare_stage(recipe, stage, "align")
    backbone, processor, samples, lengths = prepared.backbone, prepared.processor, prepared.samples, prepared.stats
    model, roles, rows = align_model(recipe, backbone)
    data = stage_data(prepared, model, stage)
    trainer = build_trainer(model, processor, data, stage.train, output, pick_compute_dtype(stage.quant.compute_dtype),
                            callbacks)
    metrics = _train(trainer, checkpoint)
    manifest = _common_manifest("align", recipe, backbone, roles, rows, _data_record(stage, samples, lengths), metrics)
    manifest["outputs"] = {"projector": PROJECTOR_FILE, "processor": "."}
    if trainer.is_world_process_zero() and trainer.state.global_step >= trainer.state.max_steps:
        save_file(projector_state(model, roles), str(Path(output) / PROJECTOR_FILE),
                  metadata={"modules": ",".join(roles.projector)})
        processor.save_pretrained(output)
        write_manifest(output, **manifest)
    return StageResult(Path(output), manifest, model)


def projector_state(model, roles: ResolvedRoles) -> dict[str, Any]:
    """The projector's weights keyed by their path in the model (`model.multi_modal_projector.linear_1.weight`),
    so a projector made of several modules (Qwen3-VL's merger and deepstack mergers) is one file."""
    return {f"{path}.{key}": value.detach().contiguous().cpu() for path in roles.projector
            for key, value in model.get_submodule(path).state_dict().items()}


def load_aligned_projector(model, roles: ResolvedRoles, init_from: Path, backbone: ResolvedBackbone) -> str:
    """Copy the projector trained by `ecomtune align` into `model`; checks the run matches the backbone."""
    from safetensors.torch import load_file

    manifest = read_manifest(init_from)
    if manifest is None or manifest.get("stage") != "align" or manifest.get("status") != "complete":
        raise ConfigError(f"--init-from {init_from} is not a finished align run (no complete manifest.json)",
                          fix="point --init-from at the --output of a finished `ecomtune align`")
    if manifest["backbone"]["source"] != backbone.source:
        raise ConfigError(
            f"--init-from {init_from} was aligned on {manifest['backbone']['source']}, not {backbone.source}",
            fix="use the same --backbone for align and sft")
    weights = load_file(str(Path(init_from) / PROJECTOR_FILE))
    stray = [k for k in weights if not any(k.startswith(path + ".") for path in roles.projector)]
    if stray:
        raise ConfigError(f"{init_from / PROJECTOR_FILE} holds weights outside this model's projector",
                          [Problem(f"{stray[:3]}", "projector modules " + ", ".join(roles.projector))],
                          fix="align and sft must use the same backbone and the same backbone.projector")
    for path in roles.projector:
        module = model.get_submodule(path)
        ref = next(module.parameters())
        part = {k.removeprefix(path + "."): v.to(ref.device, ref.dtype) for k, v in weights.items()
                if k.startswith(path + ".")}
        module.load_state_dict(part, strict=True)  # a missing key is an error, never ignored
    return str(init_from)


def sft_model(recipe: Recipe, backbone: ResolvedBackbone, init_from: Path | None = None, show: bool = True):
    """The model as stage 3 trains it: 4-bit base (per recipe), PEFT LoRA on the language model (and the vision
    tower when asked), projector full or frozen, the aligned projector loaded first. Returns (model, roles, rows)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    stage = recipe.sft
    overrides = role_overrides(recipe.backbone)
    model = load_model(backbone, stage.quant, overrides)
    roles = resolve_roles(model, backbone.spec, overrides)
    if init_from is not None:
        load_aligned_projector(model, roles, init_from, backbone)
    if stage.quant.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=stage.train.gradient_checkpointing)

    lm_targets = stage.lora.targets or list(backbone.spec.lora_targets) or \
        linear_layer_names(model, roles.language_model)
    target = lora_target_regex(roles.language_model, lm_targets)
    if stage.vision == "lora":
        vision_targets = stage.lora.vision_targets or list(backbone.spec.vision_lora_targets)
        if not vision_targets:
            raise ConfigError(
                "sft.vision is 'lora' but no vision LoRA targets are known for this backbone",
                [Problem(f"Linear layers in the vision tower: {linear_layer_names(model, roles.vision_tower)}",
                         "sft.lora.vision_targets")],
                fix="name some in sft.lora.vision_targets, or set sft.vision: frozen")
        target = f"({target})|({lora_target_regex(roles.vision_tower, vision_targets)})"
    # The projector travels in the adapter whenever it differs from the base's: trained now, or aligned before.
    save_projector = stage.projector == "full" or init_from is not None
    lora = LoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha, lora_dropout=stage.lora.dropout,
                      target_modules=target, modules_to_save=list(roles.projector) if save_projector else None,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    plan = {"vision_tower": "lora" if stage.vision == "lora" else "frozen", "projector": stage.projector,
            "language_model": "lora"}
    apply_plan(model, roles, plan)
    rows = parameter_table(model, roles, plan)
    if not any(r.component == "lora" and r.trainable for r in rows):
        raise ConfigError("LoRA matched no layer of the language model",
                          [Problem(f"targets {lm_targets} under {roles.language_model}", "sft.lora.targets")],
                          fix="name Linear layers that exist (`ecomtune backbones` lists the defaults)")
    if show and is_main_process():
        title = f"sft: {backbone.spec.family} ({backbone.source}), 4-bit={stage.quant.load_in_4bit}"
        print_parameter_table(rows, title)
    return model, roles, rows


def run_sft(recipe: Recipe, output: Path, init_from: Path | None = None, resume: bool = False,
            overwrite: bool = False, callbacks: list | None = None) -> StageResult:
    """Stage 3: QLoRA through TRL's SFTTrainer; saves a PEFT adapter, the processor and a manifest."""
    stage = recipe.sft
    checkpoint = prepare_output(output, resume, overwrite)
    prepared = prepare_stage(recipe, stage, "sft")
    backbone, processor, samples, lengths = prepared.backbone, prepared.processor, prepared.samples, prepared.stats
    model, roles, rows = sft_model(recipe, backbone, init_from)
    data = stage_data(prepared, model, stage)
    trainer = build_trainer(model, processor, data, stage.train, output, pick_compute_dtype(stage.quant.compute_dtype),
                            callbacks)
    metrics = _train(trainer, checkpoint)
    manifest = _common_manifest("sft", recipe, backbone, roles, rows, _data_record(stage, samples, lengths), metrics)
    manifest["init_from"] = str(init_from) if init_from else None
    manifest["outputs"] = {"adapter": "adapter_model.safetensors", "processor": ".", "base": backbone.source}
    if trainer.state.global_step >= trainer.state.max_steps:
        trainer.save_model(str(output))  # the PEFT adapter; main process only
        if trainer.is_world_process_zero():
            (Path(output) / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest has the recipe
            processor.save_pretrained(output)
            write_manifest(output, **manifest)
    return StageResult(Path(output), manifest, model)
