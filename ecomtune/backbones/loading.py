"""Loading a resolved backbone: processor and model, optionally 4-bit, with offline failures made clear.

The code path is the same for a tiny twin on disk and a 7B model on the hub. A hub id that cannot be
reached fails at once (no minutes of retries) with one message naming the local alternatives.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import torch

from ecomtune.backbones.registry import ResolvedBackbone, tiny_aliases
from ecomtune.backbones.spec import resolve_roles
from ecomtune.config.schema import BackboneSettings, QuantSettings
from ecomtune.errors import BackboneError


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def check_available(backbone: ResolvedBackbone) -> None:
    """Fail fast, before any download starts, when a hub backbone is neither cached nor reachable."""
    if backbone.is_local or _in_hub_cache(backbone.source, backbone.revision) or _hub_reachable():
        return
    raise BackboneError(
        f"Cannot load '{backbone.source}': the Hugging Face hub is not reachable from this machine and the model "
        "is not in the local cache",
        fix=f"run offline with a local model folder (--backbone /path/to/model saved by save_pretrained), or a "
        f"tiny twin built on the spot ({', '.join(tiny_aliases())}); or download it where there is network "
        "(huggingface-cli download ...) and copy the folder here",
    )


def pick_compute_dtype(requested: str = "auto") -> torch.dtype:
    """bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    if requested != "auto":
        return getattr(torch, requested)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_processor(backbone: ResolvedBackbone, settings: BackboneSettings | None = None):
    """The family's real processor, with the recipe's resolution bounds applied."""
    from transformers import AutoProcessor

    check_available(backbone)
    processor = AutoProcessor.from_pretrained(backbone.source, revision=backbone.revision)
    if settings is not None and (settings.max_pixels or settings.min_pixels):
        image_processor = processor.image_processor
        size = dict(getattr(image_processor, "size", None) or {})
        if settings.min_pixels:
            size["shortest_edge"] = image_processor.min_pixels = settings.min_pixels
        if settings.max_pixels:
            size["longest_edge"] = image_processor.max_pixels = settings.max_pixels
        image_processor.size = size
    return processor


def quantization_config(quant: QuantSettings, skip_modules: list[str]):
    """bitsandbytes 4-bit settings; `skip_modules` stay in full precision (projector, lm_head, and the
    vision tower unless quantize_vision)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=pick_compute_dtype(quant.compute_dtype),
        bnb_4bit_quant_storage=torch.uint8,
        llm_int8_skip_modules=skip_modules,
    )


def load_model(backbone: ResolvedBackbone, quant: QuantSettings):
    """Load the model for training: 4-bit LM when asked, the rest in the compute dtype. Under torchrun or
    accelerate each process puts its copy on its own GPU."""
    from accelerate import PartialState
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_available(backbone)
    dtype = pick_compute_dtype(quant.compute_dtype)
    kwargs: dict = {"dtype": dtype, "revision": backbone.revision}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": PartialState().local_process_index}
    if quant.load_in_4bit:
        # Role paths are known from the spec before loading; resolve them on a weightless skeleton.
        config = AutoConfig.from_pretrained(backbone.source, revision=backbone.revision)
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(config)
        roles = resolve_roles(skeleton, backbone.spec)
        skip = [roles.projector, roles.lm_head] + ([] if quant.quantize_vision else [roles.vision_tower])
        kwargs["quantization_config"] = quantization_config(quant, skip)
    try:
        return AutoModelForImageTextToText.from_pretrained(backbone.source, **kwargs)
    except OSError as exc:
        raise BackboneError(f"Could not load model weights from '{backbone.source}': {exc}".splitlines()[0],
                            fix="check the folder has config.json and *.safetensors, or use another backbone") from None
