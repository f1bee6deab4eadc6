"""Batches for training: chat template -> processor -> labels on the assistant's answers only.

How labels are found, for any family whose chat template is prefix-preserving (rendering the first
k messages is a prefix of rendering all of them; true of Qwen, LLaVA and Gemma templates):
1. render the conversation to text with the family's own chat template;
2. an assistant turn spans from the end of `render(messages[:i], add_generation_prompt=True)` to the
   end of `render(messages[:i+1])`: its answer and its end-of-turn token, so the model learns to stop;
3. the real processor expands image placeholders and tokenizes, reporting each token's character
   offsets and where placeholders grew; tokens inside an assistant span get labels, all others -100.
Nothing is ever truncated here: `count_tokens` measures samples up front so that over-long samples
are reported before training (cutting through image tokens crashes Qwen-style models).
"""

from __future__ import annotations

import bisect
import sys
from typing import Any

import torch

from ecomtune.data.images.strategies import DecodedImages
from ecomtune.data.schema import Sample
from ecomtune.errors import DataError, Problem
from ecomtune.tasks.image_turn import image_turn

IGNORE_INDEX = -100


def render_with_spans(processor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the character span of every assistant turn in it: a turn starts where the
    conversation before it, with the generation prompt, ends, and ends where the conversation up to it ends.
    Both renders must be prefixes of the whole (one render less for the last turn, the usual single answer)."""
    text = processor.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if not any(m["role"] == "user" for m in messages[:i]):  # parse_record drops such turns; never learn from 0
            raise DataError("An assistant turn comes before any user turn, so where its answer starts is unknown",
                            [Problem(f"assistant turn {i}", "messages")],
                            fix="drop assistant turns before the first user turn (ecomtune's readers do)")
        head = processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = text if i == len(messages) - 1 else processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(head) and text.startswith(upto)) or len(head) > len(upto):
            raise DataError(
                "The chat template is not prefix-preserving, so assistant tokens cannot be located",
                [Problem(f"rendering the messages before assistant turn {i} is not a prefix of rendering them all",
                         "chat template")],
                fix="use the family's standard chat template (processor.chat_template)",
            )
        spans.append((len(head), len(upto)))
    return text, spans


def _label_mask(offsets: torch.Tensor, replacements: list[dict], spans: list[tuple[int, int]]) -> torch.Tensor:
    """For each token, whether it lies inside an assistant span. Spans are in the rendered text; token
    offsets are in the processor's expanded text (placeholders replaced by many image tokens), so span
    ends are shifted by the characters gained at every placeholder before them."""
    ends = [r["span"][1] for r in replacements]
    # new_span is in expanded-text coordinates, so this difference is the total gained up to that placeholder
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    shifted = [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in spans]
    starts, stops = offsets[:, 0], offsets[:, 1]  # (tokens,) each; vectorised: padded batches are long
    mask = torch.zeros_like(starts, dtype=torch.bool)
    for s, e in shifted:
        mask |= (starts < e) & (stops > s)
    return mask & (stops > starts)


def batch_images(per_sample: list[list[Any]]) -> list[list[Any]] | None:
    """Images for a processor call over a batch: one list per sample (SmolVLM, Gemma 3 and Mllama pair images
    with prompts only this way; the others accept it too), or None when no sample has any."""
    return per_sample if any(per_sample) else None


def adds_own_specials(processor, text: str) -> bool:
    """Whether the tokenizer should add its special tokens to `text`: not when the chat template already
    wrote the bos (Gemma, Llama 3, Mistral templates do; tokenizing with specials would double it)."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def processed(processor, texts: list[str], images: list[list[Any]] | None) -> tuple[dict[str, Any], list[list]]:
    """The processor's batch for rendered `texts` (tensors, with token offsets) and, per text, where its image
    placeholders grew. The processor is asked for Python values and the batch is made tensors here, without the
    replacement offsets: several processors (Idefics3, InternVL) try to make those offsets a tensor too, which fails
    when the first sample of a batch has no image."""
    from transformers import BatchFeature

    output = dict(processor(text=texts, images=images, padding=True, return_tensors=None,
                            return_offsets_mapping=True, return_text_replacement_offsets=True,
                            add_special_tokens=adds_own_specials(processor, texts[0])))
    replacements = output.pop("text_replacement_offsets", None)
    return dict(BatchFeature(output, tensor_type="pt")), replacements or [[] for _ in texts]


def prefix_and_answer(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """A prefix-suffix family's two parts: the conversation up to the answer, and the answer's text."""
    answer = "".join(b.get("text", "") for b in messages[-1]["content"])
    return messages[:-1], answer


class VisionChatCollator:
    """Turns samples (rows of a `datasets.Dataset`) into model inputs with assistant-only labels.

    `conversation` is the family's (see `BackboneSpec.conversation`): `chat` renders the chat template and
    labels the assistant turns; `prefix-suffix` (PaliGemma) gives the processor the prompt as `text` and the
    answer as `suffix`, and the processor marks the suffix (token_type_ids = 1) as what is learnt."""

    def __init__(self, processor, max_length: int | None = None, conversation: str = "chat") -> None:
        self.processor = processor
        self.max_length = max_length
        self.conversation = conversation
        self.processor.tokenizer.padding_side = "right"
        self.decoded = DecodedImages()  # epochs after the first decode no image again (within a memory budget)
        self._prepared = None  # PreparedBatches, made on the first batch of prepared samples
        self.prepared_matches: bool | None = None  # whether prepared batches equal the full path's (first batch)

    def _encode_chat(self, samples: list[Sample], images: list[list[Any]] | None) -> dict[str, Any]:
        texts, spans = [], []
        for sample in samples:
            text, turn_spans = render_with_spans(self.processor, sample.messages)
            texts.append(text)
            spans.append(turn_spans)
        batch, replacements = processed(self.processor, texts, images)
        offsets = batch.pop("offset_mapping")
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, (row_offsets, row_repl, row_spans) in enumerate(zip(offsets, replacements, spans, strict=True)):
            mask = _label_mask(row_offsets, list(row_repl), row_spans)
            labels[row, mask] = batch["input_ids"][row, mask]
        batch["labels"] = labels
        return batch

    def _encode_prefix_suffix(self, samples: list[Sample], images: list[list[Any]] | None) -> dict[str, Any]:
        prompts, answers = zip(*(prefix_and_answer(s.messages) for s in samples), strict=True)
        texts = [self.processor.apply_chat_template(list(p), tokenize=False) for p in prompts]
        batch = self.processor(text=texts, images=images, suffix=list(answers), padding=True,
                               return_tensors="pt")
        # the suffix (answer + eos) is token type 1; labels are built here rather than taken from the processor,
        # which documents its own `labels` output as kept for backward compatibility only
        batch["labels"] = batch["input_ids"].masked_fill(batch["token_type_ids"] == 0, IGNORE_INDEX)
        return batch

    def _from_prepared(self, samples: list[Sample], images: list[list[Any]] | None) -> dict[str, Any] | None:
        """The batch built from the samples' prepared text (`ecomtune.data.batches.prepared`), or None: not prepared,
        not buildable, or (checked on the first such batch) not what the full path gives for this processor."""
        if self.conversation != "chat" or self.prepared_matches is False or any(s.text is None for s in samples):
            return None
        if self._prepared is None:
            from ecomtune.data.batches.prepared import PreparedBatches
            from ecomtune.data.prepare.lengths import TokenCounter

            self._prepared = PreparedBatches(self.processor, TokenCounter(self.processor, self.conversation))
        batch = self._prepared.encode(samples, images)
        if batch is None:  # this processor's batches cannot be built from prepared text: not tried again
            self.prepared_matches = False
            return None
        if self.prepared_matches is None:
            full = self._encode_chat(samples, images)
            self.prepared_matches = same_batch(batch, full)
            if not self.prepared_matches:
                print("ecomtune: batches built from the prepared text differ from the processor's for this model; "
                      "every batch is built by the processor instead (slower)", file=sys.stderr)
                return full
        return batch

    def encode(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        images = batch_images([[self.decoded.open(ref) for ref in sample.images] for sample in samples])
        batch = self._from_prepared(samples, images)
        if batch is None:
            encode = self._encode_prefix_suffix if self.conversation == "prefix-suffix" else self._encode_chat
            batch = encode(samples, images)
        batch["labels"][batch["attention_mask"] == 0] = IGNORE_INDEX
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            longest = max(range(len(samples)), key=lambda i: int(batch["attention_mask"][i].sum()))
            raise DataError(f"A batch is {batch['input_ids'].shape[1]} tokens, over max_length {self.max_length}",
                            [Problem("sample too long", samples[longest].source)],
                            fix="raise max_length, lower backbone.resolution (max_pixels, longest_edge, max_tiles), "
                            "or drop the sample")
        return dict(batch)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.encode([Sample.from_row(r) for r in rows])


def same_batch(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two batches hold the same keys and equal values (tensors: same shape and values)."""
    if one.keys() != other.keys():
        return False
    for key, value in one.items():
        theirs = other[key]
        if torch.is_tensor(value) != torch.is_tensor(theirs):
            return False
        if torch.is_tensor(value) and (value.shape != theirs.shape or value.dtype != theirs.dtype
                                       or not torch.equal(value, theirs)):
            return False
        if not torch.is_tensor(value) and value != theirs:
            return False
    return True


def count_tokens(processor, sample: Sample, conversation: str = "chat") -> int:
    """Exact length in tokens (text + image tokens) of one sample, as the model will see it."""
    return int(VisionChatCollator(processor, conversation=conversation).encode([sample])["input_ids"].shape[1])


def count_image_tokens(processor, images: list) -> int:
    """How many image tokens the model sees for `images` (one user turn holding them all), counted from
    the real processor's output, so it holds for any family's resizing and merging rules."""
    if not images:
        return 0
    text = processor.apply_chat_template([image_turn(images)], tokenize=False)
    ids = processor(text=[text], images=list(images), return_tensors="pt")["input_ids"]
    return int((ids == processor.image_token_id).sum())
