"""Loss reductions for instruction tuning, as pure functions of logits and labels.

`token` (TRL's default) averages cross-entropy over every answer token in the batch, so a sample
weighs as much as its answer is long: in an e-commerce mix a one-word VQA answer ("red") is drowned
by 150-token compliance JSONs. `sample` averages within each sample first, then over samples,
so every instruction counts once whatever its length. On the demo's tiny model this is the
difference between reading colour and pattern from the picture or answering one constant word.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ecomtune.data.batches.collator import IGNORE_INDEX


def per_sample_mean_loss(logits: torch.Tensor, labels: torch.Tensor,
                         segments: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy averaged over each sample's answer tokens, then over samples.

    logits: (batch, seq, vocab); labels: (batch, seq) with IGNORE_INDEX where there is no loss.
    segments: (batch, seq), for packed rows: which sample of its row each token belongs to (-1 on padding);
    None = one sample per row. Samples without any answer token are left out of the mean.
    """
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")
    mask = (targets != IGNORE_INDEX).float()
    if segments is None:
        owner = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)
    else:  # a global id per (row, segment); the target's segment owns the loss
        owner = torch.arange(labels.shape[0], device=labels.device)[:, None] * labels.shape[1] + segments[:, 1:]
    ids, owner = torch.unique(owner[mask.bool()], return_inverse=True)
    answered = token_loss[mask.bool()]
    sums = torch.zeros(len(ids), device=logits.device).index_add(0, owner, answered)
    counts = torch.zeros(len(ids), device=logits.device).index_add(0, owner, torch.ones_like(answered))
    return (sums / counts).mean() if len(ids) else token_loss.sum() * 0.0
