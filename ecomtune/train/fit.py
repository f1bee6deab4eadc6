"""What fits a GPU, and which setting to change when the recipe does not: searches over the memory estimate.

Pure functions of a `ModelShape`, a planned step and the budget (`ecomtune.train.memory.estimate`), so the
answers are exact for the estimate and testable without a model. Two kinds of answer:

- the largest value of one setting that fits with everything else as planned: `max_length` (the longest
  sample), images per sample (each adds its image tokens to the sample and to the vision tower's work),
  and `batch_size`;
- the knobs, each turned alone on the recipe as planned, in the order that costs the least: settings that
  cost only speed first (gradient checkpointing, an 8-bit optimizer, the tiled loss, a smaller batch with
  more accumulation: the same effective batch), then those that cost detail or capacity (lower
  `max_pixels`, a lower LoRA rank). The first one that fits is the one to turn; when none fits alone they
  are combined in that order until the plan fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ecomtune.train.memory import GIB, ModelShape, TrainShape, estimate

# Image token budgets (Qwen-style, per image) tried when max_pixels is the knob, largest first.
PIXEL_PRESETS = (1280, 1024, 768, 512, 384, 256)


@dataclass(frozen=True)
class PlannedSample:
    """The sample a data-less plan assumes: text tokens plus `images` photos of `image_tokens` tokens each."""

    text_tokens: int
    images: int
    image_tokens: int  # per image, from the real processor at the recipe's resolution

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.images * self.image_tokens


@dataclass(frozen=True)
class Knob:
    """One change to the recipe and what the plan costs after it."""

    setting: str  # as the recipe writes it, e.g. "backbone.resolution.max_pixels=401408"
    total_gib: float
    fits: bool
    cost: str  # what it gives up


def total(shape: ModelShape, step: TrainShape) -> float:
    return estimate(shape, step)["total"]


def step_for(step: TrainShape, sample: PlannedSample, batch: int | None = None) -> TrainShape:
    """The step of `batch` (default: the step's) samples like `sample`."""
    batch = batch or step.batch_size
    return replace(step, batch_size=batch, seq_len=sample.tokens, image_tokens=batch * sample.images *
                   sample.image_tokens)


def largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n), for a `fits` that only turns from true to false; None if
    not even `low` fits."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def largest_settings(shape: ModelShape, step: TrainShape, sample: PlannedSample,
                     budget: float) -> dict[str, int | None]:
    """The largest max_length, images per sample and batch size that fit `budget` bytes, one at a time, the rest
    as planned. max_length keeps the sample's images (their tokens are part of it)."""
    def with_length(length: int) -> bool:
        return total(shape, replace(step, seq_len=length)) <= budget

    def with_images(count: int) -> bool:
        return total(shape, step_for(step, replace(sample, images=count))) <= budget

    def with_batch(batch: int) -> bool:
        return total(shape, step_for(step, sample, batch)) <= budget

    return {"max_length": largest(with_length, max(1, sample.images * sample.image_tokens), 1 << 20),
            "images_per_sample": largest(with_images, 0, 256),
            "batch_size": largest(with_batch, 1, 4096)}


@dataclass(frozen=True)
class RecipeKnobs:
    """What the recipe allows to change, beyond the step itself."""

    stage: str  # recipe settings are named under it ("sft.train.batch_size")
    grad_accum: int
    lora_rank: int
    max_length: int | None  # the stage's: a planned sample longer than this would be dropped
    max_pixels_knob: bool  # the family has a max_pixels setting
    image_tokens_at: Callable[[int], int] | None = None  # max_pixels -> tokens of the planned photo


def knobs(shape: ModelShape, step: TrainShape, sample: PlannedSample, budget: float,
          recipe: RecipeKnobs) -> list[Knob]:
    """Each knob turned alone (see the module docstring), cheapest first: those that lower the estimate, and, when
    the planned sample is longer than max_length, those that let it in. A knob fits when the estimate is within
    `budget` and the sample within max_length."""
    before = total(shape, step)
    found: list[Knob] = []

    def short_enough(tokens: int) -> bool:
        return recipe.max_length is None or tokens <= recipe.max_length

    def add(setting: str, changed: TrainShape, cost: str) -> None:
        """`setting`: space-separated recipe keys, under the stage unless they name the backbone."""
        setting = " ".join(part if part.startswith("backbone.") else f"{recipe.stage}.{part}"
                           for part in setting.split())
        after = total(shape, changed)
        if after < before or (not short_enough(sample.tokens) and short_enough(changed.seq_len)):
            found.append(Knob(setting, after / GIB, after <= budget and short_enough(changed.seq_len), cost))

    if not short_enough(sample.tokens):
        found.append(Knob(f"{recipe.stage}.max_length={sample.tokens}", before / GIB, before <= budget,
                          "longer samples allowed: more memory for the longest ones"))

    if not step.gradient_checkpointing:
        add("train.gradient_checkpointing=true", replace(step, gradient_checkpointing=True), "~30% slower steps")
    if step.optimizer == "adamw":
        add("train.optimizer=paged_adamw_8bit", replace(step, optimizer="adamw8bit"), "8-bit optimizer moments")
    if step.full_logits:
        add("train.loss_average=token", replace(step, full_logits=False), "tokens, not samples, weigh equally")
    if step.batch_size > 1:
        def with_batch(batch: int) -> bool:
            return total(shape, step_for(step, sample, batch)) <= budget

        batch = largest(with_batch, 1, step.batch_size - 1) or 1
        accum = -(-recipe.grad_accum * step.batch_size // batch)
        add(f"train.batch_size={batch} train.grad_accum={accum}", step_for(step, sample, batch),
            "slower steps, the same effective batch")
    if recipe.max_pixels_knob and recipe.image_tokens_at is not None and sample.images:
        for tokens in PIXEL_PRESETS:
            pixels = tokens * 28 * 28
            fewer = recipe.image_tokens_at(pixels)
            if fewer >= sample.image_tokens:
                continue
            smaller = replace(sample, image_tokens=fewer)
            if (total(shape, step_for(step, smaller)) <= budget and short_enough(smaller.tokens)) \
                    or tokens == PIXEL_PRESETS[-1]:
                add(f"backbone.resolution.max_pixels={pixels}", step_for(step, smaller),
                    f"{fewer} image tokens per photo instead of {sample.image_tokens}: less detail")
                break
    if recipe.lora_rank > 8:
        ratio = 8 / recipe.lora_rank
        add("lora.r=8", replace(step, lora_params=int(step.lora_params * ratio)), "less adapter capacity")
    return found


def turn_first(found: list[Knob]) -> list[Knob]:
    """The knobs to turn: the first that fits alone, else all of them in order (the caller re-plans)."""
    alone = next((k for k in found if k.fits), None)
    return [alone] if alone else found
