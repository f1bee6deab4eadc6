"""Tiny twins of real families: random weights from a real config class, a tokenizer trained on the spot.

They are what runs offline on a CPU (demo, tests). Everything else is the real thing: the family's
model class, its processor class with its image processor, and its chat template (the one TRL
ships for the family). The same seed always gives the same weights and tokenizer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

import torch

SPECIAL_TOKENS = (
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


def default_cache_dir() -> Path:
    """Where built tiny twins live; `ECOMTUNE_CACHE` overrides it."""
    root = os.environ.get("ECOMTUNE_CACHE") or Path.home() / ".cache" / "ecomtune"
    return Path(root) / "tiny"


def train_tokenizer():
    """A byte-level BPE tokenizer trained with `tokenizers` on the text ecomtune ships (BPE training is
    deterministic: the same corpus always gives the same vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (files("ecomtune.backbones") / "tiny_corpus.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in corpus if line.strip()], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )


def _family_chat_template(name: str) -> str:
    return (files("trl") / "chat_templates" / name).read_text(encoding="utf-8")


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _widen_head(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, TINY_HEAD_STD, generator=generator)


def _save(model, processor, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _build_qwen_vl(out: Path, seed: int, config_class, model_class, processor_class, vision_config: dict) -> None:
    """A tiny member of the Qwen VL families: the family's config, model and processor classes, Qwen2-VL's
    image processor, and the family's chat template (Qwen2-VL's and Qwen2.5-VL's are byte-identical)."""
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = train_tokenizer()
    ids = _token_ids(tokenizer)
    config = config_class(
        text_config=dict(**TINY_TEXT, vocab_size=len(tokenizer), rope_scaling=TINY_MROPE, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_class(config)
    _widen_head(model, seed)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # required by the class even for image-only use
        chat_template=_family_chat_template("qwen2_5_vl.jinja"),
    )
    _save(model, processor, out)


def build_tiny_qwen2_vl(out: Path, seed: int) -> None:
    """Tiny Qwen2-VL: real Qwen2VLForConditionalGeneration and Qwen2VLProcessor (~560k parameters)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=1, embed_dim=TINY_VISION_WIDTH, hidden_size=TINY_TEXT["hidden_size"], num_heads=2,
                  mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3)
    _build_qwen_vl(out, seed, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision)


def build_tiny_qwen2_5_vl(out: Path, seed: int) -> None:
    """Tiny Qwen2.5-VL: real Qwen2_5_VLForConditionalGeneration (windowed ViT) and Qwen2_5_VLProcessor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = dict(depth=2, hidden_size=TINY_VISION_WIDTH, intermediate_size=2 * TINY_VISION_WIDTH, num_heads=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
                  fullatt_block_indexes=[1], out_hidden_size=TINY_TEXT["hidden_size"])
    _build_qwen_vl(out, seed, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision)


def ensure_tiny(alias: str, builder, seed: int, cache_dir: Path | None = None) -> Path:
    """Build a tiny twin once per (alias, seed) and return its folder. Built in a temporary folder and
    renamed into place, so an interrupted build never leaves a folder that looks complete."""
    root = cache_dir or default_cache_dir()
    target = root / f"{alias}-v{TINY_VERSION}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=root))
    try:
        builder(tmp, seed)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
