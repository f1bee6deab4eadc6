"""Labels: loss falls exactly on the assistant's answer tokens (and their end-of-turn), nowhere else."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator, count_tokens
from ecomtune.data.schema import Sample


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def processor(request):
    return load_processor(resolve_backbone(request.param))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (90, 70), (200, 0, 0)).save(path)
    return str(path)


def user(text: str, image: bool = False) -> dict:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def prefix_length(processor, messages, images) -> int:
    """Tokens of the conversation up to and including the cue that opens the next assistant turn."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=images or None, return_tensors="pt")["input_ids"].shape[1]


def test_loss_positions_are_exactly_the_answer(processor, image_path):
    messages = [user("What colour is it?", image=True), assistant("red")]
    batch = VisionChatCollator(processor).encode([Sample([image_path], messages)])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    image = Image.open(image_path).convert("RGB")
    start = prefix_length(processor, messages[:1], [image])
    expected = torch.zeros_like(ids, dtype=torch.bool)
    expected[start:] = True
    assert torch.equal(labels != IGNORE_INDEX, expected)
    assert torch.equal(labels[start:], ids[start:])
    assert processor.tokenizer.decode(ids[start:]) == "red<|im_end|>\n"
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_token).sum() > 1  # placeholders were expanded, and none of them carry loss
    assert not ((labels != IGNORE_INDEX) & (ids == image_token)).any()


def test_multi_turn_labels_both_answers_and_no_prompt(processor, image_path):
    messages = [user("Colour?", image=True), assistant("red"), user("Pattern?"), assistant("solid")]
    batch = VisionChatCollator(processor).encode([Sample([image_path], messages)])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    image = [Image.open(image_path).convert("RGB")]
    first = prefix_length(processor, messages[:1], image)
    second = prefix_length(processor, messages[:3], image)
    turn1_end = first + len(processor.tokenizer("red<|im_end|>\n")["input_ids"])
    expected = torch.zeros_like(ids, dtype=torch.bool)
    expected[first:turn1_end] = True
    expected[second:] = True
    assert torch.equal(labels != IGNORE_INDEX, expected)
    assert processor.tokenizer.decode(ids[labels != IGNORE_INDEX]) == "red<|im_end|>\nsolid<|im_end|>\n"


def test_padding_never_carries_loss_and_lengths_match_count_tokens(processor, image_path):
    short = Sample([image_path], [user("Colour?", image=True), assistant("red")])
    long = Sample([image_path], [user("Describe this product in detail please.", image=True),
                                 assistant("A red square on a plain background, photographed in a studio.")])
    batch = VisionChatCollator(processor).encode([short, long])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths == [count_tokens(processor, short), count_tokens(processor, long)]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape[0] == 2


def test_text_only_sample(processor):
    batch = VisionChatCollator(processor).encode([Sample([], [user("Say yes."), assistant("yes")])])
    decoded = processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX])
    assert decoded == "yes<|im_end|>\n"
    assert "pixel_values" not in batch


def test_tiny_twin_uses_the_family_processor_and_template(processor):
    from importlib.resources import files

    assert type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
    assert processor.chat_template == (files("trl") / "chat_templates" / "qwen2_5_vl.jinja").read_text()


def test_a_template_that_rewrites_earlier_turns_is_refused(image_path):
    """Templates that render history differently once a turn follows (a turn count up front, reasoning dropped
    from past answers) give no stable offsets for the answer: refused, not labelled wrong."""
    from ecomtune.errors import DataError

    processor = load_processor(resolve_backbone("tiny-qwen2-vl"))
    processor.chat_template = ("{{ messages | length }} turns\n{% for m in messages %}{{ m.role }}: "
                               "{% for c in m.content %}{{ c.text if c.type == 'text' else '<|vision_start|>"
                               "<|image_pad|><|vision_end|>' }}{% endfor %}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(DataError, match="not prefix-preserving"):
        VisionChatCollator(processor).encode([Sample([image_path], [user("Colour?", image=True), assistant("red")])])
