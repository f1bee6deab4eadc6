"""Stages on tiny real models, CPU: what is meant to train changes, everything else stays bit-identical.

Each test snapshots every parameter when training begins (a TrainerCallback on the real Trainer) and
compares after: projector only for align; LoRA (+ projector when full) for sft on a real 4-bit base.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ecomtune.backbones.spec import ResolvedRoles
from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.runs.files import PROJECTOR_FILE
from ecomtune.train.stages import run_align, run_sft
from tests.conftest import quick_overrides

pytestmark = pytest.mark.slow


class Snapshot(TrainerCallback):
    """Copies every parameter (and the step) when training starts."""

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.start_step = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.start_step = state.global_step


def changes(model, snapshot: Snapshot, roles: ResolvedRoles) -> dict[str, set[bool]]:
    """For each component: the set of {changed?} over its parameters."""
    seen: dict[str, set[bool]] = {}
    for name, param in model.named_parameters():
        component = "original" if ".original_module." in name else roles.component_of(name)
        changed = not torch.equal(param.detach(), snapshot.params[name])
        seen.setdefault(component, set()).add(changed)
    return seen


def roles_of(manifest: dict) -> ResolvedRoles:
    return ResolvedRoles(**manifest["roles"])


@pytest.fixture(scope="module")
def aligned(catalog, tmp_path_factory):
    snapshot = Snapshot()
    recipe = load_recipe(None, [f"align.data={catalog['captions']}", *quick_overrides("align", steps=3),
                                "align.train.learning_rate=0.01"])
    result = run_align(recipe, tmp_path_factory.mktemp("align"), callbacks=[snapshot])
    return result, snapshot


def test_align_trains_only_the_projector(aligned):
    result, snapshot = aligned
    seen = changes(result.model, snapshot, roles_of(result.manifest))
    assert seen["projector"] == {True}, "every projector parameter changed"
    assert seen["vision_tower"] == {False} and seen["language_model"] == {False}, "everything else bit-identical"
    saved = load_file(str(result.output / PROJECTOR_FILE))
    (path,) = result.manifest["roles"]["projector"]
    projector = result.model.get_submodule(path)
    assert saved.keys() == {f"{path}.{k}" for k in projector.state_dict()}
    assert all(torch.equal(saved[f"{path}.{k}"], v) for k, v in projector.state_dict().items())
    assert (result.output / "processor_config.json").is_file()
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == "align"
    assert manifest["metrics"]["global_step"] == 3 and len(manifest["data"]["sha256"]) == 64
    assert manifest["versions"]["trl"] and manifest["recipe"]["align"]["train"]["max_steps"] == 3


def test_align_on_a_4bit_base(catalog, tmp_path):
    import bitsandbytes as bnb

    snapshot = Snapshot()
    recipe = load_recipe(None, [f"align.data={catalog['captions']}", *quick_overrides("align", steps=2),
                                "align.quant.load_in_4bit=true"])
    result = run_align(recipe, tmp_path / "a4", callbacks=[snapshot])
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules()) >= 14
    seen = changes(result.model, snapshot, roles_of(result.manifest))
    assert seen["projector"] == {True}
    assert seen["language_model"] == {False} and seen["vision_tower"] == {False}


@pytest.fixture(scope="module")
def tuned(aligned, catalog, tmp_path_factory):
    snapshot = Snapshot()
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=4),
                                "sft.lora.r=4", "sft.train.learning_rate=0.01"])
    result = run_sft(recipe, tmp_path_factory.mktemp("sft"), init_from=aligned[0].output, callbacks=[snapshot])
    return result, snapshot


def test_sft_is_qlora_on_a_real_4bit_base(tuned):
    import bitsandbytes as bnb

    result, snapshot = tuned
    quantized = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) >= 14 and all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    seen = changes(result.model, snapshot, roles_of(result.manifest))
    assert seen["lora"] == {True}, "every LoRA parameter changed"
    assert seen["projector"] == {True}, "projector: full"
    assert seen["language_model"] == {False} and seen["vision_tower"] == {False} and seen["original"] == {False}


def test_sft_starts_from_the_aligned_projector(aligned, tuned):
    _, snapshot = tuned
    (path,) = aligned[0].manifest["roles"]["projector"]
    aligned_weights = load_file(str(aligned[0].output / PROJECTOR_FILE))
    for key, value in aligned_weights.items():
        start = snapshot.params[f"base_model.model.{path}.modules_to_save.default.{key.removeprefix(path + '.')}"]
        assert torch.equal(start, value.to(start.dtype))


def test_adapter_loads_with_plain_transformers_and_peft(tuned, catalog):
    """In a fresh interpreter that never imports ecomtune: base + adapter load, generate, and the
    projector inside the adapter is the trained one."""
    result, _ = tuned
    image = next((catalog["instruct"].parent / "images").glob("*.png"))
    script = f"""
