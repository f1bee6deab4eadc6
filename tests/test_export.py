"""`ecomtune export`: a finished run becomes folders that plain transformers (and peft, for vLLM's layout) load,
and that reproduce the run on real images through the real processors.

Tiny twins of a Qwen (mRoPE, `visual.merger` projector) and a LLaVA-style family (CLIP tower,
`multi_modal_projector`), each trained for two 4-bit QLoRA steps with the projector trained too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.export.merge import folder_problems
from ecomtune.export.runner import run_export
from ecomtune.runs.manifest import read_manifest, write_manifest
from ecomtune.train.stages import run_stage
from tests.conftest import quick_overrides, run_cli

pytestmark = pytest.mark.slow
FAMILIES = ["qwen2-vl", "llava"]


@pytest.fixture(scope="module")
def tuned(catalog, tmp_path_factory):
    """family (and variant) -> a finished 4-bit sft run folder; each trained once."""
    runs: dict[str, Path] = {}

    def run(family: str, vision: str = "frozen") -> Path:
        key = f"{family}-{vision}"
        if key not in runs:
            recipe = load_recipe(None, [f"backbone.name=tiny-{family}", f"sft.data={catalog['instruct']}",
                                        *quick_overrides("sft", steps=2), "sft.train.learning_rate=0.01",
                                        "sft.train.warmup_ratio=0", "sft.lora.r=4", f"sft.vision={vision}",
                                        "sft.images.strategy=primary"])
            runs[key] = run_stage("sft", recipe, tmp_path_factory.mktemp(key) / "sft").output
        return runs[key]

    return run


def trained_projector(run: Path) -> dict[str, torch.Tensor]:
    """The projector weights the adapter carries (`modules_to_save`: saved under their own names, beside the
    LoRA weights), keyed by their path in the model."""
    return {key.removeprefix("base_model.model."): value
            for key, value in load_file(str(run / "adapter_model.safetensors")).items() if ".lora_" not in key}


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_loads_plainly_and_reproduces_the_run(family, tuned, tmp_path):
    run = tuned(family)
    result = run_export(run, tmp_path / "merged", samples=2)  # defaults: merged, dequantized, bfloat16

    assert result.verification.ok and result.verification.same_inputs
    assert result.verification.relative_diff <= 0.06 and result.verification.positions > 0
    folder = result.model_folder
    assert folder_problems(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in json.dumps(config)
    assert not list(folder.glob("*.bin")) and not (folder / "adapter_config.json").exists()
    manifest = read_manifest(tmp_path / "merged")
    assert manifest["kind"] == "export" and manifest["run"] == str(run.resolve()) and "stage" not in manifest

    # the trained projector is in place: the merged weights are the adapter's copy, rounded to bfloat16
    merged = AutoModelForImageTextToText.from_pretrained(str(folder)).state_dict()
    projector = trained_projector(run)
    assert projector, "the run's adapter carries its projector"
    for path, value in projector.items():
        assert torch.equal(merged[path], value.to(torch.bfloat16)), path


def test_vllm_layout_has_a_language_model_only_adapter(tuned, tmp_path):
    """With the vision tower adapted too: its LoRA and the projector are folded into base/, the adapter keeps
    only the language model's LoRA, and base + adapter (plain transformers + peft) reproduce the run exactly
    in float32."""
    from peft import LoraConfig

    run = tuned("qwen2-vl", vision="lora")
    result = run_export(run, tmp_path / "served", fmt="vllm", dtype="float32", samples=2)

    assert result.verification.ok and result.verification.relative_diff < 1e-5
    adapter = result.adapter_folder
    config = LoraConfig.from_pretrained(str(adapter))
    assert config.modules_to_save is None
    assert config.base_model_name_or_path == str((tmp_path / "served" / "base").resolve())
    keys = list(load_file(str(adapter / "adapter_model.safetensors")))
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert all(k.startswith("base_model.model.model.language_model.") for k in keys), keys[:3]
    trained_keys = load_file(str(run / "adapter_model.safetensors"))
    assert any(".visual." in k and ".lora_A." in k for k in trained_keys), "the run adapted the vision tower"
    assert "--enable-lora" in (tmp_path / "served" / "README.md").read_text()
    assert folder_problems(result.model_folder) == []


def test_an_align_run_exports_its_projector_into_the_base(catalog, tmp_path):
    """An align run has no adapter: the vLLM layout is base/ alone, with the aligned projector in it."""
    recipe = load_recipe(None, [f"align.data={catalog['captions']}", *quick_overrides("align", steps=2),
                                "align.train.learning_rate=0.01"])
    run = run_stage("align", recipe, tmp_path / "align").output
    result = run_export(run, tmp_path / "served", fmt="vllm", dtype="float32", samples=1)
    assert result.verification.ok and result.adapter_folder is None
    assert not (tmp_path / "served" / "adapter").exists() and "serve `base/` alone" in \
        (tmp_path / "served" / "README.md").read_text()
    aligned = load_file(str(run / "projector.safetensors"))
    exported = AutoModelForImageTextToText.from_pretrained(str(result.model_folder)).state_dict()
    assert aligned and all(torch.equal(exported[key], value) for key, value in aligned.items())


def test_pristine_base_skips_the_4bit_rounding(tuned, tmp_path):
    """`dequantized` folds the LoRA into the 4-bit weights it trained on; `pristine` into the original weights:
    the language model's weights differ, the projector (never quantized) does not, and each reproduces the run on
    its own base."""
    run = tuned("qwen2-vl")
    dequantized = run_export(run, tmp_path / "dq", dtype="float32", samples=1)
    pristine = run_export(run, tmp_path / "pr", merge_base="pristine", dtype="float32", samples=1)
    assert dequantized.verification.relative_diff < 1e-4 and pristine.verification.relative_diff < 1e-4
    a = AutoModelForImageTextToText.from_pretrained(str(dequantized.model_folder)).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(str(pristine.model_folder)).state_dict()
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[q_proj], b[q_proj])
    for path in trained_projector(run):
        assert torch.equal(a[path], b[path])


def test_verification_fails_on_a_model_that_is_not_the_run(tuned, tmp_path):
    """The check can fail: the untouched base scored against the trained run."""
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.export.verify import compare, load_exported, reference, verification_samples
    from ecomtune.infer.load import load_for_inference

    run = tuned("qwen2-vl")
    samples = verification_samples(2)
    trained = load_for_inference(str(run))
    expected = reference(trained.model, trained.processor, samples)
    base, processor = load_exported(Path(resolve_backbone("tiny-qwen2-vl").source))
    found = compare(base, processor, samples, expected, "float32")
    assert not found.ok and found.relative_diff > 1e-2


def test_export_refuses_unfinished_runs_and_keeps_an_existing_out(tuned, tmp_path):
    run = tuned("qwen2-vl")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_manifest(unfinished, status="running", stage="sft", backbone={"source": "tiny-qwen2-vl"})
    with pytest.raises(ConfigError, match="unfinished sft run"):
        run_export(unfinished, tmp_path / "out")

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="--overwrite"):
        run_export(run, out, fmt="vllm", samples=1)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    result = run_cli("export", str(run), "--out", str(out), "--overwrite", "--samples", "1")
    assert result.returncode == 0, result.stderr
    assert "greedy-token agreement" in result.stdout and "100.0%" in result.stdout
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_export_images_go_through_the_training_image_checks(tuned, tmp_path):
    """A truncated JPEG and a 201:1 image are refused as data errors (both at once), before any model loads."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (402, 2), (0, 0, 255)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    result = run_cli("export", str(tuned("qwen2-vl")), "--out", str(out), "--samples", "1",
                     "--image", str(tmp_path / "truncated.jpg"), "--image", str(tmp_path / "wide.png"))
    text = result.stdout + result.stderr
    assert result.returncode == 2 and "bug" not in text and "Traceback" not in text, text
    assert "--image: 2 image(s) cannot be used" in text
    assert "truncated.jpg" in text and "unreadable image" in text
    assert "wide.png" in text and "aspect ratio 201:1 exceeds the 200:1" in text
    assert not out.exists()
