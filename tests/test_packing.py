"""Sequence packing: the plan, the loss bookkeeping, and, for every family that packs, packed rows that train
exactly like the same samples run one by one (real tiny twins, fp32, CPU).

Tolerances: loss and gradients within 1e-4 relative (gradients as one vector over all parameters), logits of
every packed sample within 1e-4 absolute of the same sample run alone. Measured agreement is ~1e-6: fp32
summation order is the only difference.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecomtune.backbones.families import FAMILIES, LLAVA_NEXT, QWEN2_VL
from ecomtune.backbones.model_loading import load_model, load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.config.recipe_files import load_recipe
from ecomtune.config.schema import QuantSettings
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator
from ecomtune.data.batches.packing import (
    PackedCollator,
    check_packable,
    pack_rows,
    packing_stats,
    plan_packs,
    rope_index_of,
)
from ecomtune.data.prepare.sample_store import SampleStore
from ecomtune.data.schema import Sample
from ecomtune.errors import ConfigError
from ecomtune.train.losses import per_sample_mean_loss
from ecomtune.train.packed_attention import NAME as PACKED_SDPA
from ecomtune.train.packed_attention import use_packed_attention

PACKABLE = [s for s in FAMILIES if s.packing]
EAGER_LANGUAGE_MODEL = {"paligemma"}  # Gemma 2 runs eager attention (soft-capping)
REFUSED = [s for s in FAMILIES if not s.packing]


# ---- the plan ----------------------------------------------------------------------------------------------

def test_first_fit_decreasing_by_hand():
    # longest first: 70 -> row0; 60 -> row1 (70+60>100); 40 -> row1 (60+40=100); 30 -> row0; 20 -> row2
    assert plan_packs([30, 70, 40, 60, 20], [0] * 5, max_length=100, max_images=8) == [[1, 0], [3, 2], [4]]


def test_image_cap_opens_a_new_row():
    # token-wise all three fit one row; images 3 + 3 > 4 forces a second row
    assert plan_packs([10, 10, 10], [3, 3, 1], max_length=100, max_images=4) == [[0, 2], [1]]


def test_plan_places_every_sample_once_within_both_caps():
    lengths = [(i * 37) % 90 + 5 for i in range(60)]
    images = [i % 4 for i in range(60)]
    packs = plan_packs(lengths, images, max_length=200, max_images=6)
    assert sorted(i for p in packs for i in p) == list(range(60))
    assert all(sum(lengths[i] for i in p) <= 200 and sum(images[i] for i in p) <= 6 for p in packs)
    assert plan_packs(lengths, images, max_length=200, max_images=6) == packs  # deterministic
    assert packing_stats(packs, lengths, 200)["samples"] == 60
    token_bound = plan_packs(lengths, images, max_length=200, max_images=1000)
    assert packing_stats(token_bound, lengths, 200)["fill"] > 0.9  # FFD leaves little room when tokens bind


def test_segments_give_each_packed_sample_one_vote():
    """Two samples in one row (3 and 1 answer tokens) average like the same two samples in two rows."""
    torch.manual_seed(0)
    logits = torch.randn(1, 8, 5)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    rows = torch.cat([logits[:, :4], logits[:, 4:]]), torch.cat([labels[:, :4], labels[:, 4:]])
    separate = per_sample_mean_loss(*rows)
    assert per_sample_mean_loss(logits, labels, segments).item() == pytest.approx(separate.item(), rel=1e-6)
    token_mean = per_sample_mean_loss(logits, labels)  # without segments the row is one sample
    assert token_mean.item() != pytest.approx(separate.item(), rel=1e-3)


# ---- refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", REFUSED, ids=[s.family for s in REFUSED])
def test_families_that_cannot_pack_are_refused_with_the_reason(spec):
    with pytest.raises(ConfigError) as caught:
        check_packable(spec, "sft.packing")
    text = caught.value.render()
    assert spec.packing_refusal[:40] in text and "sft.packing" in text


def test_packing_needs_max_length():
    with pytest.raises(ConfigError) as caught:
        load_recipe(None, ["sft.packing=true", "sft.max_length=null"])
    assert "packed rows need a length" in caught.value.render()


def test_refused_before_any_data_is_read(tmp_path):
    from ecomtune.train.stages import run_sft

    recipe = load_recipe(None, ["backbone.name=tiny-gemma3", "sft.packing=true", f"sft.data={tmp_path / 'none.jsonl'}"])
    with pytest.raises(ConfigError, match="cannot be trained with packing"):
        run_sft(recipe, tmp_path / "out")


# ---- packed rows train like unpacked samples ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("pack-pictures")
    paths = []
    for i, (colour, size) in enumerate([((200, 30, 30), (96, 72)), ((30, 60, 200), (64, 96)),
                                        ((30, 150, 50), (80, 80))]):
        path = folder / f"p{i}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(str(path))
    return paths


def chat(images: list[str], question: str, answer: str) -> Sample:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return Sample(images, [{"role": "user", "content": content},
                           {"role": "assistant", "content": [{"type": "text", "text": answer}]}])


def mixed_samples(spec, pictures: list[str]) -> list[Sample]:
    """Different lengths, answers and image counts (two images where the family takes several)."""
    return [chat(pictures[:1], "What colour is it?", "red, with a longer answer than the others"),
            chat(pictures[:2] if spec.multi_image else pictures[1:2], "Describe the views.", "blue"),
            chat(pictures[2:3], "Colour?", "green green")]


def model_and_processor(spec):
    backbone = resolve_backbone(f"tiny-{spec.family}")
    torch.manual_seed(0)
    model = load_model(backbone, QuantSettings(load_in_4bit=False)).float()
    model.train()  # the training code path (dropout is 0 in the twins)
    return model, load_processor(backbone)


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses over answer tokens, their count)."""
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, (targets != IGNORE_INDEX).sum()


def gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("attention", ["sdpa", PACKED_SDPA], ids=["block-mask", "per-sample"])
@pytest.mark.parametrize("spec", PACKABLE, ids=[s.family for s in PACKABLE])
def test_packed_row_equals_samples_one_by_one(spec, attention, pictures):
    """Both ways of isolating packed samples over sdpa: transformers' block-diagonal mask, and ecomtune's
    per-sample attention (which a language model running eager attention does not take)."""
    model, processor = model_and_processor(spec)
    if attention == PACKED_SDPA:
        assert use_packed_attention(model) == (spec.family not in EAGER_LANGUAGE_MODEL)
    samples = mixed_samples(spec, pictures)
    single = VisionChatCollator(processor, conversation=spec.conversation)

    model.zero_grad()
    total, count, alone = 0.0, 0, []
    for sample in samples:
        batch = single.encode([sample])
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits
        loss, n = answer_token_loss(logits, labels)
        total, count = total + loss, count + n
        alone.append(logits.detach()[0][batch["attention_mask"][0].bool()])
    (total / count).backward()
    expected_loss, expected_grads = (total / count).item(), gradients(model).clone()

    model.zero_grad()
    packer = PackedCollator(processor, spec.packing, rope_index_of(model), spec.conversation, segments=True)
    batch = packer.encode([samples])
    assert "attention_mask" not in batch  # isolation comes from the restarting positions
    segments, labels = batch.pop("packed_segments"), batch.pop("labels")
    logits = model(**batch, use_cache=False).logits
    loss, n = answer_token_loss(logits, labels)
    (loss / n).backward()

    assert n == count, "the same answer tokens carry labels"
    assert (loss / n).item() == pytest.approx(expected_loss, rel=1e-4)
    grads = gradients(model)
    assert ((grads - expected_grads).norm() / expected_grads.norm()).item() < 1e-4
    for index, own in enumerate(alone):
        packed = logits.detach()[0][segments[0] == index]
        torch.testing.assert_close(packed, own, rtol=0, atol=1e-4)


def test_a_sample_does_not_see_its_neighbour(pictures):
    """The same sample packed after two different neighbours (mRoPE family, one text-only neighbour)."""
    spec = QWEN2_VL
    model, processor = model_and_processor(spec)
    packer = PackedCollator(processor, "mrope", rope_index_of(model), segments=True)
    target = chat(pictures[1:3], "Which colours?", "blue and green")
    text_only = Sample([], [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}])
    outputs = []
    for neighbour in (chat(pictures[:1], "What colour is it?", "red"), text_only):
        batch = packer.encode([[neighbour, target]])
        segments = batch.pop("packed_segments")
        batch.pop("labels")
        with torch.no_grad():
            outputs.append(model(**batch, use_cache=False).logits[0][segments[0] == 1])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-4)


def test_labels_never_cross_a_boundary(pictures):
    processor = load_processor(resolve_backbone("tiny-llava-next"))
    samples = mixed_samples(LLAVA_NEXT, pictures)
    batch = PackedCollator(processor, "1d", segments=True).encode([samples[:2], samples[2:]])
    segments, labels, positions = batch["packed_segments"], batch["labels"], batch["position_ids"]
    starts = (positions == 0) & (segments >= 0)
    assert int(starts.sum()) == 3 and (labels[starts] == IGNORE_INDEX).all()
    assert (labels[segments == -1] == IGNORE_INDEX).all()  # the shorter row's tail
    assert batch["input_ids"].shape[0] == 2


