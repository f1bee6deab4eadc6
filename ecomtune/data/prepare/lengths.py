"""Exact sample lengths (text + image tokens), fast: without decoding a pixel where the family allows it.

The slow way, which is always right, is the collator itself: render the chat template, decode every image, run
the processor, count. `count_tokens` does that. The fast way rests on two facts that hold for every chat family
(tests/test_lengths.py proves it for each of them, over a spread of image sizes, image positions and resolution
settings, against the collator; every run also spot-checks its first new samples both ways):

1. the processor expands each image placeholder token into a run of tokens that depends only on the image's
   displayed size (its resize, tiling and merge rules read the size, never the pixels);
2. that run is tokenized apart from its neighbours (its tokens are special tokens), so the expanded sequence is
   the placeholder sequence with each placeholder spliced out and its run spliced in.

So a sample's length is the length of its tokenized chat-template text plus, per image, the length of the run for
that image's size minus one. The run for a size is measured once, with the real processor on a blank image of
that size; texts are tokenized in batches by the fast tokenizer; image sizes come from the image checks (headers
and one decode per file, cached). Where the probe shows the splice does not hold, or for prefix-suffix families
(PaliGemma's processor builds the whole prompt itself), every sample goes through the collator instead.

Lengths are remembered in the preparation cache (`ecomtune.data.prepare.cache`) by the processor's fingerprint and
the sample's content and image sizes, and measured in worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
import torch
from PIL import Image

from ecomtune.data.batches.collator import VisionChatCollator, adds_own_specials, render_with_spans
from ecomtune.data.images.strategies import ref_size
from ecomtune.data.prepare.cache import PrepCache, digest, opened_cache
from ecomtune.data.prepare.parallel import batches_of, progress, run_batches, worker_count, worker_pool
from ecomtune.data.prepare.sample_store import SampleStore, SampleWriter
from ecomtune.data.schema import PreparedText, Sample

# Part of every cached length's key: bump it when the way lengths are counted (or kept) changes.
COUNTING = "lengths-2"
TABLE = "lengths"
SPOT_CHECKS = 16  # samples measured both ways before the fast way is trusted with a run
MEASURED_PER_CHUNK = 16384  # samples read, looked up in the cache and measured at a time
Size = tuple[int, int]


@dataclass(frozen=True)
class Length:
    """A sample's tokens as the model sees them: all of them, and those that are image tokens."""

    total: int
    image: int


Measured = tuple[Length, PreparedText | None]


def image_token_ids(processor) -> set[int]:
    """The ids of the tokens that stand for image features (`processor.image_token_ids` where the processor has
    them, else its image token)."""
    ids = getattr(processor, "image_token_ids", None) or [getattr(processor, "image_token_id", None)]
    return {int(i) for i in ids if i is not None}


