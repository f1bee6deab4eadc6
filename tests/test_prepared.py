"""Batches built from text tokenized before training equal the processor's own, family by family.

Families whose batches cannot be built from prepared text (PaliGemma's processor builds the prompt itself, Mllama's
cross-attention mask is per token and per image) must fall back to the processor, never train on something else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.backbones.spec import BackboneSpec
from ecomtune.config.schema import BackboneSettings
from ecomtune.data.batches.collator import VisionChatCollator, same_batch
from ecomtune.data.batches.packing import PackedCollator, rope_index_of
from ecomtune.data.prepare.cache import PrepCache
from ecomtune.data.prepare.lengths import measure_lengths
from ecomtune.data.schema import Sample
from tests.test_lengths import pictures, spread  # noqa: F401  (pictures: a fixture)

# Families where the processor must build every batch, and why.
FULL_PATH = {"paligemma": "prefix-suffix", "mllama": "per-image cross-attention mask"}


def prepared(spec: BackboneSpec, paths: list[str]) -> tuple[object, list[Sample]]:
    processor = load_processor(resolve_backbone(f"tiny-{spec.family}"), BackboneSettings())
    samples = spread(paths, spec.multi_image)
    measure_lengths(processor, samples, conversation=spec.conversation, workers=1, cache=PrepCache(None),
                    keep_text=True)
    return processor, samples


def unprepared(samples: list[Sample]) -> list[Sample]:
    return [Sample(s.images, s.messages, s.source) for s in samples]


@pytest.mark.parametrize("spec", FAMILIES, ids=[s.family for s in FAMILIES])
def test_prepared_batches_equal_the_processors(spec, pictures):  # noqa: F811
    processor, samples = prepared(spec, pictures)
    assert all((s.text is not None) == (spec.conversation == "chat") for s in samples)
    batches = [samples[:1], samples[:4], samples[4:9], samples[-3:]]
    fast, full = VisionChatCollator(processor, conversation=spec.conversation), \
        VisionChatCollator(processor, conversation=spec.conversation)
    for batch in batches:
        assert same_batch(fast.encode(batch), full.encode(unprepared(batch)))
    assert full.prepared_matches is None, "unprepared samples never take the prepared path"
    if spec.family in FULL_PATH:
        assert fast.prepared_matches in (None, False), FULL_PATH[spec.family]
    else:
        assert fast.prepared_matches is True, "the first batch was checked against the processor and matched"


def test_packed_rows_from_prepared_samples_equal_those_from_the_processor(pictures):  # noqa: F811
    from transformers import Qwen2VLForConditionalGeneration

    spec = next(s for s in FAMILIES if s.family == "qwen2-vl")
    processor, samples = prepared(spec, pictures)
    model = Qwen2VLForConditionalGeneration.from_pretrained(resolve_backbone("tiny-qwen2-vl").source)
    packs = [samples[:3], samples[3:7], samples[-2:]]
    fast = PackedCollator(processor, "mrope", rope_index_of(model), segments=True).encode(packs)
    full = PackedCollator(processor, "mrope", rope_index_of(model), segments=True).encode(
        [unprepared(p) for p in packs])
    assert same_batch(fast, full)


def test_training_rows_are_memory_mapped_and_their_file_goes_with_the_dataset(pictures):  # noqa: F811
    import gc

    from ecomtune.data.prepare.mapped_rows import mapped_dataset

    samples = spread(pictures, multi=True) * 3000  # more rows than one written batch
    dataset = mapped_dataset(s.to_row() for s in samples)
    files = dataset.cache_files
    assert len(dataset) == len(samples) and files and Path(files[0]["filename"]).is_file()
    assert [Sample.from_row(dataset[i]).messages for i in (0, 12345, len(samples) - 1)] == \
        [samples[i].messages for i in (0, 12345, len(samples) - 1)]
    folder = Path(files[0]["filename"]).parent
    del dataset
    gc.collect()
    assert not folder.exists()


def test_decoded_images_stay_within_their_budget(tmp_path):
    from PIL import Image

    from ecomtune.data.images.strategies import DecodedImages

    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.new("RGB", (10, 10), (index * 80, 0, 0)).save(paths[-1])
    decoded = DecodedImages(budget_bytes=700)  # room for two 10x10 RGB images
    first = decoded.open(paths[0])
    assert decoded.open(paths[0]) is first, "kept: not decoded again"
    decoded.open(paths[1])
    decoded.open(paths[2])
    assert list(decoded.kept) == paths[1:] and decoded.used == 600, "the least recently used one made room"
    assert decoded.open(paths[0]) is not first and decoded.open(paths[0]).getpixel((0, 0)) == (0, 0, 0)
