"""Batches from samples whose text was tokenized before training: a step only opens images and assembles tensors.

The collator's full path renders the chat template two or more times per sample, tokenizes with character offsets,
maps assistant spans to tokens and runs the processor on text and images together, at every step of every epoch.
A prepared sample (`Sample.text`, made once by `ecomtune.data.prepare.lengths`) already holds its placeholder token
ids and the token ranges that are learnt. A batch of prepared samples is then built as the processor would build it:

1. the images go through the real processor with a text made of their placeholders alone, which gives every image
   input (pixel values, grids, sizes) and, per image, the run of tokens its placeholder expands into;
2. each sample's ids get those runs spliced in at its placeholders (the same splice `lengths` counts with), its
   labels are its ids inside the learnt ranges (-100 elsewhere, and on every image token);
3. any other per-token output of the processor (`mm_token_type_ids`, `token_type_ids`) is taken over the runs from
   step 1 and is 0 on text; rows are padded on the side the processor pads. A text-only sample (no image) is 0
   throughout; which per-token outputs the processor makes for text alone is asked of it once, so a batch of text
   only carries them too.

`VisionChatCollator` compares this with its full path on its first batch and keeps the full path for the run if
anything differs (tests/test_prepared.py shows which families match); a batch it cannot build (a sample not
prepared, a run of an unexpected length) also takes the full path.
"""

from __future__ import annotations

from typing import Any

import torch

from ecomtune.data.batches.collator import IGNORE_INDEX
from ecomtune.data.schema import Sample

SEQUENCE_KEYS = ("input_ids", "attention_mask")


class PreparedBatches:
    """Builds a batch of prepared samples (see the module docstring) with one processor; `counter` knows how long
    each image's run is (`TokenCounter.run_for`)."""

    def __init__(self, processor, counter) -> None:
        self.processor = processor
        self.counter = counter
        self.placeholder_text = processor.image_token
        self.pad_id = processor.tokenizer.pad_token_id
        # where the processor pads: its own default when it has one (InternVL pads on the left), else the tokenizer's
        self.pad_left = getattr(processor, "text_kwargs", {}).get("padding_side",
                                                                processor.tokenizer.padding_side) == "left"
        self.text_keys: dict[str, torch.dtype] | None = None

    def _text_keys(self) -> dict[str, torch.dtype]:
        """The per-token outputs (besides ids and mask) the processor makes for text without images, asked once:
        Qwen's processors still return `mm_token_type_ids`, Gemma 3's `token_type_ids`."""
        if self.text_keys is None:
            self.text_keys = per_token_keys(dict(self.processor(text=["a"], return_tensors="pt",
                                                                add_special_tokens=False)))
        return self.text_keys

    def encode(self, samples: list[Sample], images: list[list[Any]] | None) -> dict[str, Any] | None:
        """The batch, or None when it cannot be built this way (then the caller takes the full path)."""
        if self.counter.placeholder is None or any(s.text is None for s in samples):
            return None
        per_sample = images or [[] for _ in samples]
        side: dict[str, Any] = {}
        if any(per_sample):
            texts = [self.placeholder_text * len(imgs) for imgs in per_sample]
            try:
                side = dict(self.processor(text=texts, images=per_sample, padding=True, return_tensors="pt",
                                           add_special_tokens=False))
            except (ValueError, TypeError, IndexError, RuntimeError):  # a processor that wants more than images
                return None
        extra = per_token_keys(side) if side else self._text_keys()
        rows: list[dict[str, torch.Tensor]] = []
        for row, (sample, imgs) in enumerate(zip(samples, per_sample, strict=True)):
            built = self._row(sample, imgs, side, row, extra)
            if built is None:
                return None
            rows.append(built)
        width = max(r["input_ids"].shape[0] for r in rows)
        batch = {k: v for k, v in side.items() if k not in extra and k not in SEQUENCE_KEYS}
        pads = {"input_ids": self.pad_id, "labels": IGNORE_INDEX, "attention_mask": 0, **dict.fromkeys(extra, 0)}
        for key, pad in pads.items():
            batch[key] = torch.stack([torch.nn.functional.pad(r[key], self._padding(width - r[key].shape[0]), value=pad)
                                      for r in rows])
        return batch

    def _padding(self, count: int) -> tuple[int, int]:
        return (count, 0) if self.pad_left else (0, count)

    def _row(self, sample: Sample, images: list[Any], side: dict[str, Any], row: int,
             extra: dict[str, torch.dtype]) -> dict[str, torch.Tensor] | None:
        """One sample's per-token tensors, its placeholders replaced by the runs the processor made for its images."""
        text = sample.text
        ids = torch.frombuffer(text.ids, dtype=torch.int32).long() if len(text.ids) else \
            torch.zeros(0, dtype=torch.long)
        runs_at = (ids == self.counter.placeholder).nonzero().flatten().tolist()
        if len(runs_at) != len(images):
            return None
        side_row, widths = {}, []
        if images:
            keep = side["attention_mask"][row].bool()
            side_row = {key: side[key][row][keep] for key in ("input_ids", *extra)}
            for image in images:
                run = self.counter.run_for(image.size, len(images) > 1)
                if run is None:
                    return None
                widths.append(run[0] + 1)
            if sum(widths) != side_row["input_ids"].shape[0]:
                return None
        learnt = torch.zeros(len(ids), dtype=torch.bool)
        for start, end in text.learnt:
            learnt[start:end] = True
        labels = torch.where(learnt, ids, torch.full_like(ids, IGNORE_INDEX))
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in ("input_ids", "labels", *extra)}
        previous, offset = 0, 0
        for at, width in zip(runs_at, widths, strict=True):
            pieces["input_ids"].append(ids[previous:at])
            pieces["labels"].append(labels[previous:at])
            for key in extra:
                pieces[key].append(torch.zeros(at - previous, dtype=extra[key]))
            for key in ("input_ids", *extra):
                pieces[key].append(side_row[key][offset:offset + width])
            pieces["labels"].append(torch.full((width,), IGNORE_INDEX, dtype=torch.long))
            previous, offset = at + 1, offset + width
        pieces["input_ids"].append(ids[previous:])
        pieces["labels"].append(labels[previous:])
        for key in extra:
            pieces[key].append(torch.zeros(len(ids) - previous, dtype=extra[key]))  # text-only rows: all of it
        out = {key: torch.cat(parts) for key, parts in pieces.items()}
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        return out


def per_token_keys(outputs: dict[str, Any]) -> dict[str, torch.dtype]:
    """The processor outputs shaped like its attention mask (one value per token), other than ids and mask, with
    their dtypes."""
    mask = outputs.get("attention_mask")
    return {k: v.dtype for k, v in outputs.items() if torch.is_tensor(v) and mask is not None
            and v.shape == mask.shape and k not in SEQUENCE_KEYS}