def processor_fingerprint(processor, conversation: str) -> str:
    """What a sample's length depends on besides the sample: the processor's settings (image processor, chat
    template, special tokens), its tokenizer, the conversation style and ecomtune's way of counting."""
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [COUNTING, conversation, type(processor).__name__, type(tokenizer).__name__, vocabulary,
             json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
             str(processor.chat_template), str(getattr(tokenizer, "padding_side", ""))]
    for name in ("image_processor", "video_processor"):
        part = getattr(processor, name, None)
        if part is not None:
            parts.append(json.dumps(part.to_dict(), sort_keys=True, default=str))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class TokenCounter:
    """Exact lengths of samples for one processor (see the module docstring). `fast` says whether the splice is
    used: for chat families whose processor names its image token, until a spot check finds a difference."""

    ASK, AND, ANSWER = {"type": "text", "text": "Look at"}, {"type": "text", "text": "and"}, \
        {"role": "assistant", "content": [{"type": "text", "text": "Fine."}]}

    def __init__(self, processor, conversation: str = "chat") -> None:
        self.processor = processor
        self.conversation = conversation
        self.image_ids = image_token_ids(processor)
        token = getattr(processor, "image_token", None)
        placeholder = processor.tokenizer.convert_tokens_to_ids(token) if token else None
        self.placeholder: int | None = placeholder if isinstance(placeholder, int) else None
        self.runs: dict[tuple[Size, bool], tuple[int, int] | None] = {}  # (size, multi) -> (added, image tokens)
        self.fast = conversation == "chat" and self.placeholder is not None

    @cached_property
    def fingerprint(self) -> str:
        """`processor_fingerprint`, made when a cache key needs it (the collator's counter never does)."""
        return processor_fingerprint(self.processor, self.conversation)

    @cached_property
    def collator(self) -> VisionChatCollator:
        """The collator `slow` counts with, made on first use."""
        return VisionChatCollator(self.processor, conversation=self.conversation)

    def _render(self, messages: list[dict[str, Any]]) -> tuple[str, bool]:
        text = self.processor.apply_chat_template(messages, tokenize=False)
        return text, adds_own_specials(self.processor, text)

    def run_for(self, size: Size, multi: bool = False) -> tuple[int, int] | None:
        """(tokens one image of `size` adds beyond its placeholder, its image tokens), measured once with the real
        processor on blank images of that size: one, or (`multi`) two in one message, since some processors expand
        the images of a multi-image sample differently (LLaVA-OneVision drops its tiles). None when the output is
        not the placeholder text with identical runs spliced in: then this processor is measured the slow way."""
        key = (size, multi)
        if key not in self.runs:
            content = [self.ASK, {"type": "image"}, *([self.AND, {"type": "image"}] if multi else []), self.AND]
            text, specials = self._render([{"role": "user", "content": content}, self.ANSWER])
            plain = self.processor.tokenizer(text, add_special_tokens=specials)["input_ids"]
            blank = Image.new("RGB", size, (255, 255, 255))
            full = self.processor(text=[text], images=[[blank] * (2 if multi else 1)], add_special_tokens=specials,
                                  return_tensors="pt")["input_ids"][0].tolist()
            self.runs[key] = _splice_run(plain, full, self.placeholder, 2 if multi else 1, self.image_ids)
        return self.runs[key]

    def slow(self, sample: Sample) -> Length:
        """The collator's own count: every image decoded and processed."""
        ids = self.collator.encode([sample])["input_ids"][0]
        return Length(int(ids.shape[0]), int(torch.isin(ids, torch.tensor(sorted(self.image_ids))).sum()))

    def encode_text(self, messages: list[dict[str, Any]]) -> PreparedText:
        """The sample's chat-template text tokenized as the collator tokenizes it, images left as placeholders, with
        the token ranges inside assistant turns (what is learnt)."""
        text, spans = render_with_spans(self.processor, messages)
        encoded = self.processor.tokenizer(text, add_special_tokens=adds_own_specials(self.processor, text),
                                           return_offsets_mapping=True)
        return PreparedText(list(encoded["input_ids"]), learnt_ranges(encoded["offset_mapping"], spans))

    def measure(self, items: Sequence[tuple[Sample, list[Size]]],
                keep_text: bool = False) -> list[tuple[Length, PreparedText | None]]:
        """The length of each (sample, its images' sizes), fast where the splice holds for every image; with
        `keep_text`, also its prepared text (chat families)."""
        chat = self.conversation == "chat"
        texts = [self.encode_text(sample.messages) if keep_text and chat else None for sample, _ in items]
        if not self.fast:
            return [(self.slow(sample), text) for (sample, _), text in zip(items, texts, strict=True)]
        if keep_text:
            ids = [text.ids.tolist() for text in texts]
        else:
            rendered = [self._render(sample.messages) for sample, _ in items]
            ids = [[] for _ in items]
            for specials in {flag for _, flag in rendered}:
                chosen = [i for i, (_, flag) in enumerate(rendered) if flag == specials]
                encoded = self.processor.tokenizer([rendered[i][0] for i in chosen], add_special_tokens=specials)
                for i, row in zip(chosen, encoded["input_ids"], strict=True):
                    ids[i] = row
        out = []
        for (sample, sizes), row, text in zip(items, ids, texts, strict=True):
            out.append((self._spliced(row, sizes) or self.slow(sample), text))
        return out

    def _spliced(self, ids: list[int], sizes: list[Size]) -> Length | None:
        if ids.count(self.placeholder) != len(sizes):  # e.g. the placeholder's text typed inside a message
            return None
        runs = [self.run_for(size, len(sizes) > 1) for size in sizes]
        if any(run is None for run in runs):
            return None
        return Length(len(ids) + sum(added for added, _ in runs), sum(image for _, image in runs))


