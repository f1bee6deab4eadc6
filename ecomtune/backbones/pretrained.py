"""A tiny twin that already has general skills: the stand-in for "a general-purpose VLM" the recipe starts from.

The paper adapts a pretrained VLM and checks that it keeps its broad skills. A random-weight twin has none to keep,
so ecomtune builds, once per seed, a tiny Qwen2-VL trained on the general world (`ecomtune/tasks/general_world.py`,
training split only): full fine-tuning of every weight of a random twin of the same seed, built at the sizes the plan
names (wider and deeper than `tiny-qwen2-vl`, see `GENERAL_SIZES`), with a plain PyTorch loop (the fastest way at
this size: no Trainer, no data files, scenes drawn in memory).

Cached like the tiny twins (`ECOMTUNE_CACHE`, `~/.cache/ecomtune/tiny`): the key holds the twin's and the
pretraining's versions and the seed, so a change to either builder rebuilds. The build is deterministic (the same
seed, the same bytes on one machine), happens in a temporary folder renamed into place, and under a kernel `flock`,
so a second process waits for the first one's build and then uses it instead of building its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from filelock import FileLock

from ecomtune.backbones.tiny import TINY_VERSION, TinyTwin, build_into, default_cache_dir, ensure_tiny
from ecomtune.errors import DataError

# Part of the cache key: bump it whenever the pretraining (data, schedule, sizes) changes.
PRETRAINED_VERSION = 2
DONE_FILE = "pretraining.json"


@dataclass(frozen=True)
class Pretraining:
    """How the general base is trained: steps of `batch_size` new general-world scenes each (one pass, no scene
    seen twice), AdamW at `learning_rate` with a linear warm-up and a cosine decay."""

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.0
    # Sizes beyond the random twin's (text_config / vision_config keys); empty: the random twin's own sizes.
    text: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)


# The general base is wider and deeper than the random twin (about 1.09M parameters against 0.53M): a language model
# of width 128 in 3 layers with 8 heads, and a 2-block vision tower whose merger feeds it. At the twin's own size
# (width 64, 2 layers, 1 vision block) 600 steps reached 0.53 general accuracy, this size 0.59, at 1.8x the time
# per step (on the general world before shapes and words were put on the patch grid). It does not learn spatial
# relations: they stay at chance (docs/backbones.md).
GENERAL_SIZES = {"text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
                          "num_attention_heads": 8, "num_key_value_heads": 4},
                 "vision": {"depth": 2, "hidden_size": 128}}
PRETRAINED_DEFAULT = Pretraining(**GENERAL_SIZES)
# alias -> the random twin it starts from
PRETRAINED_ALIASES = {"tiny-qwen2-vl-general": "tiny-qwen2-vl"}


def cache_name(alias: str, seed: int, plan: Pretraining) -> str:
    """The cache folder's name: alias, both builders' versions, seed, and a digest of the plan when it is not the
    default one."""
    name = f"{alias}-v{TINY_VERSION}.p{PRETRAINED_VERSION}-seed{seed}"
    if plan != PRETRAINED_DEFAULT:
        name += "-" + hashlib.sha256(json.dumps(asdict(plan), sort_keys=True).encode()).hexdigest()[:12]
    return name


def starting_twin(twin: TinyTwin, plan: Pretraining) -> TinyTwin:
    """The random twin the pretraining starts from: the family's, at the plan's sizes."""
    if not plan.text and not plan.vision:
        return twin
    return replace(twin, text={**twin.text, **plan.text}, vision={**twin.vision, **plan.vision})


def ensure_pretrained(alias: str, twin_alias: str, twin: TinyTwin, seed: int, cache_dir: Path | None = None,
                      plan: Pretraining | None = None, on_build=None) -> Path:
    """The general base's folder, built on first use. `on_build(message)` is told when a build starts."""
    plan = plan or PRETRAINED_DEFAULT
    root = cache_dir or default_cache_dir()
    target = root / cache_name(alias, seed, plan)
    if (target / DONE_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{target.name}.lock"):  # flock: the kernel drops it however the holder ends
        if (target / DONE_FILE).is_file():  # another process built it while this one waited
            return target
        sized = starting_twin(twin, plan)
        sizes = hashlib.sha256(json.dumps([plan.text, plan.vision], sort_keys=True).encode()).hexdigest()[:8]
        start = ensure_tiny(twin_alias if sized is twin else f"{alias}-start-{sizes}", sized, seed, root)
        if on_build is not None:
            on_build(f"building {alias} (seed {seed}): {plan.steps} steps of general-world training on {start.name}, "
                     "once; later runs use the cache")
        # A folder at `target` without DONE_FILE is unfinished (an older layout): never complete, safe to replace.
        build_into(target, lambda folder: pretrain(start, folder, seed, plan), replace_unfinished=True)
    return target


def encode_answered(processor, conversations: list[list[dict]], images: list[list]) -> dict[str, torch.Tensor]:
    """A training batch of single-answer conversations: the processor's chat template, right padding, and labels on
    the answer's tokens only (the answer and the end of its turn, so the model learns to stop), -100 elsewhere.
    The answer is the rendered text after the prompt with its generation prompt; its tokens are the last ones of
    each row, since the template's rendering of the prompt is a prefix of the whole and the answer holds no image.
    The same tokens and labels as the training collator gives these conversations."""
    processor.tokenizer.padding_side = "right"
    texts, answer_tokens = [], []
    for messages in conversations:
        text = processor.apply_chat_template(messages, tokenize=False)
        prompt = processor.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        if not text.startswith(prompt):
            raise DataError("The chat template is not prefix-preserving, so the answer's tokens cannot be located",
                            fix="use the family's standard chat template (processor.chat_template)")
        texts.append(text)
        answer_tokens.append(len(processor.tokenizer(text[len(prompt):], add_special_tokens=False)["input_ids"]))
    batch = dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))
    labels = torch.full_like(batch["input_ids"], -100)
    for row, count in enumerate(answer_tokens):
        end = int(batch["attention_mask"][row].sum())
        labels[row, end - count:end] = batch["input_ids"][row, end - count:end]
    batch["labels"] = labels
    return batch


def _general_batch(processor, first: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    from ecomtune.tasks.general_world import general_prompt, general_questions, render_general
    from ecomtune.tasks.prompts import chat_record

    items = general_questions("train", size, seed, first=first)
    conversations = [chat_record(["x"], general_prompt(q), q.answer)["messages"] for _, q in items]
    return encode_answered(processor, conversations, [[render_general(scene)] for scene, _ in items])


def pretrain(start: Path, out: Path, seed: int, plan: Pretraining) -> dict:
    """Full fine-tuning of the model in `start` on the general world's training split; saved into `out` with the
    processor and `pretraining.json` (the plan, the loss at the start and the end, the time it took)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(start)
    model = AutoModelForImageTextToText.from_pretrained(start, dtype=torch.float32)
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)

    def rate(step: int) -> float:
        if step < plan.warmup:
            return (step + 1) / plan.warmup
        progress = (step - plan.warmup) / max(1, plan.steps - plan.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    started, losses = time.perf_counter(), []
    for step in range(plan.steps):
        batch = _general_batch(processor, step * plan.batch_size, plan.batch_size, seed)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    window = max(1, min(20, len(losses)))
    record = {"version": PRETRAINED_VERSION, "seed": seed, "start": start.name, "plan": asdict(plan),
              "data": "general world, training split", "scenes": plan.steps * plan.batch_size,
              "loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window,
              "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    (out / DONE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
