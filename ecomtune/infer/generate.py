"""The one batched generation: greedy, left-padded, for a vision-language model (a user turn of images and text)
or a text-only LLM (the prompt in its chat template), used by bench, predict, curation, export's check and the
in-training probe alike, so the same model and prompts give the same answers wherever they are asked.

The tokenizer is left as it was found: generation pads on the left, training pads its own way, and the padding
side is put back when generation ends (or is abandoned).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ecomtune.data.batches.collator import adds_own_specials, batch_images
from ecomtune.data.images.strategies import open_image
from ecomtune.data.schema import ImageRef
from ecomtune.errors import DataError, Problem
from ecomtune.infer.load import TEXT_LLM, LoadedModel
from ecomtune.tasks.image_turn import image_turn


def model_context(config) -> int | None:
    """The language model's context (`max_position_embeddings`), None when the config does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def check_prompts_fit(tokenizer, context: int | None, prompts: list[str], max_new_tokens: int,
                      sources: list[str] | None = None) -> None:
    """Every prompt's text tokens plus the answer's `max_new_tokens` must fit the model's `context` (images come
    on top). A prompt past it (a record with a huge title or description) is refused before anything is
    generated, each named by `sources` (the records' file:line), instead of running the machine out of memory
    or past the model's positions."""
    if not context or not prompts:
        return
    counts = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    over = [i for i, count in enumerate(counts) if count + max_new_tokens > context]
    if over:
        where = sources or [f"prompt {i + 1}" for i in range(len(prompts))]
        raise DataError(f"{len(over)} prompt(s) do not fit the model's context of {context} tokens with their "
                        f"{max_new_tokens}-token answer; nothing was generated",
                        [Problem(f"the prompt has {counts[i]:,} text tokens", where[i]) for i in over[:20]],
                        fix="shorten the long fields of those records (a title or description of that size is "
                        "rarely meant), or drop the records")


@contextmanager
def padded_left(tokenizer) -> Iterator[Any]:
    """`tokenizer` padding on the left for as long as the block runs, then on the side it padded before."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def encode_turns(processor, prompts: list[str], pictures: list[list[Any]], device) -> Any:
    """The processor's inputs for one user turn per prompt (its opened `pictures`, then the prompt), with the
    generation prompt, padded together and moved to `device`."""
    texts = [processor.apply_chat_template([image_turn(shown, prompt)], add_generation_prompt=True)
             for prompt, shown in zip(prompts, pictures, strict=True)]
    return processor(text=texts, images=batch_images(pictures), padding=True, return_tensors="pt",
                     add_special_tokens=adds_own_specials(processor, texts[0])).to(device)


def text_prompt(tokenizer, prompt: str) -> str:
    """A text-only LLM's input for `prompt`: its chat template's user turn when it has one, else the prompt."""
    if not tokenizer.chat_template:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def greedy_ids(model, inputs, max_new_tokens: int, **settings: Any) -> torch.Tensor:
    """The prompt ids followed by up to `max_new_tokens` greedily generated ones, per row."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **settings)


def generate_batches(loaded: LoadedModel, prompts: list[str], images: list[list[ImageRef]], max_new_tokens: int,
                     batch_size: int, sources: list[str] | None = None) -> Iterator[list[str]]:
    """Greedy, batched, left-padded generation; yields the decoded new text of each batch's prompts, in order.
    A VLM's prompts are first checked to fit the model's context (`check_prompts_fit`; `sources` name them) and
    each is shown its `images`; a text-only LLM (`load_text_llm`) reads the prompts alone."""
    processor, model = loaded.processor, loaded.model
    text_only = loaded.info.get("kind") == TEXT_LLM
    tokenizer = processor if text_only else processor.tokenizer
    if not text_only:
        check_prompts_fit(tokenizer, model_context(model.config), prompts, max_new_tokens, sources)
    device = next(model.parameters()).device
    with padded_left(tokenizer):
        for start in range(0, len(prompts), batch_size):
            if text_only:
                texts = [text_prompt(tokenizer, prompt) for prompt in prompts[start:start + batch_size]]
                inputs = tokenizer(texts, return_tensors="pt", padding=True).to(device)
                out = greedy_ids(model, inputs, max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            else:
                pictures = [[open_image(ref) for ref in refs] for refs in images[start:start + batch_size]]
                inputs = encode_turns(processor, prompts[start:start + batch_size], pictures, device)
                out = greedy_ids(model, inputs, max_new_tokens)
            yield [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                              skip_special_tokens=True)]


def generate(loaded: LoadedModel, prompts: list[str], images: list[list[ImageRef]], max_new_tokens: int,
             batch_size: int, description: str, sources: list[str] | None = None) -> list[str]:
    """All answers of `generate_batches`, with a progress bar."""
    from rich.progress import Progress

    answers: list[str] = []
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(prompts))
        for batch in generate_batches(loaded, prompts, images, max_new_tokens, batch_size, sources):
            answers.extend(batch)
            progress.advance(bar, len(batch))
    return answers