import json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from peft import PeftModel
run = {str(result.output)!r}
config = json.load(open(run + "/adapter_config.json"))
model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"]), run)
processor = AutoProcessor.from_pretrained(run)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What colour?"}}]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[Image.open({str(image)!r}).convert("RGB")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
merger = model.base_model.model.model.visual.merger.modules_to_save["default"]
print(json.dumps({{"new": out.shape[1] - inputs["input_ids"].shape[1], "ecomtune": "ecomtune" in sys.modules,
                  "projector": merger.mlp[0].weight.sum().item()}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=result.output.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["new"] >= 1 and report["ecomtune"] is False
    (projector,) = result.manifest["roles"]["projector"]
    trained = result.model.get_submodule(f"base_model.model.{projector}").modules_to_save["default"]
    assert report["projector"] == pytest.approx(trained.mlp[0].weight.sum().item(), rel=1e-5)
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "manifest.json"):
        assert (result.output / name).is_file()
    assert not list(result.output.glob("*.bin")) and not list(result.output.glob("*.pt"))


def test_sft_with_frozen_projector_keeps_align_weights(aligned, catalog, tmp_path):
    snapshot = Snapshot()
    # LoRA's B starts at zero, so A only moves from the second update on: 3 steps, no warm-up
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=3),
                                "sft.projector=frozen", "sft.train.warmup_ratio=0"])
    result = run_sft(recipe, tmp_path / "frozen", init_from=aligned[0].output, callbacks=[snapshot])
    seen = changes(result.model, snapshot, roles_of(result.manifest))
    assert seen["projector"] == {False} and seen["lora"] == {True}
    adapter = load_file(str(result.output / "adapter_model.safetensors"))
    aligned_weights = load_file(str(aligned[0].output / PROJECTOR_FILE))
    saved = {"model.visual.merger." + k.split("merger.")[-1]: v for k, v in adapter.items() if "merger" in k}
    assert saved.keys() == aligned_weights.keys()
    assert all(torch.equal(saved[k], aligned_weights[k]) for k in saved), "align's projector travels in the adapter"


def test_sft_with_lora_on_the_vision_tower(catalog, tmp_path):
    snapshot = Snapshot()
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=3),
                                "sft.max_length=1024", "sft.vision=lora", "sft.lora.vision_targets=[qkv, fc1]",
                                "sft.train.warmup_ratio=0"])
    result = run_sft(recipe, tmp_path / "vision-lora", callbacks=[snapshot])
    roles = roles_of(result.manifest)
    lora_names = [n for n, _ in result.model.named_parameters() if ".lora_" in n]
    vision_lora = [n for n in lora_names if f"{roles.vision_tower}.blocks" in n]
    assert vision_lora and all(("qkv" in n or "fc1" in n) for n in vision_lora)
    assert not any("merger" in n for n in lora_names), "the projector is trained fully, never through LoRA"
    seen = changes(result.model, snapshot, roles)
    assert seen["vision_tower"] == {False} and seen["lora"] == {True}


class StopAfterFirstSave(TrainerCallback):
    """Simulates an interruption right after the first checkpoint is written."""

    def on_save(self, args, state, control, **kwargs):
        control.should_training_stop = True


def test_resume_finishes_with_the_same_step_count(catalog, tmp_path):
    overrides = [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=6, save_steps=2)]
    recipe = load_recipe(None, overrides)
    straight = run_sft(recipe, tmp_path / "straight")

    interrupted = run_sft(recipe, tmp_path / "resumed", callbacks=[StopAfterFirstSave()])
    assert interrupted.model is not None and (tmp_path / "resumed" / "checkpoint-2").is_dir()
    status = json.loads((tmp_path / "resumed" / "manifest.json").read_text())["status"]
    assert status == "running", "an interrupted run never looks complete"
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()

    with pytest.raises(ConfigError, match="not empty"):
        run_sft(recipe, tmp_path / "resumed")
    snapshot = Snapshot()
    resumed = run_sft(recipe, tmp_path / "resumed", resume=True, callbacks=[snapshot])
    assert snapshot.start_step == 2
    assert resumed.manifest["metrics"]["global_step"] == straight.manifest["metrics"]["global_step"] == 6
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["status"] == "complete"


def test_resume_without_checkpoint_is_a_clear_error(catalog, tmp_path):
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}"])
    with pytest.raises(ConfigError, match="is not an ecomtune run"):
        run_sft(recipe, tmp_path / "empty", resume=True)


def test_init_from_must_be_a_finished_align_run(catalog, tmp_path):
    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=1)])
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(ConfigError, match="is not an ecomtune run"):
        run_sft(recipe, tmp_path / "out", init_from=Path(tmp_path / "not-a-run"))


def test_a_smoke_run_lowering_max_steps_alone_saves_at_its_end(catalog, tmp_path, capfd):
    """`--set align.train.max_steps=2` with the default save_steps: accepted, said once, and the end is saved as a
    resumable checkpoint, as transformers does."""
    overrides = [o for o in quick_overrides("align", steps=2) if "save_steps" not in o]
    recipe = load_recipe(None, [f"align.data={catalog['captions']}", *overrides])
    assert recipe.align.train.save_steps > 2
    result = run_align(recipe, tmp_path / "smoke")
    assert result.complete
    said = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert said.count("the one checkpoint is written at the end of training (step 2)") == 1
    from ecomtune.train.checkpoints import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(result.output)
    assert checkpoint is not None and checkpoint.name.endswith("-2")
