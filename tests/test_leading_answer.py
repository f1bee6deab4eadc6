"""A conversation that starts with the assistant (an answer before any question): the answers before the first user
turn are dropped when read, as LLaVA-NeXT's loader does, the stage says how many conversations that changed, and
what is learnt is exactly the answers that follow a question, never template text (a system prompt, a role header),
for every family.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.errors import DataError

GREETING = "Hello! I can describe products."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("leading")
    Image.new("RGB", (64, 48), (30, 160, 60)).save(folder / "item.png")
    rows = [  # LLaVA JSON: gpt first; then a system prompt, gpt, human, gpt
        {"id": "a", "image": "item.png", "conversations": [
            {"from": "gpt", "value": GREETING}, {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": "green"}]},
        {"id": "b", "image": "item.png", "conversations": [
            {"from": "system", "value": "Answer briefly."}, {"from": "gpt", "value": GREETING},
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "green"}]},
    ]
    path = folder / "leading.json"
    path.write_text(json.dumps(rows))
    return path


def test_leading_answers_are_dropped_and_said(data):
    read = load_stage_samples(data)
    roles = [[m["role"] for m in s.messages] for s in read.samples]
    assert roles == [["user", "assistant"], ["system", "user", "assistant"]]
    assert len(read.notes) == 1 and read.notes[0].startswith("2 conversation(s) began with the assistant")
    assert f"{data}[row 0]" in read.notes[0]


def test_a_conversation_of_answers_only_is_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError) as raised:
        load_stage_samples(path)
    assert "no user turn" in raised.value.problems[0].what and raised.value.problems[0].where == f"{path}:1"


@pytest.mark.parametrize("spec", FAMILIES, ids=[s.family for s in FAMILIES])
def test_only_answers_after_a_question_are_learnt(spec, data):
    processor = load_processor(resolve_backbone(f"tiny-{spec.family}"))
    samples = list(load_stage_samples(data).samples)
    samples = samples if spec.conversation == "chat" else samples[:1]  # PaliGemma: one prompt, one answer
    batch = VisionChatCollator(processor, conversation=spec.conversation).encode(samples)
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        learnt = processor.tokenizer.decode(ids[labels != IGNORE_INDEX], skip_special_tokens=True)
        assert learnt.strip() == "green", learnt
        assert "Hello" not in processor.tokenizer.decode(ids), "the dropped greeting is not even in the prompt"
