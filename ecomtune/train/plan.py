"""`ecomtune plan RECIPE`: what a stage will cost, before it runs.

Every sample is measured with the real processor (text and image tokens, after the multi-image
strategy); the report gives the length distribution, what does not fit `max_length` (never cut: it
is dropped or fatal, per `on_overlong`), the samples the image cap trims, the padding that batches
of the recipe's size would carry, and an analytic estimate of peak GPU memory (`ecomtune.train.memory`)
against the stage's `gpu_memory_gb`. Weights are never loaded: the model is measured from its config
on the meta device.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import asdict
from statistics import median
from typing import Any

import torch
from torch import nn

from ecomtune.backbones.model_loading import check_available, pick_compute_dtype, role_overrides
from ecomtune.backbones.registry import ResolvedBackbone
from ecomtune.backbones.spec import BackboneSpec, ResolvedRoles, lora_target_regex, resolve_roles
from ecomtune.config.schema import LoraStage, Recipe, StageSettings
from ecomtune.config.stages import stage_settings
from ecomtune.data.batches.packing import packing_stats, plan_packs
from ecomtune.data.prepare.lengths import prepare_store
from ecomtune.train.lora_targets import checked_lora_targets
from ecomtune.train.memory import GIB, ModelShape, TrainShape, advice, estimate, optimizer_kind


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def padding_fraction(lengths: list[int], batch_size: int, seed: int = 0) -> float:
    """The share of padded positions when `lengths` are shuffled (as the trainer's sampler does) and cut
    into batches padded to their longest member."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    padded = useful = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        padded += max(batch) * len(batch)
        useful += sum(batch)
    return 1 - useful / padded if padded else 0.0


def _weightless(backbone: ResolvedBackbone):
    from transformers import AutoConfig

    check_available(backbone)
    config = AutoConfig.from_pretrained(backbone.source, revision=backbone.revision)
    with torch.device("meta"):
        return backbone.spec.model_class().from_config(config), config


def _inside(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def model_shape(model: nn.Module, config, roles: ResolvedRoles) -> ModelShape:
    """Parameter counts per role and the language model's dimensions."""
    counts = {"lm_linear": 0, "lm_rest": 0, "vision": 0, "projector": 0}
    linear_weights = {f"{n}.weight" for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and _inside(n, roles.language_model)}
    for name, param in model.named_parameters():
        role = roles.component_of(name)
        if role == "language_model":
            counts["lm_linear" if name in linear_weights else "lm_rest"] += param.numel()
        elif role in ("vision_tower", "projector"):
            counts["vision" if role == "vision_tower" else "projector"] += param.numel()
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    vision = getattr(config, "vision_config", None)
    vision_hidden = (getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0)) if vision else 0
    merge = getattr(vision, "spatial_merge_size", None) or getattr(config, "spatial_merge_size", None) or \
        getattr(config, "scale_factor", None) or 1
    return ModelShape(**counts, layers=text.num_hidden_layers, hidden=text.hidden_size,
                      kv_width=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                      vocab=text.vocab_size, vision_hidden=int(vision_hidden), merge=int(merge) ** 2)


def lora_parameters(model: nn.Module, pattern: str, rank: int) -> int:
    """r * (in + out) for every Linear layer the LoRA target regex matches."""
    regex = re.compile(pattern)
    return sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and regex.fullmatch(n))


def offline_stand_in(recipe: Recipe) -> tuple[Recipe, str | None]:
    """The recipe a plan measures: the same, except that a hub backbone this machine can neither reach nor find
    in its cache is replaced by its real-size twin (`sized:<alias>`: the checkpoint's published dimensions and
    processor settings) when its dimensions are on record. A plan needs shapes and the processor, not weights."""
    from ecomtune.backbones.model_loading import _in_hub_cache
    from ecomtune.backbones.registry import aliases, resolve_backbone
    from ecomtune.backbones.sized import SIZED_PREFIX, checkpoint_of
    from ecomtune.runtime import hub_reachable

    name = recipe.backbone.name
    if name.startswith(SIZED_PREFIX):
        return recipe, None
    backbone = resolve_backbone(name, recipe.backbone.seed, recipe.backbone.revision)
    if backbone.is_local or checkpoint_of(backbone.source) is None or \
            _in_hub_cache(backbone.source, backbone.revision) or hub_reachable():
        return recipe, None
    alias = next(a for a, (_, hub) in aliases().items() if hub == backbone.source)
    stand_in = recipe.model_copy(update={"backbone": recipe.backbone.model_copy(update={"name": SIZED_PREFIX + alias})})
    return stand_in, (f"{backbone.source} is not on this machine and the hub is not reachable: planned from its "
                      f"published dimensions and processor settings ({SIZED_PREFIX}{alias})")


