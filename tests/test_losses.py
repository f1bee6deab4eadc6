"""Loss reductions: per-sample averaging by hand, and wired into the real trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ecomtune.data.batches.collator import IGNORE_INDEX
from ecomtune.train.losses import per_sample_mean_loss


def test_uniform_logits_give_log_vocab_whatever_the_lengths():
    vocab = 10
    logits = torch.zeros(2, 6, vocab)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4, 5], [IGNORE_INDEX] * 4 + [7, 8]])
    assert per_sample_mean_loss(logits, labels).item() == pytest.approx(math.log(vocab))


def test_each_sample_counts_once_by_hand():
    """Sample A has 1 answer token with loss a; sample B has 3 tokens with loss b each.
    Token mean = (a + 3b) / 4; sample mean = (a + b) / 2."""
    vocab = 4
    logits = torch.zeros(2, 5, vocab)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 4] = 0  # predicted from position 3
    logits[0, 3, 0] = 2.0  # confident and right: small loss a
    labels[1, 2:5] = 1  # predicted from positions 1..3 with uniform logits: loss b = log 4
    a = F.cross_entropy(logits[0, 3:4], torch.tensor([0])).item()
    b = math.log(vocab)
    assert per_sample_mean_loss(logits, labels).item() == pytest.approx((a + b) / 2)
    token_mean = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                 ignore_index=IGNORE_INDEX).item()
    assert token_mean == pytest.approx((a + 3 * b) / 4)


def test_samples_without_answers_are_skipped_and_all_empty_is_zero():
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, 3], [IGNORE_INDEX] * 3])
    assert per_sample_mean_loss(logits, labels).item() == pytest.approx(math.log(5))
    empty = per_sample_mean_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert empty.item() == 0.0
    empty.backward()  # still differentiable: a batch with no answers does not crash training


@pytest.mark.slow
def test_trainer_uses_the_per_sample_mean(catalog, tmp_path):
    from ecomtune.backbones.model_loading import load_model, load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.config.schema import QuantSettings, TrainSettings
    from ecomtune.data.batches.collator import VisionChatCollator
    from ecomtune.data.canonical_file import load_canonical_file
    from ecomtune.train.trl_bridge import build_trainer, training_data

    backbone = resolve_backbone("tiny-qwen2-vl")
    processor = load_processor(backbone)
    model = load_model(backbone, QuantSettings(load_in_4bit=False))
    for param in model.parameters():
        param.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    samples = load_canonical_file(catalog["instruct"])
    short = next(s for s in samples if len(s.messages[-1]["content"][0]["text"]) < 10)
    long = next(s for s in samples if len(s.messages[-1]["content"][0]["text"]) > 100)
    settings = TrainSettings(max_steps=1, save_steps=1, loss_average="sample", gradient_checkpointing=False)
    data = training_data(model, processor, [short, long], settings, None)
    trainer = build_trainer(model, processor, data, settings, tmp_path, torch.float32)
    batch = VisionChatCollator(processor).encode([short, long])
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_sample = [per_sample_mean_loss(logits[i:i + 1], batch["labels"][i:i + 1]).item() for i in range(2)]
    assert loss == pytest.approx(sum(per_sample) / 2, rel=1e-5)
    token_mean = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                 ignore_index=IGNORE_INDEX).item()
    assert abs(loss - token_mean) > 1e-4  # lengths differ, so the two reductions really differ
    assert trainer.loss_is_scaled_for_ga is False
