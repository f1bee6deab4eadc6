"""Packing several samples, with all their images, into one row: no padding, and no cross-talk.

Planning is a pure function: first-fit-decreasing over the token lengths the real processor counted,
bounded by `max_length` tokens and `max_images` images per row (long samples first, each into the
first row it fits; ties keep data order, so the same data always packs the same way).

Building a packed batch reuses the unpacked one: `VisionChatCollator` encodes every sample of every
row in one processor call (labels exactly as without packing), then each sample's tokens are taken
without their padding and laid end to end. Image tensors stay as the processor made them, in
sample order, which is the order their placeholders appear in the packed rows. Each sample attends
only to itself: the rows carry no attention mask, and position ids restart at every sample, from
which transformers builds a block-diagonal causal mask (sdpa / eager; flash-attention varlen on
GPU). For Qwen's 3-D mRoPE, each sample's positions are computed from its own tokens and image
grids, and a restarting text-position row is prepended (`[4, batch, seq]`), as the Qwen-VL models
expect for packed input. A sample's first token never carries a label, so no label crosses a
boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import torch

from ecomtune.backbones.spec import BackboneSpec, PackingPositions
from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator
from ecomtune.data.prepare.sample_store import SampleStore
from ecomtune.data.schema import Sample
from ecomtune.errors import ConfigError, Problem


def check_packable(spec: BackboneSpec, key: str) -> None:
    """Refuse a packing recipe for a family whose packed rows are not verified to train as unpacked ones."""
    if spec.packing is None:
        packable = ", ".join(s.family for s in _families() if s.packing)
        raise ConfigError(f"{spec.title} ({spec.family}) cannot be trained with packing",
                          [Problem(spec.packing_refusal, key)],
                          fix=f"set {key}: false (families that pack: {packable})")


def _families() -> tuple[BackboneSpec, ...]:
    from ecomtune.backbones.families import FAMILIES

    return FAMILIES


def rope_index_of(model) -> Callable | None:
    """The model's own mRoPE position function (`get_rope_index` of Qwen-VL models), wherever it sits under
    PEFT or other wrappers; None for 1-D models."""
    return next((m.get_rope_index for m in model.modules() if hasattr(m, "get_rope_index")), None)


def plan_packs(lengths: Sequence[int], image_counts: Sequence[int], max_length: int,
               max_images: int) -> list[list[int]]:
    """Sample indices per row, first-fit-decreasing: each sample, longest first, goes to the first row it fits
    (tokens and images), else starts a row. A sample longer than `max_length` (or with more images than
    `max_images`) gets a row of its own: the caller has already dropped or refused over-long samples.

    The first row that fits is found in a tree of the rows' free room (`_FreeRoom`), so a million samples take
    seconds; scanning the rows for each sample, the textbook way, takes hours at that size."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room = _FreeRoom(len(lengths), max_length, max_images, {n for n in image_counts if n <= max_images})
    for index in order:
        tokens, images = lengths[index], image_counts[index]
        row = room.first_fit(tokens, images) if tokens <= max_length and images <= max_images else len(rows)
        if row == len(rows):
            rows.append([])
        rows[row].append(index)
        room.take(row, tokens, images)
    return rows


class _FreeRoom:
    """The free tokens and images of `size` rows (all empty at first). For each image count samples ask for, a
    max tree of the rows' free tokens, counting only rows with room for that many images: the first row with room
    for (tokens, images) is then one descent of one tree, and using a row's room updates each tree along one path
    (stopping where the maxima no longer change)."""

    def __init__(self, size: int, max_length: int, max_images: int, image_counts: set[int]) -> None:
        self.leaves = 1
        while self.leaves < max(size, 1):
            self.leaves *= 2
        self.free_tokens = [max_length] * self.leaves
        self.free_images = [max_images] * self.leaves
        self.trees = {count: [max_length] * (2 * self.leaves) for count in sorted(image_counts)}

    def first_fit(self, tokens: int, images: int) -> int:
        """The first row with room for `tokens` and `images` (an empty row always has room)."""
        tree = self.trees[images]
        node = 1
        while node < self.leaves:
            node = 2 * node if tree[2 * node] >= tokens else 2 * node + 1
        return node - self.leaves

    def take(self, row: int, tokens: int, images: int) -> None:
        """Use `tokens` and `images` of `row`'s room (a row past its limits is left with none)."""
        left_tokens, left_images = self.free_tokens[row] - tokens, self.free_images[row] - images
        if left_tokens < 0 or left_images < 0:
            left_tokens = left_images = -1
        self.free_tokens[row], self.free_images[row] = left_tokens, left_images
        for count, tree in self.trees.items():
            value = left_tokens if left_images >= count else -1
            node = row + self.leaves
            if tree[node] == value:
                continue
            tree[node] = value
            while node > 1:
                node //= 2
                largest = max(tree[2 * node], tree[2 * node + 1])
                if tree[node] == largest:
                    break
                tree[node] = largest