def first_fit_by_scanning(lengths: list[int], images: list[int], max_length: int, max_images: int) -> list[list[int]]:
    """First-fit decreasing the textbook way (every row looked at for every sample): the oracle."""
    rows: list[list[int]] = []
    used: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, (tokens, count) in enumerate(used):
            if tokens + lengths[index] <= max_length and count + images[index] <= max_images:
                rows[row].append(index)
                used[row] = (tokens + lengths[index], count + images[index])
                break
        else:
            rows.append([index])
            used.append((lengths[index], images[index]))
    return rows


def test_the_pack_plan_is_first_fit_decreasing_exactly():
    import random

    draw = random.Random(0)
    for _ in range(300):  # over-long samples and image counts past the cap included
        size, max_length, max_images = draw.randint(0, 200), draw.randint(50, 600), draw.randint(1, 10)
        lengths = [draw.randint(0, 700) for _ in range(size)]
        images = [draw.randint(0, 12) for _ in range(size)]
        assert plan_packs(lengths, images, max_length, max_images) == \
            first_fit_by_scanning(lengths, images, max_length, max_images)


def test_pack_rows_round_trip(pictures):
    samples = mixed_samples(QWEN2_VL, pictures)
    rows = list(pack_rows(SampleStore.of(samples), [[2, 0], [1]]))
    assert [len(json.loads(r["pack"])) for r in rows] == [2, 1]
    assert json.loads(rows[0]["pack"])[0] == samples[2].to_row()


# ---- through the real trainer ------------------------------------------------------------------------------

def packed_recipe(catalog, *extra: str):
    from tests.conftest import quick_overrides

    return load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=4, save_steps=2),
                              "sft.packing=true", "sft.max_length=512", "sft.train.grad_accum=2", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("loss_average", ["token", "sample"])
def test_sft_trains_packed_rows_on_a_4bit_base(catalog, tmp_path, loss_average):
    from ecomtune.train.stages import run_sft
    from tests.test_training import Snapshot, changes, roles_of

    snapshot = Snapshot()
    recipe = packed_recipe(catalog, f"sft.train.loss_average={loss_average}",
                           "sft.train.gradient_checkpointing=true")  # as the real recipes train
    result = run_sft(recipe, tmp_path / "out", callbacks=[snapshot])
    tokens = result.manifest["data"]["tokens"]
    packing = tokens["packing"]
    assert packing["samples"] == tokens["samples"] - tokens["over_max_length"]
    assert packing["rows"] < packing["samples"] and 0 < packing["fill"] <= 1
    assert packing["attention"] == PACKED_SDPA  # the 4-bit language model ran per-sample attention
    assert result.manifest["metrics"]["global_step"] == 4
    assert torch.isfinite(torch.tensor(result.manifest["metrics"]["train_loss"]))
    seen = changes(result.model, snapshot, roles_of(result.manifest))
    assert seen["lora"] == {True} and seen["language_model"] == {False}


@pytest.mark.slow
def test_packed_run_resumes_to_the_same_step(catalog, tmp_path):
    from ecomtune.train.stages import run_sft
    from tests.test_training import Snapshot, StopAfterFirstSave

    recipe = packed_recipe(catalog)
    run_sft(recipe, tmp_path / "run", callbacks=[StopAfterFirstSave()])
    snapshot = Snapshot()
    resumed = run_sft(recipe, tmp_path / "run", resume=True, callbacks=[snapshot])
    assert snapshot.start_step == 2 and resumed.manifest["metrics"]["global_step"] == 4


# ---- ecomtune profile --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_profile_measures_three_runs_side_by_side(catalog, tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "profile.json"
    result = run_cli("profile", "recipes/tiny-qwen2-vl.yaml", "--steps", "2", "--out", str(out),
                     "--set", f"sft.data={catalog['instruct']}", "--set", "sft.train.batch_size=2")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert list(rows) == ["trl", "rows", "packed"]
    for row in rows.values():  # one timed step each
        assert row["steps"] == 1 and row["seconds"] > 0 and row["peak_rss_gib"] > 0
        assert 0 < row["useful_tokens"] <= row["positions"]
    assert rows["rows"]["samples"] == rows["trl"]["samples"] == 2  # batch 2, unpacked
    assert rows["packed"]["samples"] > 2  # two packed rows hold more than two samples
    assert rows["packed"]["padding_fraction"] < rows["rows"]["padding_fraction"]
    assert "useful tokens/s" in result.stdout and "packing on / off" in result.stdout
    assert rows["packed"]["attention"] == PACKED_SDPA and rows["rows"]["attention"] == "sdpa"


def test_profile_reports_a_family_that_cannot_pack(catalog):
    from ecomtune.train.profile import profile_recipe

    recipe = load_recipe(None, ["backbone.name=tiny-mllama", f"sft.data={catalog['instruct']}",
                                "sft.images.strategy=primary"])
    (row,) = profile_recipe(recipe, "sft", steps=2, modes=("packed",))
    assert row.note.startswith("refused: ") and "cross-attention" in row.note and row.seconds == 0
