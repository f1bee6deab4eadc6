"""What a finished stage writes besides its manifest: the projector of a projector-only stage, or the PEFT adapter
(with the projector when it travels in it) of a LoRA stage, each with the processor. The manifest's common part
is here too, so a stage's "running" and "complete" manifests describe it alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecomtune.backbones.registry import ResolvedBackbone
from ecomtune.backbones.spec import ResolvedRoles
from ecomtune.config.schema import Recipe
from ecomtune.runs.files import ADAPTER_WEIGHTS, PROJECTOR_FILE, TRAINING_ARGS
from ecomtune.train.distributed import gather_full_state_at_save
from ecomtune.train.models import projector_state


def save_projector(trainer, model, roles: ResolvedRoles, processor, folder: Path) -> None:
    """The projector's weights (one file, keyed by their path in the model) and the processor, from rank 0."""
    from safetensors.torch import save_file

    if trainer.is_world_process_zero():
        save_file(projector_state(model, roles), str(folder / PROJECTOR_FILE),
                  metadata={"modules": ",".join(roles.projector)})
        processor.save_pretrained(folder)


def save_stage_adapter(trainer, model, roles: ResolvedRoles, processor, folder: Path) -> None:
    """The PEFT adapter (gathered whole under FSDP) and the processor; no pickled training arguments."""
    gather_full_state_at_save(trainer)  # FSDP: the adapter and projector whole on rank 0, not shards
    trainer.save_model(str(folder))  # the PEFT adapter; every process calls it, the main one writes
    if trainer.is_world_process_zero():
        (folder / TRAINING_ARGS).unlink(missing_ok=True)  # a pickle; the manifest has the recipe
        processor.save_pretrained(folder)


def projector_outputs(backbone: ResolvedBackbone) -> dict[str, str]:
    """The outputs a projector-only stage's manifest names."""
    return {"projector": PROJECTOR_FILE, "processor": "."}


def adapter_outputs(backbone: ResolvedBackbone) -> dict[str, str]:
    """The outputs a LoRA stage's manifest names: its adapter, the processor and the base it loads on."""
    return {"adapter": ADAPTER_WEIGHTS, "processor": ".", "base": backbone.source}


def common_manifest(stage: str, recipe: Recipe, backbone: ResolvedBackbone, init_from: Path | None) -> dict[str, Any]:
    """What both of a stage's manifests hold: the stage, the backbone, the whole recipe and the run it started from."""
    return {
        "stage": stage,
        "backbone": {"name": recipe.backbone.name, "source": backbone.source, "family": backbone.spec.family},
        "recipe": recipe.model_dump(mode="json"),
        "init_from": str(init_from) if init_from else None,
        "init_from_resolved": str(Path(init_from).resolve()) if init_from else None,
    }