def packing_stats(packs: Sequence[Sequence[int]], lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """What packing made of the data: rows, samples per row, and how full the rows are."""
    tokens = sum(lengths[i] for pack in packs for i in pack)
    return {"rows": len(packs), "samples": sum(len(p) for p in packs), "max_length": max_length,
            "samples_per_row": round(sum(len(p) for p in packs) / max(len(packs), 1), 2),
            "fill": round(tokens / max(len(packs) * max_length, 1), 4)}


PACKS_PER_READ = 1024


def pack_rows(samples: SampleStore, packs: Sequence[Sequence[int]]) -> Iterator[dict[str, Any]]:
    """Dataset rows, one per pack: its samples' rows as JSON, in the pack's order (made as they are read, the
    samples of `PACKS_PER_READ` packs read from the store at once)."""
    for start in range(0, len(packs), PACKS_PER_READ):
        group = packs[start:start + PACKS_PER_READ]
        rows = iter(samples.rows_at([i for pack in group for i in pack]))
        for pack in group:
            yield {"pack": orjson.dumps([next(rows) for _ in pack]).decode()}


class PackedCollator:
    """Turns pack rows into packed model inputs (see the module docstring).

    `rope_index(input_ids[1, L], mm_token_type_ids[1, L], image_grid_thw[n, 3]) -> positions[3, 1, L]` is the
    model's own mRoPE function, needed when `positions == "mrope"`. `segments=True` adds `packed_segments`
    (batch, seq): which sample each token belongs to, for a loss averaged per sample."""

    def __init__(self, processor, positions: PackingPositions, rope_index: Callable | None = None,
                 conversation: str = "chat", segments: bool = False) -> None:
        if positions == "mrope" and rope_index is None:
            raise ValueError("mrope packing needs the model's rope index function")
        self.inner = VisionChatCollator(processor, conversation=conversation)
        self.positions = positions
        self.rope_index = rope_index
        self.segments = segments
        self.pad_id = processor.tokenizer.pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        packs = [[Sample.from_row(r) for r in orjson.loads(row["pack"])] for row in rows]
        return self.encode(packs)

    def encode(self, packs: list[list[Sample]]) -> dict[str, torch.Tensor]:
        flat = [sample for pack in packs for sample in pack]
        batch = self.inner.encode(flat)
        mask = batch.pop("attention_mask").bool()
        seq_keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == mask.shape]
        rope = self._rope_positions(batch, mask) if self.positions == "mrope" else None
        out_rows: dict[str, list[torch.Tensor]] = {k: [] for k in [*seq_keys, "position_ids", "packed_segments"]}
        index = 0
        for pack in packs:
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in out_rows}
            for segment in range(len(pack)):
                keep = mask[index]  # not a prefix: some processors (InternVL) pad on the left whatever is asked
                length = int(keep.sum())
                for key in seq_keys:
                    parts[key].append(batch[key][index][keep])
                parts["labels"][-1] = parts["labels"][-1].clone()
                parts["labels"][-1][0] = IGNORE_INDEX  # the previous sample's last token never predicts this one
                text = torch.arange(length)
                parts["position_ids"].append(text if rope is None else torch.cat([text[None], rope[:, index][:, keep]]))
                parts["packed_segments"].append(torch.full((length,), segment, dtype=torch.long))
                index += 1
            for key in out_rows:
                out_rows[key].append(torch.cat(parts[key], dim=-1))
        width = max(row.shape[-1] for row in out_rows["input_ids"])
        result = {k: v for k, v in batch.items() if k not in seq_keys}
        for key, pad in [(k, self._pad_value(k)) for k in seq_keys]:
            result[key] = torch.stack([_pad_to(r, width, pad) for r in out_rows[key]])
        result["position_ids"] = torch.stack([_pad_positions(r, width) for r in out_rows["position_ids"]],
                                             dim=-2 if self.positions == "mrope" else 0)
        if self.segments:
            result["packed_segments"] = torch.stack([_pad_to(r, width, -1) for r in out_rows["packed_segments"]])
        return result

    def _pad_value(self, key: str) -> int:
        return {"labels": IGNORE_INDEX, "input_ids": self.pad_id}.get(key, 0)

    def _rope_positions(self, batch: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        """Every sample's 3-D mRoPE positions [3, samples, seq], from the model's own rope index over the padded
        batch (it takes each sample's own tokens and image grids, honouring the padding mask): one call, not one
        per sample."""
        positions, _ = self.rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                       image_grid_thw=batch.get("image_grid_thw"), attention_mask=mask.long())
        return positions.to(torch.long)


def _pad_to(row: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(row, (0, width - row.shape[-1]), value=value)


def _pad_positions(row: torch.Tensor, width: int) -> torch.Tensor:
    """Padding at the end of a row is its own sequence (positions restart at 0): it attends only to itself."""
    tail = torch.arange(width - row.shape[-1])
    if row.dim() == 2:
        tail = tail.expand(row.shape[0], -1)
    return torch.cat([row, tail], dim=-1)
