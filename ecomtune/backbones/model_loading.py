"""Loading a resolved backbone: processor (resolution, chat template) and model, optionally 4-bit, with offline
failures made clear.

The code path is the same for a tiny twin on disk and a 7B model on the hub. A hub id that cannot be
reached fails at once (no minutes of retries) with one message naming the local alternatives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ecomtune.backbones.registry import ResolvedBackbone, tiny_aliases
from ecomtune.backbones.spec import BackboneSpec, RoleOverrides, resolve_roles
from ecomtune.config.schema import BackboneSettings, QuantSettings, ResolutionSettings
from ecomtune.errors import BackboneError, ConfigError, Problem
from ecomtune.runtime import hub_reachable


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


def check_available(backbone: ResolvedBackbone) -> None:
    """Fail fast, before any download starts, when a hub backbone is neither cached nor reachable."""
    if backbone.is_local or _in_hub_cache(backbone.source, backbone.revision) or hub_reachable():
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


def role_overrides(settings: BackboneSettings | None) -> RoleOverrides:
    """The module paths a recipe names explicitly (backbone.vision_tower / projector / language_model)."""
    if settings is None:
        return RoleOverrides()
    projector = settings.projector
    return RoleOverrides(settings.vision_tower, (projector,) if isinstance(projector, str) else
                         (tuple(projector) if projector else None), settings.language_model)


def apply_resolution(processor, spec: BackboneSpec, resolution: ResolutionSettings) -> None:
    """Set the recipe's resolution settings on the family's image processor, through the attributes the spec
    maps them to. A setting the family has no knob for is an error, not silently ignored."""
    chosen = resolution.chosen()
    unsupported = [knob for knob in chosen if knob not in spec.image_knobs]
    if unsupported:
        offered = ", ".join(spec.image_knobs) or "none (a fixed input size)"
        raise ConfigError(
            f"{spec.title} has no {', '.join(unsupported)} setting",
            [Problem(f"{knob} = {chosen[knob]}", f"backbone.resolution.{knob}") for knob in unsupported],
            fix=f"{spec.title} supports: {offered}; remove the others")
    image_processor = processor.image_processor
    for knob, value in chosen.items():
        for attribute in spec.image_knobs[knob]:
            name, _, entry = attribute.partition(".")
            if entry:
                table = dict(getattr(image_processor, name, None) or {})
                table[entry] = value
                value_to_set = table
            else:
                value_to_set = value
            setattr(image_processor, name, value_to_set)
            # A processor's own `images_kwargs` defaults (InternVL's crop_to_patches, Gemma 3's do_pan_and_scan)
            # win over the image processor's attributes at call time, so the setting goes there too.
            defaults = getattr(processor, "images_kwargs", None)
            if isinstance(defaults, dict) and name in defaults:
                processor.images_kwargs = {**defaults, name: value_to_set}


def load_processor(backbone: ResolvedBackbone, settings: BackboneSettings | None = None):
    """The family's real processor, with the recipe's resolution settings and chat template applied."""
    from transformers import AutoProcessor

    from ecomtune.backbones.tiny import chat_template_text

    check_available(backbone)
    try:
        processor = AutoProcessor.from_pretrained(backbone.source, revision=backbone.revision)
    except (OSError, ValueError) as exc:  # no processor files, or a processor class transformers does not know
        raise BackboneError(f"Cannot load the processor of '{backbone.source}': {str(exc).splitlines()[0]}",
                            fix="a vision-language model folder needs its processor files (preprocessor_config.json, "
                            "tokenizer files) beside config.json: save them with processor.save_pretrained") from None
    if settings is not None:
        apply_resolution(processor, backbone.spec, settings.resolution)
    if settings is not None and settings.chat_template is not None:
        path = Path(settings.chat_template)
        if not path.is_file():
            raise ConfigError(f"Chat template file not found: {path}", [Problem(str(path), "backbone.chat_template")])
        processor.chat_template = path.read_text(encoding="utf-8")
    elif not getattr(processor, "chat_template", None) and backbone.spec.chat_template:
        processor.chat_template = chat_template_text(backbone.spec.chat_template)
    if not getattr(processor, "chat_template", None):
        raise BackboneError(f"The processor of '{backbone.source}' has no chat template",
                            fix="give one in the recipe: backbone.chat_template: path/to/template.jinja")
    return processor


def quant_storage_dtype(quant: QuantSettings) -> torch.dtype:
    """The dtype packed 4-bit weights are stored in. `auto` here is uint8, bitsandbytes' own default: a launch that
    shards parameters (FSDP, ZeRO-3) needs the load dtype instead, and the trainer resolves `auto` to it before
    the model loads (`ecomtune.train.distributed`), because this layer does not know how it was launched."""
    return torch.uint8 if quant.quant_storage == "auto" else getattr(torch, quant.quant_storage)


def quantization_config(quant: QuantSettings, skip_modules: list[str]):
    """bitsandbytes 4-bit settings; `skip_modules` stay in full precision (projector, lm_head, and the
    vision tower unless quantize_vision)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=pick_compute_dtype(quant.compute_dtype),
        bnb_4bit_quant_storage=quant_storage_dtype(quant),
        llm_int8_skip_modules=skip_modules,
    )