def _splice_run(plain: list[int], full: list[int], placeholder: int, count: int,
                image_ids: set[int]) -> tuple[int, int] | None:
    """(tokens added per placeholder, image tokens per run) when `full` is `plain` with each of its `count`
    placeholders replaced by the same run of tokens; None otherwise."""
    if plain.count(placeholder) != count or (len(full) - len(plain)) % count:
        return None
    width = (len(full) - len(plain)) // count + 1
    if width < 1:
        return None
    run, out = None, 0  # out: position in full
    for token in plain:
        if token != placeholder:
            if out >= len(full) or full[out] != token:
                return None
            out += 1
        else:
            here = full[out:out + width]
            if run is not None and here != run:
                return None
            run, out = here, out + width
    if out != len(full) or run is None:
        return None
    return width - 1, sum(token in image_ids for token in run)


def learnt_ranges(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> list[list[int]]:
    """[start, end) token ranges whose characters (`offsets`, per token) fall inside any of the character `spans`;
    tokens that cover no characters are never learnt (the collator's rule, `_label_mask`)."""
    ranges: list[list[int]] = []
    for index, (start, stop) in enumerate(offsets):
        if stop > start and any(start < end and stop > begin for begin, end in spans):
            if ranges and ranges[-1][1] == index:
                ranges[-1][1] = index + 1
            else:
                ranges.append([index, index + 1])
    return ranges


def _as_value(length: Length, text: PreparedText | None) -> list:
    """A measured sample as the cache keeps it: [total, image] or [total, image, ids, learnt] (`PreparedText.packed`:
    the ids as base64 of their int32 bytes)."""
    return [length.total, length.image] if text is None else [length.total, length.image, *text.packed()]


def _from_value(value: list) -> tuple[Length, PreparedText | None]:
    return Length(value[0], value[1]), PreparedText.unpacked(value[2:4]) if len(value) >= 4 else None


def _measure_batch(state: tuple[TokenCounter, bool], items: Sequence[tuple[Sample, list[Size]]]) -> list[list]:
    counter, keep_text = state
    return [_as_value(length, text) for length, text in counter.measure(items, keep_text)]


def _spot_check(counter: TokenCounter, items: Sequence[tuple[Sample, list[Size]]]) -> None:
    """Measure a few samples both ways before trusting the fast way with the rest; any difference (a chat template
    or processor that does more than expand placeholders) turns it off for this run, with a notice."""
    if not counter.fast:
        return
    for (sample, _sizes), (fast, _text) in zip(items, counter.measure(items), strict=True):
        slow = counter.slow(sample)
        if fast != slow:
            counter.fast = False
            print(f"ecomtune: {sample.source}: counting tokens without the processor gave {fast.total} tokens, the "
                  f"processor {slow.total}; every sample is measured with the processor instead (slower)",
                  file=sys.stderr)
            return


def sample_key(fingerprint: str, sample: Sample, sizes: list[Size]) -> str:
    """The cache key of a sample's length: the processor's fingerprint, the sample's images and messages as the
    strategy presents them, and the size of every image."""
    return json_sample_key(fingerprint, orjson.dumps(sample.images).decode(), orjson.dumps(sample.messages).decode(),
                           orjson.dumps(sizes).decode())


def json_sample_key(fingerprint: str, images: str, messages: str, sizes: str) -> str:
    """`sample_key` from the compact JSON of the sample's images, messages and image sizes (as a store's rows hold
    them): the key is over that JSON, so the two agree."""
    return digest(fingerprint, f"[{images},{messages},{sizes}]")


def measure_lengths(processor, samples: Sequence[Sample], sizes: dict[str, Size] | None = None,
                    conversation: str = "chat", workers: int | None = None,
                    cache: PrepCache | None = None, description: str = "measuring samples",
                    keep_text: bool = False) -> list[Length]:
    """The exact length of every sample, from the cache where it is known, the rest measured in `workers` processes
    (None: every core) with a progress bar, and remembered. `sizes`: displayed size of image files already known
    (from the image checks); others are read from their headers.
    `keep_text`: also tokenize each sample's text once for training (`Sample.text`, set in place; chat families)."""
    known = sizes or {}
    lengths: list[Length] = []
    with _Measurer(TokenCounter(processor, conversation), len(samples), workers, cache, description,
                   keep_text) as measurer:
        for start in range(0, len(samples), MEASURED_PER_CHUNK):
            chunk = samples[start:start + MEASURED_PER_CHUNK]
            items = [(sample, [ref_size(ref, known) for ref in sample.images]) for sample in chunk]
            keys = [sample_key(measurer.counter.fingerprint, *item) for item in items]
            values = measurer.values(keys, lambda todo, items=items: [items[i] for i in todo])
            for (sample, _sizes), value in zip(items, values, strict=True):
                length, text = _from_value(value)
                if keep_text:
                    sample.text = text
                lengths.append(length)
    return lengths


@dataclass
class PreparedStore:
    """A store's samples measured and with their text prepared (`prepare_store`): the new store, and each sample's
    total and image tokens."""

    samples: SampleStore
    totals: array
    images: array


def prepare_store(processor, store: SampleStore, conversation: str = "chat", workers: int | None = None,
                  cache: PrepCache | None = None, description: str = "measuring samples") -> PreparedStore:
    """`measure_lengths` with `keep_text` for the samples of a store, a chunk of rows at a time: the rows, with
    their text, go to a new store (the one a stage trains on), so no more than a chunk is ever in memory. Rows found
    in the cache stay the JSON text they are (their key is made from it, their text copied from the cached value);
    only the rows to measure become `Sample`s."""
    writer = SampleWriter()
    totals, images = array("i"), array("i")
    with _Measurer(TokenCounter(processor, conversation), len(store), workers, cache, description,
                   keep_text=True) as measurer:
        for columns, image_counts, origins in store.column_chunks(MEASURED_PER_CHUNK):
            columns["sizes"] = [known if known is not None else
                                orjson.dumps([ref_size(ref, {}) for ref in orjson.loads(refs)]).decode()
                                for known, refs in zip(columns["sizes"], columns["images"], strict=True)]
            keys = [json_sample_key(measurer.counter.fingerprint, *texts)
                    for texts in zip(columns["images"], columns["messages"], columns["sizes"], strict=True)]

            def items(todo: list[int], columns: dict[str, list] = columns) -> list[tuple[Sample, list[Size]]]:
                return [(Sample.from_row({name: values[i] for name, values in columns.items()}),
                         [tuple(size) for size in orjson.loads(columns["sizes"][i])]) for i in todo]

            values = measurer.values(keys, items)
            columns["text"] = [orjson.dumps(value[2:4]).decode() if len(value) >= 4 else None for value in values]
            totals.extend(value[0] for value in values)
            images.extend(value[1] for value in values)
            writer.add_columns(columns, image_counts, origins)
    return PreparedStore(writer.finish(), totals, images)


class _Measurer:
    """Cached values (`_as_value`) for chunks of samples, by their keys: read from the cache, the rest measured and
    remembered. The first new samples are measured both ways (`_spot_check`); then a worker pool starts for the
    rest of the run. One progress bar covers `total` samples."""

    def __init__(self, counter: TokenCounter, total: int, workers: int | None, cache: PrepCache | None,
                 description: str, keep_text: bool) -> None:
        self.counter = counter
        self.keep_text = keep_text and counter.conversation == "chat"
        self.wanted = 4 if self.keep_text else 2  # cached values: [total, image] or [total, image, ids, learnt]
        self.total, self.workers, self.done = total, workers, 0
        self.pool, self.pool_size = None, 0
        self._given, self._description = cache, description
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Measurer:
        self.cache = self._stack.enter_context(opened_cache(self._given))
        self.advance = self._stack.enter_context(progress(self._description, self.total))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def values(self, keys: list[str], items: Callable[[list[int]], list[tuple[Sample, list[Size]]]]) -> list[list]:
        """The value of each key; `items(indices)`: the (sample, image sizes) at those indices, to measure."""
        found = self.cache.get_many(TABLE, keys)
        values: list = [value if value is not None and len(value) >= self.wanted else None
                        for value in (found.get(key) for key in keys)]
        todo = [i for i, value in enumerate(values) if value is None]
        self.advance(len(keys) - len(todo))
        if todo:
            work = items(todo)
            state = (self.counter, self.keep_text)
            if not self.pool_size:  # the first new samples: checked both ways, then the workers start
                _spot_check(self.counter, work[:SPOT_CHECKS])
                self.pool_size = worker_count(self.workers, self.total - self.done)
                self.pool = self._stack.enter_context(worker_pool(self.pool_size, state))
            batches = batches_of(range(len(todo)), self.pool_size, 1024)
            measured = run_batches(self.pool, _measure_batch, state, [[work[i] for i in b] for b in batches],
                                   self.advance)
            for batch, results in zip(batches, measured, strict=True):
                self.cache.put_many(TABLE, ((keys[todo[i]], value) for i, value in zip(batch, results, strict=True)))
                for i, value in zip(batch, results, strict=True):
                    values[todo[i]] = value
        self.done += len(keys)
        return values
