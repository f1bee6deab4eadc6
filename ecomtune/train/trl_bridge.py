"""The one module that talks to TRL. Every TRL/Trainer quirk ecomtune works around lives here.

Quirks handled (TRL 1.16, transformers 5.23):
- SFTTrainer refuses packing and padding-free batching for image datasets and, for them, prepares
  data on the fly with its own collator. ecomtune passes its own collator (assistant-only labels,
  never truncating) and `skip_prepare_dataset`, so TRL never tokenizes or truncates.
- `max_length` is left None in TRL's config: truncation can cut through image tokens; ecomtune
  measures lengths itself before training.
- TRL's config defaults to bf16, which CPUs refuse; precision is chosen from the hardware.
- transformers' Trainer refuses to train a quantized model that has no PEFT adapter. Stage 1 on a
  4-bit base trains only the full-precision projector, which is sound (the 4-bit weights are frozen
  and get no gradient), so that check is relaxed for that case alone (`allow_frozen_quantized_base`).
- SFTTrainer casts every trainable parameter of a quantized model to bfloat16 (QLoRA's advice for
  LoRA weights). That also hits the full-precision projector: on CPU its LayerNorm then fails on
  float32 inputs, on GPU its optimizer updates lose precision, and an aligned projector would be
  rounded on arrival. The original tensors are put back right after construction, so trainable
  weights stay in full precision while mixed precision runs the matmuls in the compute dtype
  (`keep_trainable_dtypes`).
- SFTTrainer's loss is a mean over answer tokens. `loss_average: sample` swaps in a per-sample mean
  (`ecomtune.train.losses`) through a subclass, and tells Trainer the loss is not yet scaled for
  gradient accumulation (`loss_is_scaled_for_ga = False`), so it divides by the accumulation steps.
- SFTTrainer refuses `packing` for image datasets; ecomtune packs rows itself (`ecomtune.data.batches.packing`) and
  hands TRL ready batches without an attention mask, so transformers isolates the samples from the restarting
  position ids. TRL's logged `num_tokens` then reads the width of `position_ids` (its padding-free convention,
  wrong for several rows or 3-D positions); the manifest's `data.tokens.packing` records the packed data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ecomtune.backbones.spec import PackingPositions
from ecomtune.config.schema import TrainSettings
from ecomtune.data.batches.collator import VisionChatCollator
from ecomtune.data.batches.packing import PackedCollator, pack_rows, rope_index_of
from ecomtune.data.prepare.mapped_rows import mapped_dataset
from ecomtune.data.prepare.sample_store import SampleStore
from ecomtune.data.schema import Sample
from ecomtune.runs.files import TRAINER_STATE
from ecomtune.train.checkpoints import SealCheckpoints
from ecomtune.train.packed_attention import use_packed_attention


def mixed_precision(compute_dtype: torch.dtype) -> str:
    """The mixed precision the trainer runs in, as accelerate names it: bf16 or fp16 on a GPU computing in that
    dtype, "no" otherwise (CPUs train in float32). A DeepSpeed launch must say the same (`train.distributed`)."""
    if not torch.cuda.is_available():
        return "no"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype, "no")


def sft_config(train: TrainSettings, output: Path, compute_dtype: torch.dtype, evaluate: bool = False):
    """TRL's SFTConfig from ecomtune's typed settings. `evaluate`: the stage has held-out data, whose loss is
    computed every `eval_steps` (default: `save_steps`)."""
    from trl import SFTConfig

    precision = mixed_precision(compute_dtype)
    on_gpu = torch.cuda.is_available()
    evaluation = {"eval_strategy": "steps", "eval_steps": train.eval_steps or train.save_steps,
                  "per_device_eval_batch_size": train.batch_size, "prediction_loss_only": True} if evaluate else {}
    return SFTConfig(
        **evaluation,
        output_dir=str(output),
        max_steps=train.max_steps,
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optimizer,
        **checkpointing(SFTConfig, train.gradient_checkpointing),
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        seed=train.seed,
        data_seed=train.seed,
        dataloader_num_workers=train.dataloader_workers,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        report_to=list(train.report_to) or "none",
        remove_unused_columns=False,  # the collator needs the raw `images` / `messages` columns
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
    )


def checkpointing(config_class: type, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the name the installed transformers reads: 5.x renamed
    `gradient_checkpointing` to `activation_checkpointing` and warns on every run given the old name."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


@contextlib.contextmanager
def allow_frozen_quantized_base() -> Iterator[None]:
    """Let Trainer accept a 4-bit model with no adapter whose trainable parameters are all full-precision
    (projector-only alignment). Only the "purely quantized" refusal is lifted, and only inside this block."""
    import transformers.trainer as trainer_module

    original = trainer_module.validate_quantization_for_training

    def validate(model):
        trainable = [p for p in model.parameters() if p.requires_grad]
        if trainable and all(p.dtype.is_floating_point for p in trainable):
            return None
        return original(model)

    trainer_module.validate_quantization_for_training = validate
    try:
        yield
    finally:
        trainer_module.validate_quantization_for_training = original


@contextlib.contextmanager
def keep_trainable_dtypes(model) -> Iterator[None]:
    """Undo any dtype change made to trainable parameters inside this block. The original tensors are put
    back as they were: casting back would keep the rounding of the round trip (bf16 keeps 8 mantissa bits)."""
    before = {name: p.data for name, p in model.named_parameters() if p.requires_grad}
    yield
    for name, param in model.named_parameters():
        if name in before and param.dtype != before[name].dtype:
            param.data = before[name]


def sample_averaged_trainer_class():
    """SFTTrainer whose loss is the mean over samples of each sample's mean answer-token loss."""
    from trl import SFTTrainer

    from ecomtune.train.losses import per_sample_mean_loss

    class SampleAveragedSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = False  # Trainer divides by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            segments = inputs.pop("packed_segments", None)  # packed rows: which sample each token belongs to
            outputs = model(**inputs, use_cache=False)
            loss = per_sample_mean_loss(outputs.logits, labels, segments)
            return (loss, outputs) if return_outputs else loss

    return SampleAveragedSFTTrainer


