"""One matrix over every family's tiny twin (real config, model and processor classes; CPU).

For each family: labels fall on the answer only; align trains the projector and nothing else; sft on a
real 4-bit base trains LoRA (+ projector), and the adapter reloads with plain transformers + peft;
ecomtune's bench generation runs from one image and, where the family takes several, from three;
single-image families reject multi-image data before any weights are touched; the generic fallback
finds the same roles as the family's spec; every resolution setting a family declares changes what
its processor produces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.backbones.spec import GENERIC, BackboneSpec, resolve_roles
from ecomtune.config.recipe_files import load_recipe
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator
from ecomtune.data.schema import Sample
from ecomtune.errors import DataError
from tests.conftest import quick_overrides
from tests.test_training import Snapshot, changes

IDS = [s.family for s in FAMILIES]
MULTI = [s for s in FAMILIES if s.multi_image]
SINGLE = [s for s in FAMILIES if not s.multi_image]


def tiny(spec: BackboneSpec) -> str:
    return f"tiny-{spec.family}"


def chat(images: list[str], question: str, answer: str) -> dict:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return {"images": images, "messages": [{"role": "user", "content": content},
                                           {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 60, 200), (30, 150, 50)]):
        path = folder / f"p{i}.png"
        Image.new("RGB", (96, 72), colour).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def datasets(pictures, tmp_path_factory) -> dict[str, Path]:
    """Single-image records (every family), the same plus 3-image records (multi-image families)."""
    folder = tmp_path_factory.mktemp("family-data")
    single = [chat([p], "What colour is the product?", c) for p, c in zip(pictures, ("red", "blue", "green"),
                                                                           strict=True)] * 2
    multi = [chat(pictures, "Describe the three views.", "red, blue and green views")] * 2
    out = {}
    for name, records in (("single", single), ("multi", single + multi), ("three", multi)):
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_labels_fall_on_the_answer_only(spec, pictures):
    from ecomtune.backbones.model_loading import load_processor

    processor = load_processor(resolve_backbone(tiny(spec)))
    assert processor.image_token == spec.image_placeholder
    sample = Sample(pictures[:1], chat(pictures[:1], "What colour is it?", "red")["messages"])
    batch = VisionChatCollator(processor, conversation=spec.conversation).encode([sample])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    labelled = labels != IGNORE_INDEX
    answer = processor.tokenizer.decode(ids[labelled])
    assert answer.strip().startswith("red") and "colour" not in answer
    first = int(labelled.nonzero()[0])
    assert labelled[first:].all(), "one contiguous answer span, up to the end"
    assert not (labelled & (ids == processor.image_token_id)).any()
    bos = processor.tokenizer.bos_token_id
    assert bos is None or int((ids == bos).sum()) <= 1, "the template's bos is not doubled by the tokenizer"


@pytest.fixture(scope="module")
def aligned(datasets, tmp_path_factory):
    """Align each family once: 3 projector-only steps."""
    runs = {}

    def run(spec: BackboneSpec):
        if spec.family not in runs:
            from ecomtune.train.stages import run_align

            snapshot = Snapshot()
            recipe = load_recipe(None, [f"backbone.name={tiny(spec)}", f"align.data={datasets['single']}",
                                        *quick_overrides("align", steps=3), "align.train.learning_rate=0.01"])
            runs[spec.family] = (run_align(recipe, tmp_path_factory.mktemp(spec.family) / "align",
                                           callbacks=[snapshot]), snapshot)
        return runs[spec.family]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_align_trains_only_the_projector(spec, aligned):
    result, snapshot = aligned(spec)
    seen = changes(result.model, snapshot, resolve_roles(result.model, spec))
    assert seen.pop("projector") == {True}, "every projector parameter changed"
    assert all(changed == {False} for changed in seen.values()), f"everything else bit-identical: {seen}"


@pytest.mark.slow
@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_sft_4bit_lora_trains_reloads_and_generates(spec, aligned, datasets, pictures, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForImageTextToText

    from ecomtune.infer.generate import generate
    from ecomtune.infer.load import load_for_inference
    from ecomtune.train.stages import run_sft

    snapshot = Snapshot()
    data = datasets["multi" if spec.multi_image else "single"]
    recipe = load_recipe(None, [f"backbone.name={tiny(spec)}", f"sft.data={data}", *quick_overrides("sft", steps=3),
                                "sft.train.warmup_ratio=0", "sft.train.learning_rate=0.01", "sft.lora.r=4"])
    result = run_sft(recipe, tmp_path / "sft", init_from=aligned(spec)[0].output, callbacks=[snapshot])
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules()) >= 14
    seen = changes(result.model, snapshot, resolve_roles(result.model.base_model.model, spec))
    assert seen.pop("lora") == {True} and seen.pop("projector") == {True}
    assert all(changed == {False} for changed in seen.values()), seen

    # plain transformers + peft, no ecomtune code: the saved adapter holds exactly the trained LoRA weights
    base = json.loads((result.output / "adapter_config.json").read_text())["base_model_name_or_path"]
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), str(result.output))
    trained = get_peft_model_state_dict(result.model)
    loaded = get_peft_model_state_dict(reloaded)
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k].float(), loaded[k].float()) for k in trained)

    # ecomtune's bench path: the run folder on its 4-bit base, batched greedy generation
    model = load_for_inference(str(result.output))
    counts = [1, 3] if spec.multi_image else [1]
    answers = generate(model, ["What colour is it?"] * len(counts), [pictures[:n] for n in counts], 4, 2, "test")
    assert len(answers) == len(counts) and all(isinstance(a, str) for a in answers)


@pytest.mark.parametrize("spec", SINGLE, ids=[s.family for s in SINGLE])
def test_single_image_family_rejects_multi_image_data_before_loading(spec, datasets, tmp_path, monkeypatch):
    """The hub alias is used offline: the data check must fail first, so no weights (nor the hub) are touched."""
    from ecomtune.train.stages import run_sft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    alias = next(iter(spec.hub_ids))
    recipe = load_recipe(None, [f"backbone.name={alias}", f"sft.data={datasets['three']}"])
    with pytest.raises(DataError) as caught:
        run_sft(recipe, tmp_path / "out")
    text = caught.value.render()
    assert f"3 images, but {spec.title} takes at most 1 per sample" in text and f"{datasets['three']}:1" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", FAMILIES, ids=IDS)
def test_generic_fallback_finds_the_same_roles(spec):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(resolve_backbone(tiny(spec)).source)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert resolve_roles(model, GENERIC) == resolve_roles(model, spec)


KNOB_VALUES = {"max_pixels": 56 * 56, "min_pixels": 112 * 112, "longest_edge": 56, "max_tiles": 1}


@pytest.mark.parametrize(("spec", "knob"), [(s, k) for s in FAMILIES for k in s.image_knobs],
                         ids=[f"{s.family}-{k}" for s in FAMILIES for k in s.image_knobs])
def test_each_resolution_setting_changes_what_the_processor_produces(spec, knob):
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.config.schema import BackboneSettings

    backbone = resolve_backbone(tiny(spec))
    # a lower bound shows on a small image, every other setting on a large, wide one (pan-and-scan needs both)
    picture = Image.new("RGB", (30, 30) if knob == "min_pixels" else (1024, 512), (200, 30, 30))

    def encoded(**resolution) -> tuple:
        processor = load_processor(backbone, BackboneSettings(resolution=resolution))
        batch = processor(text=[processor.apply_chat_template([chat(["x"], "?", "a")["messages"][0]])],
                          images=[[picture]], return_tensors="pt")
        return tuple(batch["input_ids"].shape) + tuple(batch["pixel_values"].shape)

    if knob == "splitting":
        assert encoded(splitting=True) != encoded(splitting=False)
        return
    # tile limits act on split images, so they are compared with splitting on where the family can split
    base = {"splitting": True} if knob == "max_tiles" and "splitting" in spec.image_knobs else {}
    assert encoded(**base, **{knob: KNOB_VALUES[knob]}) != encoded(**base), f"{knob} changed nothing"


def test_unsupported_resolution_setting_is_a_clear_error():
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.config.schema import BackboneSettings
    from ecomtune.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_processor(resolve_backbone("tiny-llava"), BackboneSettings(resolution={"max_pixels": 50176}))
    text = caught.value.render()
    assert "LLaVA-1.5 has no max_pixels setting" in text and "backbone.resolution.max_pixels" in text
    assert "fixed input size" in text
