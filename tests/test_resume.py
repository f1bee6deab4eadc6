"""Crash safety of a training run, with real SIGKILLs of a real `ecomtune sft` in a subprocess.

One recipe (4 steps, a checkpoint every 2, gradient checkpointing on as in the real recipes) is trained once
straight through; every interrupted-and-resumed run must end bit-identical to it, at exactly its step count.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.runs.files import CHECKPOINT_SEAL
from ecomtune.train.checkpoints import is_complete
from ecomtune.train.stages import run_sft
from tests.conftest import REPO, quick_overrides
from tests.test_training import Snapshot

pytestmark = pytest.mark.slow


def overrides(catalog) -> list[str]:
    return [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=4, save_steps=2),
            "sft.train.gradient_checkpointing=true", "sft.train.seed=7"]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def status(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["status"]


def killed(when: str, output: Path, catalog, *extra: str) -> subprocess.CompletedProcess:
    """Run sft in a subprocess that SIGKILLs itself at `when` (see tests/killed_stage.py)."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "killed_stage.py"), when, str(output),
                           json.dumps(overrides(catalog)), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def straight(catalog, tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    output = tmp_path_factory.mktemp("straight") / "run"
    result = run_sft(load_recipe(None, overrides(catalog)), output)
    assert result.manifest["metrics"]["global_step"] == 4
    return output


def test_the_same_seed_gives_a_bit_identical_adapter(catalog, straight, tmp_path):
    again = run_sft(load_recipe(None, overrides(catalog)), tmp_path / "again")
    assert_same_weights(adapter(straight), adapter(again.output))
    other = run_sft(load_recipe(None, [*overrides(catalog), "sft.train.seed=8"]), tmp_path / "other")
    assert any(not torch.equal(a, b) for a, b in zip(adapter(straight).values(), adapter(other.output).values(),
                                                      strict=True)), "the seed is what makes runs equal"


def test_a_killed_run_resumes_to_the_same_weights(catalog, straight, tmp_path):
    output = tmp_path / "run"
    killed("after-save:2", output, catalog)
    assert status(output) == "running" and is_complete(output / "checkpoint-2")
    assert not (output / "adapter_model.safetensors").exists()

    with pytest.raises(ConfigError, match=r"(?s)different model.*sft\.lora\.r: 16 -> 8"):
        run_sft(load_recipe(None, [*overrides(catalog), "sft.lora.r=8"]), output, resume=True)
    snapshot = Snapshot()
    safe_change = [*overrides(catalog), "sft.train.logging_steps=2"]  # not the model's shape: allowed
    resumed = run_sft(load_recipe(None, safe_change), output, resume=True, callbacks=[snapshot])
    assert snapshot.start_step == 2 and resumed.manifest["metrics"]["global_step"] == 4
    assert status(output) == "complete"
    assert_same_weights(adapter(straight), adapter(output))


def test_a_half_written_checkpoint_is_skipped(catalog, straight, tmp_path, capsys):
    output = tmp_path / "run"
    killed("during-save:4", output, catalog)
    assert (output / "checkpoint-4").is_dir() and not is_complete(output / "checkpoint-4")
    snapshot = Snapshot()
    run_sft(load_recipe(None, overrides(catalog)), output, resume=True, callbacks=[snapshot])
    assert "skipping" in capsys.readouterr().err and snapshot.start_step == 2
    assert status(output) == "complete" and (output / "checkpoint-4" / CHECKPOINT_SEAL).is_file()
    assert_same_weights(adapter(straight), adapter(output))


def test_a_run_killed_in_its_final_save_ends_at_exactly_max_steps(catalog, straight, tmp_path):
    output = tmp_path / "run"
    killed("final-save", output, catalog)
    assert status(output) == "running" and is_complete(output / "checkpoint-4")
    resumed = run_sft(load_recipe(None, overrides(catalog)), output, resume=True)
    assert resumed.manifest["metrics"]["global_step"] == 4 and status(output) == "complete"
    assert_same_weights(adapter(straight), adapter(output))
    assert not (output / "checkpoint-5").exists()

    finished = run_sft(load_recipe(None, overrides(catalog)), output, resume=True)
    assert finished.model is None and finished.manifest["metrics"]["global_step"] == 4, "nothing to resume"


def test_an_interrupted_overwrite_leaves_the_old_run_as_it_was(catalog, straight, tmp_path):
    import shutil

    output = tmp_path / "run"
    shutil.copytree(straight, output)
    before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    killed("after-save:2", output, catalog, "--overwrite")
    assert {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()} == before

    (output / "notes.txt").write_text("from the old run")
    replaced = run_sft(load_recipe(None, overrides(catalog)), output, overwrite=True)
    assert replaced.output == output and status(output) == "complete"
    assert not (output / "notes.txt").exists(), "no stale file of the old run survives"
    assert not any(p.name.startswith(f".{output.name}.") and p.is_dir() for p in tmp_path.iterdir())


def test_resuming_with_the_plan_cut_to_the_last_checkpoint_finishes_there(catalog, tmp_path):
    output = tmp_path / "run"
    killed("after-save:2", output, catalog)
    shorter = [*overrides(catalog), "sft.train.max_steps=2"]
    result = run_sft(load_recipe(None, shorter), output, resume=True)
    assert result.complete and result.manifest["metrics"]["global_step"] == 2 and status(output) == "complete"
    assert (output / "adapter_model.safetensors").is_file()
