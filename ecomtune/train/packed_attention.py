"""Attention for packed rows that costs what its samples cost, not what the row costs.

transformers isolates the samples of a packed row (position ids restart at each) with a block-diagonal mask
for sdpa and eager attention: correct, but every row still pays `row_length²` attention, most of it masked out.
flash-attention's varlen kernel skips the masked blocks on a GPU; this is the same idea for every other device:
each sample's queries attend causally to its own keys in one sdpa call, so a row costs `Σ sample_length²`.

It is registered as an attention implementation (`ecomtune_packed_sdpa`, transformers' AttentionInterface) and
set on a model's language model only for packed training over sdpa (flash-attention and eager are left alone).
A call takes the per-sample path only when it can prove the input is packed rows: causal self-attention with
equal query and key lengths, no sliding window shorter than a sample, and position ids that restart at 0 and
otherwise count up by exactly 1 (what `PackedCollator` makes). Every other call, including generation with its
KV cache and padded unpacked batches, is plain sdpa with the mask transformers built.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "ecomtune_packed_sdpa"


def packed_segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]] | None:
    """(start, end) of every sample in every row, or None unless the rows are packed: some position restarts at 0
    after the first token, and every other position is its predecessor + 1."""
    if position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return None
    steps = position_ids[:, 1:] - position_ids[:, :-1]
    restarts = position_ids[:, 1:] == 0
    if not bool(((steps == 1) | restarts).all()) or not bool(restarts.any()) or bool((position_ids[:, 0] != 0).any()):
        return None
    length = position_ids.shape[1]
    rows = []
    for row in restarts.tolist():
        starts = [0] + [i + 1 for i, restart in enumerate(row) if restart]
        rows.append(list(zip(starts, [*starts[1:], length], strict=True)))
    return rows


class _SegmentCache:
    """The segments of the position ids seen last: every layer of one forward pass gets the same tensor, so they
    are found once per pass (on a GPU, reading them back is a synchronisation)."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.version = -1
        self.segments: list[list[tuple[int, int]]] | None = None

    def get(self, position_ids: torch.Tensor) -> list[list[tuple[int, int]]] | None:
        if position_ids is not self.key or position_ids._version != self.version:
            self.key, self.version, self.segments = position_ids, position_ids._version, packed_segments(position_ids)
        return self.segments


_CACHE = _SegmentCache()


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """sdpa per packed sample (see the module docstring); plain sdpa for anything else. Tensors are
    (batch, heads, seq, dim); the output is (batch, seq, heads, dim), as every transformers attention returns."""
    segments = _segments_if_packed(module, query, key, is_causal, kwargs)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kwargs.pop("position_ids", None)
    rows = []
    for b, row in enumerate(segments):
        parts = [sdpa_attention_forward(module, query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                        None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
                 for s, e in row]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def _segments_if_packed(module, query, key, is_causal, kwargs) -> list[list[tuple[int, int]]] | None:
    position_ids = kwargs.get("position_ids")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if position_ids is None or not causal or query.shape[2] != key.shape[2] or kwargs.get("position_bias") is not None:
        return None
    if position_ids.shape != (query.shape[0], query.shape[2]):
        return None
    segments = _CACHE.get(position_ids)
    window = kwargs.get("sliding_window")
    if segments is not None and window is not None and any(e - s > window for row in segments for s, e in row):
        return None  # a sample longer than the window needs the windowed mask
    return segments


def register() -> None:
    """Make `NAME` a transformers attention implementation (its masks are sdpa's, used by the fallback path)."""
    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_packed_attention(model) -> bool:
    """Switch the language model of a model trained on packed rows from sdpa to per-sample sdpa; True when it
    runs packed attention. Only the language model sees packed rows (vision towers see images). Other
    implementations stay: flash-attention already runs packed rows per sample, and eager was chosen on purpose
    (or is all the family supports)."""
    base, text = _language_config(model)
    if text is None:
        return False  # no separate language model config to switch: the block mask path stays
    if text._attn_implementation == "sdpa":
        register()
        base.set_attn_implementation({"text_config": NAME})
    return text._attn_implementation == NAME


def language_attention(model) -> str:
    """The attention implementation the language model runs (what packed rows go through)."""
    base, text = _language_config(model)
    return str((text or base.config)._attn_implementation)


def _language_config(model):
    """(the transformers model under any PEFT wrapper, its language model's sub-config or None)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    has_text = "text_config" in getattr(base.config, "sub_configs", {})
    return base, base.config.text_config if has_text else None
