"""Checkpoints that are only "the last checkpoint" once they are complete.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states, trainer state); a
kill or a full disk in the middle leaves a folder that looks like a checkpoint but cannot be resumed from.
`SealCheckpoints` writes a seal into each checkpoint after the Trainer has finished saving it (and every
process has reached that point), listing each file with its size. A sealed checkpoint counts only while every
file it lists still has that size; an unsealed one (from before seals, or killed while sealing) counts when its
trainer state, the file the Trainer writes last, is whole. `last_complete_checkpoint` skips the others, naming
them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from ecomtune.runs.files import CHECKPOINT_SEAL, TRAINER_STATE
from ecomtune.runs.manifest import write_json_atomic
from ecomtune.runtime import is_main_process

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_folders(output: Path) -> list[Path]:
    """`checkpoint-N` folders of a run, oldest step first."""
    if not Path(output).is_dir():
        return []
    found = [p for p in Path(output).iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def is_complete(checkpoint: Path) -> bool:
    """Whether `checkpoint` was sealed after a whole save and still holds every file at its sealed size. An
    unsealed checkpoint (written before seals existed, or killed while sealing) counts when its trainer state,
    the file the Trainer writes last, is whole JSON."""
    try:
        if not (checkpoint / CHECKPOINT_SEAL).is_file():
            json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
            return True
        seal = json.loads((checkpoint / CHECKPOINT_SEAL).read_text(encoding="utf-8"))
        return all((checkpoint / name).stat().st_size == size for name, size in seal["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def incomplete_checkpoints(output: Path) -> list[Path]:
    return [c for c in checkpoint_folders(output) if not is_complete(c)]


def last_complete_checkpoint(output: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint; each newer, incomplete one is named through `warn`."""
    for checkpoint in reversed(checkpoint_folders(output)):
        if is_complete(checkpoint):
            return checkpoint
        if warn is not None:
            warn(f"skipping {checkpoint}: it was left half-written (a kill or a full disk during its save)")
    return None


def _sync_files(folder: Path) -> dict[str, int]:
    """fsync every file under `folder` (so a seal never outlives the data it vouches for); name -> size."""
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKPOINT_SEAL):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        sizes[str(path.relative_to(folder))] = path.stat().st_size
    return sizes


class SealCheckpoints(TrainerCallback):
    """Seals each checkpoint once the Trainer has saved all of it (`on_save` runs after the whole save)."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process has written its part (e.g. its RNG state)
        if is_main_process():
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json_atomic(folder / CHECKPOINT_SEAL, {"step": state.global_step, "files": _sync_files(folder)})
        return control
