"""Tiny twins of real families: random weights from a real config class, a tokenizer trained on the spot.

They are what runs offline on a CPU (demo, tests). Everything else is the real thing: the family's
config and model classes, its processor class with its image processor, and its chat template
(the one TRL ships for the family, or ecomtune's rendering of the family's format in `templates/`).
The same seed always gives the same weights and tokenizer.

A family's twin is data (`TinyTwin`): class names, small sizes, the tokens its processor looks
for. One builder (`build_tiny`) turns any of them into a folder that `from_pretrained` loads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ecomtune.runtime import cache_root

QWEN_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_VOCAB = 1024
# 2-layer LM with hidden 64: the smallest width whose Linear layers bitsandbytes' CPU 4-bit kernels take
# (input features >= the 64-element quantization block).
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096)
# The frozen random lm_head must be able to make one token clearly likelier than the rest. With RMSNorm
# bounding hidden states near sqrt(64) = 8, the widest logit gap is about 8 * std * 8: 1.3 at the usual
# std 0.02 (the softmax stays near uniform and nothing is learnt confidently), 6.4 at 0.1. Only the head is
# widened: wider text embeddings would drown the projector's small image features.
TINY_HEAD_STD = 0.1
# Width of the frozen random ViT: each 14x14x2x3 = 1176-value patch keeps this many random features. 32 keeps
# colour but loses texture (stripes vs dots vs checks); 96 keeps enough for a toy to learn patterns.
TINY_VISION_WIDTH = 96
# Part of the cache key: bump it whenever a builder changes, so stale twins are rebuilt.
TINY_VERSION = 4
TINY_MROPE = {"type": "mrope", "mrope_section": [2, 3, 3]}  # sums to head_dim / 2 = 8
# Images are resized to between 56x56 and 112x112 pixels: 4 to 16 image tokens after the 2x2 merge.
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 56 * 56, 112 * 112


@dataclass(frozen=True)
class TinyTwin:
    """How to build a tiny member of a family with its real classes.

    Token fields name token *strings*; the builder turns them into ids once the tokenizer exists.
    """

    config_class: str
    processor_class: str
    image_processor: tuple[str, dict[str, Any]]
    vision: dict[str, Any] = field(compare=False)
    special_tokens: tuple[str, ...]
    eos: str
    pad: str
    chat_template: str  # "trl:<file>" (TRL's copy of the family template) or "ecomtune:<file>" (templates/)
    bos: str | None = None
    adds_bos: bool = False  # the real tokenizer prepends bos when asked for special tokens (Llama, Gemma, Mistral)
    named_tokens: dict[str, str] = field(default_factory=dict, compare=False)  # tokenizer.image_token, ...
    text: dict[str, Any] = field(default_factory=dict, compare=False)  # text_config beyond TINY_TEXT
    text_token_ids: bool = True  # bos/eos/pad ids go into text_config (else only the top-level config)
    config_token_ids: dict[str, str] = field(default_factory=dict, compare=False)  # config key -> token
    config_extra: dict[str, Any] = field(default_factory=dict, compare=False)
    video_processor: tuple[str, dict[str, Any]] | None = None
    processor_extra: dict[str, Any] = field(default_factory=dict, compare=False)
    generation_eos: str | None = None  # end-of-turn token generation stops at (default: eos)
    # Parameters (by name suffix) set to a constant after random init, where a fresh model differs from every
    # trained one in a way that matters (Mllama's cross-attention gates start at 0 and shut the image out).
    fill: dict[str, float] = field(default_factory=dict, compare=False)


def default_cache_dir() -> Path:
    """Where built tiny twins live: `tiny/` in ecomtune's cache folder (`ECOMTUNE_CACHE` overrides it)."""
    return cache_root() / "tiny"


