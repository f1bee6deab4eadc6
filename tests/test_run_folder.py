"""Where a stage writes, decided before any model loads: fresh, resumed, replaced, or refused (pure, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecomtune.config.schema import Recipe
from ecomtune.errors import ConfigError
from ecomtune.runs.files import CHECKPOINT_SEAL
from ecomtune.runs.manifest import write_manifest
from ecomtune.train.checkpoints import is_complete, last_complete_checkpoint
from ecomtune.train.run_folder import plan_run_folder, shape_changes


def recipe(**sft) -> dict:
    return Recipe.model_validate({"sft": sft}).model_dump(mode="json")


def plan(output: Path, resume: bool = False, overwrite: bool = False, recipe_dict: dict | None = None,
         warnings: list | None = None):
    return plan_run_folder(output, "sft", recipe_dict or recipe(), None, resume, overwrite,
                           (warnings if warnings is not None else []).append)


def checkpoint(output: Path, step: int, sealed: bool = True) -> Path:
    folder = output / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 10)
    if sealed:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 4}))
        (folder / CHECKPOINT_SEAL).write_text(json.dumps({"step": step, "files": {"adapter_model.safetensors": 10}}))
    return folder


def test_fresh_outputs_are_written_in_place(tmp_path):
    assert plan(tmp_path / "new").write_to == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert plan(tmp_path / "empty").write_to == tmp_path / "empty"
    write_manifest(tmp_path / "stopped", status="running", stage="sft", recipe=recipe())
    assert plan(tmp_path / "stopped").write_to == tmp_path / "stopped", "a start with nothing else is no run"


def test_a_non_empty_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        plan(out)
    replacing = plan(out, overwrite=True)
    assert replacing.replacing and replacing.write_to == tmp_path / ".run.incoming"
    assert (out / "notes.txt").read_text() == "mine", "planning deletes nothing"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        plan(tmp_path / "file")


def test_resume_on_a_finished_run_does_nothing(tmp_path):
    write_manifest(tmp_path / "done", stage="sft", recipe=recipe(), metrics={"global_step": 4})
    with pytest.raises(ConfigError, match="finished run"):
        plan(tmp_path / "done")
    assert plan(tmp_path / "done", resume=True).finished["metrics"]["global_step"] == 4
    with pytest.raises(ConfigError, match="holds a sft run, not a align run"):
        plan_run_folder(tmp_path / "done", "align", recipe(), None, True, False, print)


def test_resume_refuses_a_different_model_and_takes_the_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    write_manifest(out, status="running", stage="sft", recipe=recipe())
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        plan(out, resume=True)
    checkpoint(out, 2)
    torn = checkpoint(out, 4, sealed=False)
    with pytest.raises(ConfigError, match=r"(?s)sft\.lora\.r: 16 -> 8.*sft\.quant\.load_in_4bit: True -> False"):
        plan(out, resume=True, recipe_dict=recipe(lora={"r": 8}, quant={"load_in_4bit": False}))
    warnings: list[str] = []
    resumed = plan(out, resume=True, recipe_dict=recipe(train={"logging_steps": 1, "save_steps": 5}),
                   warnings=warnings)
    assert resumed.checkpoint == out / "checkpoint-2" and str(torn) in warnings[0]


def test_a_sealed_checkpoint_with_a_cut_file_is_incomplete(tmp_path):
    folder = checkpoint(tmp_path, 2)
    assert is_complete(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 5)
    assert not is_complete(folder) and last_complete_checkpoint(tmp_path) is None


def test_shape_changes_name_only_model_keys():
    before = recipe()
    assert shape_changes(before, recipe(train={"logging_steps": 1}, images={"max_images": 3}), "sft") == []
    assert shape_changes(before, recipe(vision="lora"), "sft") == ["sft.vision: 'frozen' -> 'lora'"]
    changed = Recipe.model_validate({"backbone": {"name": "tiny-gemma3"}}).model_dump(mode="json")
    assert shape_changes(before, changed, "sft") == ["backbone.name: 'tiny-qwen2-vl' -> 'tiny-gemma3'"]


def test_a_swap_killed_between_its_renames_gives_the_old_folder_back(tmp_path):
    from ecomtune.runs.outputs import Guarded, replacing_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "user.txt").write_text("mine")
    out.rename(tmp_path / ".out.replaced")  # the state a kill between swap_in's two renames leaves
    with pytest.raises(ConfigError, match="not empty"):
        with replacing_folder(out, False, Guarded()) as staging:
            (staging / "new.txt").write_text("new")
    assert (out / "user.txt").read_text() == "mine" and not (tmp_path / ".out.replaced").exists()
    write_manifest(tmp_path / "run", status="running", stage="sft", recipe=recipe())
    (tmp_path / "run").rename(tmp_path / ".run.replaced")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        plan(tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "manifest.json").is_file(), "a run folder is put back before anything is decided"


def test_inputs_behind_links_and_results_files_are_guarded(tmp_path):
    from ecomtune.runs.outputs import Guarded, check_file_output, location_problems

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "train.jsonl").write_text("{}\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").symlink_to(shared / "train.jsonl")
    guarded = Guarded(files=[("data file", data / "train.jsonl")])
    assert location_problems(data, guarded), "the link itself is guarded, not only what it points to"
    assert location_problems(shared, guarded)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="inside the model folder"):
        check_file_output(run / "manifest.json", True, Guarded(folders=[("model folder", run)]))
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="already exists"):
        check_file_output(tmp_path / "results.json", False, Guarded())
    check_file_output(tmp_path / "results.json", True, Guarded())


def test_resume_refuses_a_checkpoint_past_the_plan_and_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "run"
    write_manifest(out, status="running", stage="sft", recipe=recipe(train={"max_steps": 4, "save_steps": 2}))
    checkpoint(out, 4)
    with pytest.raises(ConfigError, match=r"past sft\.train\.max_steps = 2"):
        plan(out, resume=True, recipe_dict=recipe(train={"max_steps": 2, "save_steps": 2}))
    foreign = tmp_path / "foreign"
    checkpoint(foreign, 2)
    with pytest.raises(ConfigError, match="is not an ecomtune run"):
        plan(foreign, resume=True)
    assert (foreign / "checkpoint-2").is_dir()


def test_a_setting_added_since_the_run_started_is_not_a_change():
    """A run recorded before `quant.quant_storage` existed resumes: the new key takes its default."""
    import copy

    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.run_folder import shape_changes

    today = load_recipe(None, []).model_dump(mode="json")
    recorded = copy.deepcopy(today)
    del recorded["sft"]["quant"]["quant_storage"]
    assert shape_changes(recorded, today, "sft") == []
    recorded["sft"]["lora"]["r"] = 8
    assert shape_changes(recorded, today, "sft") == ["sft.lora.r: 8 -> 16"]