def training_data(model, processor, samples: SampleStore | Sequence[Sample], train: TrainSettings,
                  max_length: int | None, conversation: str = "chat", packs: list[list[int]] | None = None,
                  positions: PackingPositions | None = None, segments: bool | None = None):
    """The dataset and collator a trainer reads (memory-mapped rows; a list of samples is first written to a
    `SampleStore`): one sample per row, or packed rows (`packs`: sample indices per
    row, `positions`: the family's packing positions; `segments`: emit `packed_segments`, by default only where
    the per-sample loss needs them). Packed rows also switch the model's sdpa language model to per-sample
    attention (`packed_attention`)."""
    store = samples if isinstance(samples, SampleStore) else SampleStore.of(samples)
    if packs is None:
        return store.rows, VisionChatCollator(processor, max_length, conversation)
    use_packed_attention(model)
    collator = PackedCollator(processor, positions, rope_index_of(model) if positions == "mrope" else None,
                              conversation, segments=train.loss_average == "sample" if segments is None else segments)
    return mapped_dataset(pack_rows(store, packs)), collator


@contextlib.contextmanager
def tensorboard_dir(folder: Path) -> Iterator[None]:
    """TensorBoard's event files in `folder` (transformers 5 takes the folder from TENSORBOARD_LOGGING_DIR when its
    callback is made, else a dated folder under `runs/`). A folder the user set in the environment wins."""
    import os

    name = "TENSORBOARD_LOGGING_DIR"
    before = os.environ.get(name)
    if before is None:
        os.environ[name] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def build_trainer(model, processor, data, train: TrainSettings, output: Path, compute_dtype: torch.dtype,
                  callbacks: list | None = None, args=None, eval_dataset=None):
    """An SFTTrainer over `data`, a (dataset, collator) pair from `training_data` (or any collator that yields
    model inputs with labels). `args`: the `sft_config` made before the model loaded (DeepSpeed ZeRO-3 needs
    it then), or None to make it here. `eval_dataset`: held-out rows for the same collator."""
    from trl import SFTTrainer

    dataset, collator = data
    quantized_without_adapter = getattr(model, "is_quantized", False) and not hasattr(model, "peft_config")
    guard = allow_frozen_quantized_base() if quantized_without_adapter else contextlib.nullcontext()
    trainer_class = sample_averaged_trainer_class() if train.loss_average == "sample" else SFTTrainer
    with guard, keep_trainable_dtypes(model), tensorboard_dir(Path(output) / "tensorboard"):
        return trainer_class(
            model=model,
            args=args if args is not None else sft_config(train, output, compute_dtype, eval_dataset is not None),
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            data_collator=collator,
            callbacks=[SealCheckpoints(), *(callbacks or [])],
        )


def checkpoint_steps(checkpoint: Path) -> tuple[int, int]:
    """(global_step, max_steps) a checkpoint was saved at, from the Trainer's own state file."""
    import json

    state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    return int(state["global_step"]), int(state["max_steps"])


def restore_finished_checkpoint(trainer, checkpoint: Path, planned_steps: int) -> dict:
    """Take a checkpoint saved at the last planned step as the trained model, without training.

    `Trainer.train(resume_from_checkpoint=...)` from a checkpoint at `max_steps` runs one step more before it
    checks the step count (transformers 5.24), so a run killed during its final save would end one step past
    its plan. Instead the checkpoint's weights and state are loaded as the Trainer would load them, and the
    stage goes straight to its final save. `train_loss` is then the mean of the logged losses. `planned_steps`
    (when positive) is the recipe's max_steps, which the final save is judged by."""
    from transformers.trainer_callback import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    if planned_steps > 0:  # the plan as the recipe has it now (a resume may have lowered it to this step)
        trainer.state.max_steps = planned_steps
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"global_step": trainer.state.global_step, "train_loss": sum(losses) / len(losses) if losses else None,
            "restored_from": str(checkpoint)}