def train_tokenizer(special_tokens: tuple[str, ...] = QWEN_TOKENS, eos: str = "<|im_end|>",
                    pad: str = "<|endoftext|>", bos: str | None = None, adds_bos: bool = False,
                    named_tokens: dict[str, str] | None = None):
    """A byte-level BPE tokenizer trained with `tokenizers` on the text ecomtune ships (BPE training is
    deterministic: the same corpus always gives the same vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (files("ecomtune.backbones") / "tiny_corpus.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in corpus if line.strip()], trainer)
    if adds_bos and bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, bos_id)])
    kwargs: dict[str, Any] = {"extra_special_tokens": dict(named_tokens)} if named_tokens else {}
    if bos is not None:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=None, **kwargs)


def chat_template_text(name: str) -> str:
    """A chat template by reference: `trl:<file>` from TRL's shipped copies, `ecomtune:<file>` from ours."""
    source, _, filename = name.partition(":")
    package = {"trl": "trl", "ecomtune": "ecomtune.backbones"}[source]
    folder = files(package) / ("chat_templates" if source == "trl" else "templates")
    return (folder / filename).read_text(encoding="utf-8")


def _transformers_class(name: str):
    import transformers

    if hasattr(transformers, name):
        return getattr(transformers, name)
    # video processors are not all exported at the top level
    from importlib import import_module

    for module in ("transformers.models.qwen2_vl.video_processing_qwen2_vl",
                   "transformers.models.qwen3_vl.video_processing_qwen3_vl",
                   "transformers.models.llava_onevision.video_processing_llava_onevision",
                   "transformers.models.smolvlm.video_processing_smolvlm",
                   "transformers.models.internvl.video_processing_internvl"):
        found = getattr(import_module(module), name, None)
        if found is not None:
            return found
    raise AttributeError(f"transformers has no class {name}")


def build_tiny(twin: TinyTwin, out: Path, seed: int) -> None:
    """Build one tiny twin into `out`: tokenizer -> processor (which may add tokens of its own, as PaliGemma's
    and Idefics3's do) -> config sized to the final vocabulary -> random weights (seeded) -> save."""
    from transformers import AutoModelForImageTextToText

    tokenizer = train_tokenizer(twin.special_tokens, twin.eos, twin.pad, twin.bos, twin.adds_bos, twin.named_tokens)
    image_class, image_kwargs = twin.image_processor
    parts: dict[str, Any] = {"image_processor": _transformers_class(image_class)(**image_kwargs),
                             "tokenizer": tokenizer}
    if twin.video_processor is not None:
        video_class, video_kwargs = twin.video_processor
        parts["video_processor"] = _transformers_class(video_class)(**video_kwargs)
    processor = _transformers_class(twin.processor_class)(
        **parts, chat_template=chat_template_text(twin.chat_template), **twin.processor_extra)
    tokenizer = processor.tokenizer

    def token_id(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    ids = {"eos_token_id": token_id(twin.eos), "pad_token_id": token_id(twin.pad),
           "bos_token_id": token_id(twin.bos) if twin.bos else None}
    text = {**TINY_TEXT, "vocab_size": len(tokenizer), **twin.text, **(ids if twin.text_token_ids else {})}
    config = _transformers_class(twin.config_class)(
        text_config=text, vision_config=dict(twin.vision),
        **{key: token_id(token) for key, token in twin.config_token_ids.items()},
        **({} if twin.text_token_ids else ids), **twin.config_extra)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    _widen_head(model, seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = next((v for suffix, v in twin.fill.items() if name.endswith(suffix)), None)
            if value is not None:
                param.fill_(value)
    model.generation_config.eos_token_id = token_id(twin.generation_eos or twin.eos)
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _widen_head(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, TINY_HEAD_STD, generator=generator)


def ensure_tiny(alias: str, twin: TinyTwin, seed: int, cache_dir: Path | None = None) -> Path:
    """Build a tiny twin once per (alias, seed) and return its folder. Built in a temporary folder and
    renamed into place, so an interrupted build never leaves a folder that looks complete."""
    root = cache_dir or default_cache_dir()
    target = root / f"{alias}-v{TINY_VERSION}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    build_into(target, lambda folder: build_tiny(twin, folder, seed))
    return target


def build_into(target: Path, build: Callable[[Path], object], replace_unfinished: bool = False) -> None:
    """Run `build(folder)` in a temporary folder beside `target`, then rename it into place, so an interrupted
    build never leaves a folder that looks complete. When another process renamed its own build first, this one's
    is dropped. `replace_unfinished`: a folder already at `target` is known to be incomplete (its caller checks a
    completion marker under a lock) and is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if replace_unfinished and target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
