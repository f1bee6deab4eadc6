"""Real-size twins: a real checkpoint's architecture at its published dimensions, with random weights.

Size, not knowledge, decides memory and speed: a model built from the checkpoint's dimensions
(`published.py`) has its parameter count, module names, image token counts and step cost, and needs
no download. `--backbone sized:<alias>` resolves to a folder holding:

- config.json: the family's real config class at the published dimensions (vocabulary included);
- the family's real processor with the checkpoint's image-processor defaults, and a tokenizer trained
  locally (as the tiny twins' is). Its few thousand ids sit inside the real vocabulary, which the
  embeddings and LM head keep at full size; its token ids differ from the real tokenizer's;
- no weights until something must run: `ecomtune plan` builds the model on the meta device, and the
  first `load_model` writes seeded random weights (bfloat16 safetensors, one tensor at a time) that
  transformers then loads like any checkpoint, quantizing to 4-bit tensor by tensor as it reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ecomtune.backbones.published import CHECKPOINTS, PublishedCheckpoint
from ecomtune.backbones.tiny import (
    TinyTwin,
    _transformers_class,
    build_into,
    chat_template_text,
    train_tokenizer,
)
from ecomtune.runtime import cache_root

SIZED_PREFIX = "sized:"
SIZED_VERSION = 1  # part of the cache key: bump when the builder changes
MARKER = "sized_twin.json"  # written last; names the checkpoint a folder copies
SHARD_BYTES = 2 * 1024**3


def sized_config(checkpoint: PublishedCheckpoint, twin: TinyTwin, token_ids: dict[str, int] | None = None):
    """The checkpoint's config at its published dimensions, through the family's real config class.

    `token_ids` are the twin tokenizer's (bos/eos/pad and the image tokens); without them (parameter counting
    on the meta device) the config class's defaults stay, which change no shape."""
    ids = dict(token_ids or {})
    special = {k: ids.pop(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in ids}
    text = dict(checkpoint.text, tie_word_embeddings=checkpoint.tie_word_embeddings,
                **(special if twin.text_token_ids else {}))
    extra = {**twin.config_extra, **checkpoint.extra}
    return _transformers_class(checkpoint.config_class)(
        text_config=text, vision_config=dict(checkpoint.vision), tie_word_embeddings=checkpoint.tie_word_embeddings,
        **ids, **({} if twin.text_token_ids else special), **extra)


def meta_model(checkpoint: PublishedCheckpoint, twin: TinyTwin, config=None):
    """The checkpoint's model on the meta device: every parameter's shape, no memory."""
    from transformers import AutoModelForImageTextToText

    config = config or sized_config(checkpoint, twin)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def checkpoint_of(hub_id: str | None) -> PublishedCheckpoint | None:
    return CHECKPOINTS.get(hub_id) if hub_id else None


def _processor(checkpoint: PublishedCheckpoint, twin: TinyTwin):
    tokenizer = train_tokenizer(twin.special_tokens, twin.eos, twin.pad, twin.bos, twin.adds_bos, twin.named_tokens)
    image_class, image_kwargs = checkpoint.image_processor
    parts: dict[str, Any] = {"image_processor": _transformers_class(image_class)(**image_kwargs),
                             "tokenizer": tokenizer}
    video = checkpoint.video_processor or twin.video_processor
    if video is not None and (checkpoint.processor_class or twin.processor_class) != "Idefics3Processor":
        parts["video_processor"] = _transformers_class(video[0])(**video[1])
    extra = {**twin.processor_extra, **checkpoint.processor_extra}
    return _transformers_class(checkpoint.processor_class or twin.processor_class)(
        **parts, chat_template=chat_template_text(twin.chat_template), **extra)


def build_sized(checkpoint: PublishedCheckpoint, twin: TinyTwin, out: Path) -> None:
    """Write a sized twin's config and processor into `out` (no weights: see `ensure_weights`)."""
    processor = _processor(checkpoint, twin)
    tokenizer = processor.tokenizer
    vocab = checkpoint.text["vocab_size"]
    if len(tokenizer) > vocab:
        raise AssertionError(f"the twin tokenizer ({len(tokenizer)} ids) must fit the real vocabulary ({vocab})")

    def token_id(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    ids = {"eos_token_id": token_id(twin.eos), "pad_token_id": token_id(twin.pad),
           **({"bos_token_id": token_id(twin.bos)} if twin.bos else {}),
           **{key: token_id(token) for key, token in twin.config_token_ids.items()}}
    config = sized_config(checkpoint, twin, ids)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=token_id(twin.generation_eos or twin.eos),
                     pad_token_id=ids["pad_token_id"]).save_pretrained(out)
    (out / MARKER).write_text(json.dumps({
        "hub_id": checkpoint.hub_id, "parameters": checkpoint.parameters,
        "parameters_source": checkpoint.parameters_source, "config_source": checkpoint.config_source,
        "weights": "random (seeded), written on first load"}, indent=2))


def ensure_sized(alias: str, checkpoint: PublishedCheckpoint, twin: TinyTwin, cache_dir: Path | None = None) -> Path:
    """Build a sized twin's folder once per alias (config and processor: seconds) and return it."""
    root = (cache_dir or cache_root()) / "sized"
    target = root / f"{alias}-v{SIZED_VERSION}"
    if (target / MARKER).is_file():
        return target
    build_into(target, lambda folder: build_sized(checkpoint, twin, folder))
    return target


def is_sized_folder(source: str | Path) -> bool:
    return (Path(source) / MARKER).is_file()


def _fill(name: str, shape: torch.Size, std: float, generator: torch.Generator, device: str) -> torch.Tensor:
    """A parameter's random value: normal(0, std) for matrices, ones for norm scales, zeros for biases."""
    if len(shape) == 1 or name.endswith(".bias"):
        value = 0.0 if name.endswith(".bias") else 1.0
        return torch.full(shape, value, dtype=torch.bfloat16, device=device)
    return torch.empty(shape, dtype=torch.bfloat16, device=device).normal_(0.0, std, generator=generator)


def ensure_weights(folder: Path, seed: int = 0) -> None:
    """Write seeded random weights for a sized twin's folder, once, shard by shard (one shard in memory at a
    time; bfloat16 on disk, as the real checkpoints ship). The index is written last, so an interrupted run
    leaves no folder that looks complete."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder = Path(folder)
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        return
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(seed)
    params = list(model.named_parameters())  # tied weights appear once, as in a saved checkpoint
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, param in params:
        nbytes = param.numel() * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, param.shape))
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(shards, 1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _fill(name, shape, std, generator, device).cpu() for name, shape in shard}
        total += sum(t.numel() * 2 for t in tensors.values())
        save_file(tensors, str(folder / f".{filename}.partial"), metadata={"format": "pt"})
        (folder / f".{filename}.partial").rename(folder / filename)
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    tmp = folder / ".index.partial"
    tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    tmp.rename(index_file)
