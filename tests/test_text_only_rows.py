"""Text-only samples (OneVision's magpie and other text subsets, LLaVA rows without `image`) trained beside samples
with images, family by family: batches built from prepared text equal the processor's, whichever sample comes
first, with and without packing, and the tiny twin takes the batch. A family that cannot batch them together
(Llama 3.2 Vision) or cannot learn a sample without an image (PaliGemma) says so before any model loads.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.model_loading import load_model, load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.config.schema import QuantSettings
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator, same_batch
from ecomtune.data.batches.packing import PackedCollator, rope_index_of
from ecomtune.data.prepare.cache import PrepCache
from ecomtune.data.prepare.lengths import measure_lengths
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.data.schema import Sample, family_problems
from ecomtune.errors import DataError

CHAT = [s for s in FAMILIES if s.conversation == "chat" and s.text_only_refusal is None]


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text-only") / "item.png"
    Image.new("RGB", (96, 72), (200, 40, 40)).save(path)
    return str(path)


def turn(role: str, *content: dict) -> dict:
    return {"role": role, "content": list(content)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def samples_of(picture: str) -> list[Sample]:
    """With an image, text only, with an image again (different lengths)."""
    return [Sample([picture], [turn("user", {"type": "image"}, text("What colour is it?")), turn("assistant",
                                                                                              text("red"))]),
            Sample([], [turn("user", text("Write a haiku about shoes.")), turn("assistant", text("laces, soles"))]),
            Sample([picture], [turn("user", text("Look:"), {"type": "image"}), turn("assistant", text("a red box"))])]


def unprepared(samples: list[Sample]) -> list[Sample]:
    return [Sample(s.images, s.messages, s.source) for s in samples]


@pytest.mark.parametrize("spec", CHAT, ids=[s.family for s in CHAT])
def test_text_only_samples_batch_beside_image_samples(spec, picture):
    processor = load_processor(resolve_backbone(f"tiny-{spec.family}"))
    samples = samples_of(picture)
    measure_lengths(processor, samples, conversation=spec.conversation, workers=1, cache=PrepCache(None),
                    keep_text=True)
    text_first, text_last, text_alone = samples[1:], samples[:2], samples[1:2]
    fast = VisionChatCollator(processor, conversation=spec.conversation)
    for batch in (text_first, text_last, text_alone):
        built = fast.encode(batch)
        assert same_batch(built, VisionChatCollator(processor, conversation=spec.conversation).encode(
            unprepared(batch)))
        answer = built["labels"][batch.index(samples[1])]
        assert processor.tokenizer.decode(answer[answer != IGNORE_INDEX]).strip().startswith("laces, soles")
    assert fast.prepared_matches is True

    torch.manual_seed(0)
    model = load_model(resolve_backbone(f"tiny-{spec.family}"), QuantSettings(load_in_4bit=False)).float()
    outputs = model(**fast.encode(text_first), use_cache=False)
    assert torch.isfinite(outputs.loss)
    if spec.packing:
        packs = [text_first, [samples[0], samples[1]]]
        packer = PackedCollator(processor, spec.packing, rope_index_of(model), spec.conversation)
        packed = packer.encode(packs)
        assert same_batch(packed, PackedCollator(processor, spec.packing, rope_index_of(model),
                                                 spec.conversation).encode([unprepared(p) for p in packs]))
        assert torch.isfinite(model(**packed, use_cache=False).loss)


def test_a_family_that_cannot_batch_them_together_says_so_before_loading(picture, tmp_path):
    spec = next(s for s in FAMILIES if s.family == "mllama")
    data = tmp_path / "mixed.jsonl"
    rows = [{"images": [picture], "messages": [{"role": "user", "content": "<image>Colour?"},
                                               {"role": "assistant", "content": "red"}]},
            {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as raised:
        load_stage_samples(data, spec=spec)
    problem = raised.value.problems[0]
    assert problem.where == f"{data}:2" and "Llama 3.2 Vision" in problem.what and f"{data}:1" in problem.what
    assert "stage of their own" in problem.fix


def test_a_prefix_suffix_family_names_the_text_only_sample():
    spec = next(s for s in FAMILIES if s.conversation == "prefix-suffix")
    sample = Sample([], [turn("user", text("Say hi")), turn("assistant", text("hi"))], "data.jsonl:3")
    assert [p.where for p in family_problems(sample, spec)] == ["data.jsonl:3"]
