"""Per-sample attention for packed rows: it equals the block-diagonal mask it replaces, it is taken only for
packed rows, and everything else (padded batches, generation, sliding windows) is plain sdpa."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ecomtune.backbones.model_loading import load_model, load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.config.schema import QuantSettings
from ecomtune.data.batches.collator import VisionChatCollator
from ecomtune.data.schema import Sample
from ecomtune.train import packed_attention
from ecomtune.train.packed_attention import NAME, packed_sdpa_forward, packed_segments, use_packed_attention


def positions(*lengths: int) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])


def test_segments_of_packed_rows():
    rows = torch.stack([positions(3, 4, 1), positions(8)])
    assert packed_segments(rows) == [[(0, 3), (3, 7), (7, 8)], [(0, 8)]]


@pytest.mark.parametrize("ids", [
    torch.arange(6)[None],  # one sample per row: the mask path, which also honours padding
    torch.tensor([[1, 1, 0, 1, 2, 3]]),  # generation's left padding (pad positions filled with 1)
    torch.tensor([[0, 1, 2, 3, 3, 3]]),  # right padding counted by cumsum
    torch.tensor([[2, 3, 0, 1, 2, 3]]),  # a row that does not start at 0
], ids=["one-sample", "left-padded", "right-padded", "offset"])
def test_rows_that_are_not_packed_have_no_segments(ids):
    assert packed_segments(ids) is None


class Attention(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.is_causal = True
        self.num_key_value_groups = groups


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean: causal within a sample, nothing across samples."""
    sample = (position_ids == 0).cumsum(-1)
    same = sample[:, :, None] == sample[:, None, :]
    causal = torch.ones(position_ids.shape[1], position_ids.shape[1], dtype=torch.bool).tril()
    return (same & causal)[:, None]


@pytest.mark.parametrize("groups", [1, 2], ids=["mha", "gqa"])
def test_per_sample_attention_equals_the_block_mask(groups):
    torch.manual_seed(0)
    ids = torch.stack([positions(5, 9, 2), positions(11, 5)])
    query = torch.randn(2, 4, 16, 8, requires_grad=True)
    key = torch.randn(2, 4 // groups, 16, 8, requires_grad=True)
    value = torch.randn(2, 4 // groups, 16, 8, requires_grad=True)
    module = Attention(groups)

    expected, _ = sdpa_attention_forward(module, query, key, value, block_causal_mask(ids), scaling=0.35)
    expected_grads = torch.autograd.grad(expected.square().sum(), (query, key, value))
    got, _ = packed_sdpa_forward(module, query, key, value, None, scaling=0.35, position_ids=ids)
    got_grads = torch.autograd.grad(got.square().sum(), (query, key, value))

    assert got.shape == expected.shape == (2, 16, 4, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_a_window_shorter_than_a_sample_keeps_the_windowed_mask():
    """The mask is the only thing that knows the window, so a long sample must go through it."""
    torch.manual_seed(0)
    ids = positions(10, 3)[None]
    query, key, value = (torch.randn(1, 2, 13, 4) for _ in range(3))
    windowed = block_causal_mask(ids) & (torch.arange(13)[:, None] - torch.arange(13)[None] < 4)
    module = Attention(1)
    expected, _ = sdpa_attention_forward(module, query, key, value, windowed)
    got, _ = packed_sdpa_forward(module, query, key, value, windowed, position_ids=ids, sliding_window=4)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    per_sample, _ = packed_sdpa_forward(module, query, key, value, windowed, position_ids=ids, sliding_window=10)
    assert not torch.allclose(per_sample, expected)  # a window as long as the samples: per-sample, no window


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("attn") / "red.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    backbone = resolve_backbone("tiny-qwen2-vl")
    torch.manual_seed(0)
    model = load_model(backbone, QuantSettings(load_in_4bit=False)).float().eval()
    return model, load_processor(backbone), str(path)


def test_padded_batches_and_generation_are_unchanged(qwen):
    """Switching is safe for everything that is not a packed row: the same logits for a padded batch, the same
    tokens from generation (KV cache, left padding)."""
    model, processor, picture = qwen
    samples = [Sample([picture], [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                                  {"role": "assistant", "content": [{"type": "text", "text": a}]}])
               for q, a in [("Colour?", "red"), ("What is shown here, in detail?", "a red square, nothing else")]]
    batch = VisionChatCollator(processor).encode(samples)
    batch.pop("labels")
    prompt = processor(text=[processor.apply_chat_template(s.messages[:1], add_generation_prompt=True)
                             for s in samples], images=[[s.images[0]] for s in samples], padding=True,
                       padding_side="left", return_tensors="pt")
    prompt = {k: v for k, v in prompt.items()}

    def run():
        with torch.no_grad():
            logits = model(**batch).logits
            tokens = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        return logits, tokens

    before = run()
    assert use_packed_attention(model) and model.config.text_config._attn_implementation == NAME
    after = run()
    model.set_attn_implementation({"text_config": "sdpa"})
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    assert torch.equal(after[1], before[1])


def test_an_eager_language_model_is_left_alone():
    """PaliGemma's Gemma 2 runs eager attention: no switch, its packed rows keep transformers' mask."""
    backbone = resolve_backbone("tiny-paligemma")
    model = load_model(backbone, QuantSettings(load_in_4bit=False))
    assert not use_packed_attention(model)
    assert model.config.text_config._attn_implementation == "eager"


def test_the_segment_path_is_taken_for_packed_rows(monkeypatch):
    """The equality tests above would also pass if every call fell back to the mask: count the per-sample calls."""
    calls = []

    def counting(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return sdpa_attention_forward(module, query, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "sdpa_attention_forward", counting)
    ids = positions(3, 4)[None]
    query = torch.randn(1, 2, 7, 4)
    packed_sdpa_forward(Attention(1), query, query, query, None, position_ids=ids)
    assert calls == [3, 4]