def _placed_by_the_engine() -> bool:
    """True when FSDP's low-memory loading or DeepSpeed ZeRO-3 decides where weights go (as transformers itself
    sees it): then a `device_map` would put a whole copy on every GPU, and ZeRO-3 refuses one outright."""
    from transformers.distributed.fsdp import is_fsdp_enabled
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_fsdp_enabled() or is_deepspeed_zero3_enabled()


def weightless_skeleton(backbone: ResolvedBackbone):
    """The backbone's module tree on the meta device, built from its config alone: its layout, no weights.

    Under a DeepSpeed ZeRO-3 launch transformers would partition and initialise any model it builds, which a
    meta skeleton cannot take ("Cannot copy out of meta tensor"); `set_zero3_state` tells it that this one is
    not to be partitioned."""
    from transformers import AutoConfig
    from transformers.modeling_utils import set_zero3_state

    config = AutoConfig.from_pretrained(backbone.source, revision=backbone.revision)
    with set_zero3_state(), torch.device("meta"):
        return backbone.spec.model_class().from_config(config)


def load_model(backbone: ResolvedBackbone, quant: QuantSettings, overrides: RoleOverrides | None = None):
    """Load the model for training: 4-bit LM when asked, the rest in the compute dtype. Under torchrun or
    accelerate each process puts its copy on its own GPU."""
    from accelerate import PartialState

    check_available(backbone)
    auto_class = backbone.spec.model_class()
    dtype = pick_compute_dtype(quant.compute_dtype)
    kwargs: dict = {"dtype": dtype, "revision": backbone.revision}
    if torch.cuda.is_available() and not _placed_by_the_engine():
        kwargs["device_map"] = {"": PartialState().local_process_index}
    if quant.load_in_4bit:
        # Role paths are known from the spec before loading; resolve them on a weightless skeleton.
        roles = resolve_roles(weightless_skeleton(backbone), backbone.spec, overrides)
        skip = [*roles.projector, roles.lm_head] + ([] if quant.quantize_vision else [roles.vision_tower])
        kwargs["quantization_config"] = quantization_config(quant, skip)
    if backbone.is_local:
        from ecomtune.backbones.sized import ensure_weights, is_sized_folder

        if is_sized_folder(backbone.source):  # a real-size twin gets its random weights when it must first run
            ensure_weights(Path(backbone.source))
    try:
        model = auto_class.from_pretrained(backbone.source, **kwargs)
    except ValueError as exc:  # a config class the auto class has no model for
        raise BackboneError(f"'{backbone.source}' is not an image-text-to-text model: {str(exc).splitlines()[0]}",
                            fix=f"use a vision-language model that {auto_class.__name__} loads") from None
    except OSError as exc:
        raise BackboneError(f"Could not load model weights from '{backbone.source}': {exc}".splitlines()[0],
                            fix="check the folder has config.json and *.safetensors, or use another backbone") from None
    if quant.load_in_4bit:
        same_4bit_math_on_every_cpu(model)
    return model


def same_4bit_math_on_every_cpu(model) -> None:
    """Make every 4-bit layer of `model` compute on a CPU as it does on a GPU: dequantize, then multiply in the
    compute dtype.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights at its first forward outside training
    and from then on multiplies in bfloat16, whatever the compute dtype. That makes a float32 comparison (export
    verification) differ by bfloat16 rounding on some machines and not others, and a repacked layer no longer
    passes gradients to its input once training resumes (after an eval loss or a bench probe). Its flag is turned
    off per layer; a bitsandbytes without the flag has no such path and is left as it is."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
