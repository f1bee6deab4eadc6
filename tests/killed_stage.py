"""Run `ecomtune sft` in this process and SIGKILL it at a chosen point (for the crash-safety tests).

    python tests/killed_stage.py WHEN OUTPUT OVERRIDES_JSON [--overwrite]

WHEN: `after-save:N` (right after checkpoint N is complete), `during-save:N` (checkpoint N has its weights and
optimizer but not its RNG state and trainer state), or `final-save` (the adapter is written, the complete
manifest is not). The kill is a real SIGKILL: no Python cleanup, no `finally`, no flushing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from transformers import Trainer, TrainerCallback


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            die()


def main() -> None:
    when, output, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train import stages

    callbacks = []
    kind, _, step = when.partition(":")
    if kind == "after-save":
        callbacks.append(KillAfterSave(int(step)))
    elif kind == "during-save":
        original = Trainer._save_rng_state

        def save_rng_state(self, output_dir):
            if Path(output_dir).name == f"checkpoint-{step}":
                die()
            return original(self, output_dir)

        Trainer._save_rng_state = save_rng_state
    elif kind == "final-save":
        original_write = stages.write_manifest

        def write_manifest(folder, status="complete", **fields):
            if status == "complete":
                die()
            return original_write(folder, status=status, **fields)

        stages.write_manifest = write_manifest
    else:
        raise SystemExit(f"unknown WHEN {when}")
    stages.run_sft(load_recipe(None, overrides), output, overwrite="--overwrite" in sys.argv, callbacks=callbacks)
    raise SystemExit("the run finished: the kill never happened")


if __name__ == "__main__":
    main()
