"""An analytic estimate of peak GPU memory for one training step (pure functions of sizes and settings).

Terms, in bytes (d = bytes per value of the compute dtype: 2 for bfloat16/float16, 4 for float32):

    weights      = P_lin * w4 + (P_lm_rest + P_vision) * f + P_proj * (f + t) + P_lora * 4
                   w4 = 0.5 + c (4-bit, c = quantization constants: 0.0159 with double quantization,
                   0.0625 without) or d (no quantization); with quantize_vision the vision tower counts
                   at w4 too. f = bytes of a frozen weight: d, but 4 in a LoRA stage on a 4-bit base,
                   where PEFT's prepare_model_for_kbit_training upcasts every weight that is not 4-bit
                   (embeddings, norms, the vision tower, lm_head) to float32. t = 4 when the projector
                   is trained: PEFT's modules_to_save trains a float32 copy beside the frozen original
                   (0 when frozen; an align stage trains the projector itself: f = 4, t = 0).
    gradients    = P_train * 4
    optimizer    = P_train * o            o = 8 (AdamW: two float32 moments), 2.03 (8-bit AdamW: two uint8
                                          moments and a float32 scale per block of 256), 4 (SGD
                                          with momentum), 0 (plain SGD)
    activations  = T * L * 2H * d + T * a          with gradient checkpointing (layer inputs kept,
                   T * L * a                       one layer recomputed), or without it
                   a = (6H + 2H_kv + 5I) * d: what one decoder layer saves per token for backward
                   (norm outputs, q/k/v, attention output, residuals, gate/up/act/product/down inputs);
                   attention is sdpa / flash, so no seq^2 score matrix is kept
    logits       = T * V * (d + 8)         loss_average: sample (ecomtune's loss over the full logits): logits
                                          in d, the float32 copy the loss makes, and its float32 gradient
                   min(T, 4096) * V * 4    loss_average: token (TRL's fused LM head projects only answer
                                          positions, in tiles of 4096 tokens; bounded by one float32 tile)
    vision       = N_img * H_v * d * 8     a frozen tower's transient forward (no graph is kept)
    overhead     = 0.8 GiB + 8% of the rest   CUDA context, kernels, allocator fragmentation

T = batch_size * seq_len tokens per step (seq_len: the longest sample, at most max_length), L, H,
H_kv (= key/value heads * head dim), I, V: the language model's layers, hidden size, key/value width,
MLP width and vocabulary; N_img: image tokens per step times the tower's merge factor; H_v: the vision
tower's width. P_lin: parameters of the language model's Linear layers; P_train = P_lora + trainable
projector parameters.

It is a planning figure, not a measurement: real peaks depend on kernels, the allocator and
sequence-length variation. It exists to say *which* setting to lower when a plan does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# bitsandbytes' 8-bit optimizers quantize each moment blockwise: one uint8 per value, one float32 scale per 256
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256, "sgd_momentum": 4.0, "sgd": 0.0}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a backbone (counted on a weightless copy)."""

    lm_linear: int  # parameters in the language model's Linear layers (what 4-bit quantizes)
    lm_rest: int  # embeddings, norms, lm_head
    vision: int
    projector: int
    layers: int
    hidden: int
    kv_width: int  # key/value heads * head dim
    intermediate: int
    vocab: int
    vision_hidden: int
    merge: int = 1  # vision patches per image token (4 for a 2x2 merge)


@dataclass(frozen=True)
class TrainShape:
    """The step being planned."""

    batch_size: int
    seq_len: int
    image_tokens: int  # per step (all samples of the batch)
    lora_params: int
    projector_trainable: bool
    load_in_4bit: bool
    double_quant: bool
    quantize_vision: bool
    dtype_bytes: int
    gradient_checkpointing: bool
    optimizer: str  # a key of OPTIMIZER_BYTES
    full_logits: bool = True  # loss_average: sample builds them; token goes through TRL's fused, tiled LM head
    upcast_frozen: bool = False  # a LoRA stage on a 4-bit base: PEFT keeps every non-4-bit weight in float32
    projector_copy: bool = False  # the projector trained through PEFT's modules_to_save (a copy beside the original)


def optimizer_kind(name: str) -> str:
    """transformers' optimizer names folded into the classes the estimate distinguishes."""
    lowered = name.lower()
    if "8bit" in lowered:
        return "adamw8bit"
    if "sgd" in lowered:
        return "sgd"
    return "adamw"


def weight_parts(model: ModelShape, step: TrainShape) -> dict[str, float]:
    """The `weights` term by part (see the module docstring): what `benchmarks/planner_check.py` compares with
    the bytes of a loaded model's tensors."""
    d = step.dtype_bytes
    w4 = (0.5 + (0.0159 if step.double_quant else 0.0625)) if step.load_in_4bit else d
    frozen = 4 if step.upcast_frozen else d
    vision_bytes = w4 if (step.load_in_4bit and step.quantize_vision) else frozen
    if step.projector_trainable:
        projector_bytes = frozen + 4 if step.projector_copy else 4
    else:
        projector_bytes = frozen
    return {"lm_linear": model.lm_linear * w4, "lm_rest": model.lm_rest * frozen, "vision": model.vision * vision_bytes,
            "projector": model.projector * projector_bytes, "lora": step.lora_params * 4.0}


def estimate(model: ModelShape, step: TrainShape) -> dict[str, float]:
    """Bytes per term (see the module docstring) plus `total`."""
    d = step.dtype_bytes
    trainable = step.lora_params + (model.projector if step.projector_trainable else 0)
    tokens = step.batch_size * step.seq_len
    per_layer = (6 * model.hidden + 2 * model.kv_width + 5 * model.intermediate) * d
    if step.gradient_checkpointing:
        activations = tokens * model.layers * 2 * model.hidden * d + tokens * per_layer
    else:
        activations = tokens * model.layers * per_layer
    terms = {
        "weights": sum(weight_parts(model, step).values()),
        "gradients": trainable * 4.0,
        "optimizer": trainable * OPTIMIZER_BYTES[step.optimizer],
        "activations": float(activations),
        "logits": tokens * model.vocab * (d + 8.0) if step.full_logits else min(tokens, 4096) * model.vocab * 4.0,
        "vision": step.image_tokens * model.merge * model.vision_hidden * d * 8.0,
    }
    subtotal = sum(terms.values())
    terms["overhead"] = 0.8 * GIB + 0.08 * subtotal
    terms["total"] = subtotal + terms["overhead"]
    return terms


ADVICE = {
    "activations": "lower batch_size or max_length, or turn on gradient_checkpointing",
    "logits": "lower batch_size or max_length (the vocabulary is fixed), or loss_average: token (tiled)",
    "weights": "load the base in 4-bit (quant.load_in_4bit, quant.quantize_vision) or pick a smaller backbone",
    "optimizer": "use optimizer: paged_adamw_8bit, or a lower LoRA rank",
    "gradients": "a lower LoRA rank, or projector: frozen",
    "vision": "lower backbone.resolution (max_pixels / longest_edge / max_tiles) or images per sample",
}


def advice(terms: dict[str, float]) -> list[str]:
    """What to lower, largest term first."""
    ranked = sorted((k for k in ADVICE if terms.get(k, 0) > 0), key=lambda k: -terms[k])
    return [f"{k} ({terms[k] / GIB:.1f} GiB): {ADVICE[k]}" for k in ranked[:3]]