def plan_stage(recipe: Recipe, stage_name: str = "sft") -> dict[str, Any]:
    """The plan of one stage of a recipe (see the module docstring)."""
    asked = recipe.backbone.name
    recipe, stand_in = offline_stand_in(recipe)
    stage: StageSettings = stage_settings(recipe, stage_name)
    from ecomtune.data.prepare.stage_samples import mixture_table
    from ecomtune.train.preparation import read_stage

    given = read_stage(recipe, stage, stage_name)  # the very path training takes: the same samples, same checks
    backbone, processor = given.backbone, given.processor
    # the text is kept too, so that the training run after this plan finds every sample in the cache
    measured = prepare_store(processor, given.read.samples, backbone.spec.conversation,
                             workers=stage.prepare_workers)
    samples, totals, images = measured.samples, measured.totals, measured.images
    given.read.count_tokens(totals)
    limit = stage.max_length
    kept = [t for t in totals if limit is None or t <= limit]
    seq_len = max(kept) if kept else (limit or max(totals))
    batch = stage.train.batch_size
    image_tokens = batch * max(images)
    packing = None
    if stage.packing:  # rows of up to max_length tokens; a step holds batch_size rows
        fits = [i for i, t in enumerate(totals) if t <= limit]
        packs = plan_packs([totals[i] for i in fits], [samples.image_counts[i] for i in fits], limit,
                           stage.max_images_per_pack)
        packing = packing_stats(packs, [totals[i] for i in fits], limit)
        seq_len = limit
        image_tokens = batch * max((sum(images[fits[i]] for i in pack) for pack in packs), default=0)

    shape, step = _planned_step(recipe, stage, stage_name, backbone, batch, seq_len, image_tokens)
    terms = estimate(shape, step)
    budget = stage.gpu_memory_gb * GIB
    cap = stage.images.max_images
    return {
        "stage": stage_name, "backbone": {"name": asked, "family": backbone.spec.family, "measured_as": stand_in},
        "data": str(stage.data) if not isinstance(stage.data, list) else "mixture",
        "mixture": mixture_table(given.read.sources), "images": stage.images.model_dump(),
        "samples": len(samples),
        "tokens": {"min": min(totals), "median": median(totals), "p95": percentile(totals, 95), "max": max(totals)},
        "image_tokens": {"median": median(images), "max": max(images), "total": sum(images)},
        "max_length": limit, "on_overlong": stage.on_overlong,
        "over_max_length": len(totals) - len(kept),
        "over_image_cap": sum(n > cap for n in given.read.listed_images)
        if stage.images.strategy in ("all", "crops") else 0,
        "image_cap": cap,
        "padding": {"batch_size": batch, "packed": packing is not None,
                    "fraction": 1 - packing["fill"] if packing else padding_fraction(kept or totals, batch,
                                                                                     stage.train.seed)},
        "packing": packing,
        "memory": {"terms_gib": {k: v / GIB for k, v in terms.items()}, "budget_gib": stage.gpu_memory_gb,
                   "fits": terms["total"] <= budget, "advice": [] if terms["total"] <= budget else advice(terms),
                   "model": asdict(shape), "step": asdict(step)},
    }


def _planned_step(recipe: Recipe, stage: StageSettings, stage_name: str, backbone: ResolvedBackbone, batch: int,
                  seq_len: int, image_tokens: int | float) -> tuple[ModelShape, TrainShape]:
    """The backbone's shape (counted on the meta device) and the step the stage's settings make of it. LoRA
    targets are checked as training checks them (`checked_lora_targets`): a misspelt one is refused, not planned."""
    model, config = _weightless(backbone)
    roles = resolve_roles(model, backbone.spec, role_overrides(recipe.backbone))
    shape = model_shape(model, config, roles)
    lora = 0
    projector_trainable = True
    if isinstance(stage, LoraStage):
        targets = checked_lora_targets(model, roles, backbone.spec, stage, stage_name)
        lora = lora_parameters(model, lora_target_regex(roles.language_model, targets.language_model), stage.lora.r)
        if targets.vision_tower is not None:
            lora += lora_parameters(model, lora_target_regex(roles.vision_tower, targets.vision_tower), stage.lora.r)
        projector_trainable = stage.projector == "full"
    step = TrainShape(
        batch_size=batch, seq_len=seq_len, image_tokens=round(image_tokens), lora_params=lora,
        projector_trainable=projector_trainable, load_in_4bit=stage.quant.load_in_4bit,
        double_quant=stage.quant.double_quant, quantize_vision=stage.quant.quantize_vision,
        dtype_bytes=_dtype_bytes(stage.quant.compute_dtype), gradient_checkpointing=stage.train.gradient_checkpointing,
        optimizer=optimizer_kind(stage.train.optimizer), full_logits=stage.train.loss_average == "sample",
        upcast_frozen=isinstance(stage, LoraStage) and stage.quant.load_in_4bit,
        projector_copy=isinstance(stage, LoraStage) and projector_trainable)
    return shape, step


def _dtype_bytes(compute_dtype: str) -> int:
    """Bytes per value of the compute dtype on the planned GPU (auto: bfloat16, what a 24 GB GPU runs)."""
    if compute_dtype == "auto":
        return 2 if not torch.cuda.is_available() else torch.finfo(pick_compute_dtype("auto")).bits // 8
    return torch.finfo(getattr(torch, compute_dtype)).bits // 8


def photo_image_tokens(processor, photo: tuple[int, int], spec: BackboneSpec | None = None,
                       max_pixels: int | None = None) -> int:
    """Image tokens of one photo of `photo` = (width, height) pixels through the real processor, at its settings or,
    given `max_pixels`, at that cap, set through the family's own knob (`apply_resolution`) and then undone."""
    from PIL import Image

    from ecomtune.backbones.model_loading import apply_resolution
    from ecomtune.config.schema import ResolutionSettings
    from ecomtune.data.batches.collator import count_image_tokens

    image = Image.new("RGB", photo, (128, 128, 128))
    if max_pixels is None or spec is None:
        return count_image_tokens(processor, [image])
    image_processor = processor.image_processor
    names = {attribute.partition(".")[0] for attribute in spec.image_knobs.get("max_pixels", ())}
    saved = {name: copy.deepcopy(getattr(image_processor, name, None)) for name in names}
    saved_defaults = copy.deepcopy(getattr(processor, "images_kwargs", None))
    try:
        apply_resolution(processor, spec, ResolutionSettings(max_pixels=max_pixels))
        return count_image_tokens(processor, [image])
    finally:
        for name, value in saved.items():
            setattr(image_processor, name, value)
        if saved_defaults is not None:
            processor.images_kwargs = saved_defaults


def plan_without_data(recipe: Recipe, stage_name: str = "sft", photo: tuple[int, int] = (1200, 1600),
                      images_per_sample: int = 1, text_tokens: int = 256) -> dict[str, Any]:
    """A plan from the recipe alone, for a sample of `text_tokens` text tokens and `images_per_sample` photos of
    `photo` pixels (image tokens from the real processor at the recipe's resolution): the estimate, whether it
    fits, the largest max_length / images per sample / batch that fit, and the knob to turn
    (`ecomtune.train.fit`)."""
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.train.fit import PlannedSample, RecipeKnobs, knobs, largest_settings, step_for, turn_first

    asked = recipe.backbone.name
    recipe, stand_in = offline_stand_in(recipe)
    stage: StageSettings = stage_settings(recipe, stage_name)
    backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.seed, recipe.backbone.revision)
    processor = load_processor(backbone, recipe.backbone)
    per_image = photo_image_tokens(processor, photo) if images_per_sample else 0
    sample = PlannedSample(text_tokens, images_per_sample, per_image)
    batch = stage.train.batch_size
    shape, step = _planned_step(recipe, stage, stage_name, backbone, batch, sample.tokens,
                                batch * images_per_sample * per_image)
    step = step_for(step, sample)
    terms = estimate(shape, step)
    budget = stage.gpu_memory_gb * GIB
    has_pixels = "max_pixels" in backbone.spec.image_knobs
    def image_tokens_at(pixels: int) -> int:
        return photo_image_tokens(processor, photo, backbone.spec, pixels)

    recipe_knobs = RecipeKnobs(
        stage=stage_name, grad_accum=stage.train.grad_accum,
        lora_rank=stage.lora.r if isinstance(stage, LoraStage) else 0, max_length=stage.max_length,
        max_pixels_knob=has_pixels, image_tokens_at=image_tokens_at if has_pixels else None)
    found = knobs(shape, step, sample, budget, recipe_knobs)
    fits = terms["total"] <= budget
    return {
        "stage": stage_name, "backbone": {"name": asked, "family": backbone.spec.family, "measured_as": stand_in},
        "sample": {"photo": list(photo), "images": images_per_sample, "image_tokens_per_image": per_image,
                   "text_tokens": text_tokens, "tokens": sample.tokens},
        "max_length": stage.max_length,
        "over_max_length": stage.max_length is not None and sample.tokens > stage.max_length,
        "memory": {"terms_gib": {k: v / GIB for k, v in terms.items()}, "budget_gib": stage.gpu_memory_gb,
                   "fits": fits, "advice": [] if fits else advice(terms), "model": asdict(shape), "step": asdict(step)},
        "largest": largest_settings(shape, step, sample, budget),
        "knobs": [asdict(k) for k in found],
        "turn": [k.setting for k in turn_first(found)] if not fits or sample.tokens > (stage.max_length or
                                                                                        sample.tokens) else [],
    }
