"""`ecomtune profile`: one recipe trained for N real steps three ways, side by side, in one process.

- `trl`: TRL's own `DataCollatorForVisionLanguageModeling` and plain SFTTrainer (token-mean loss), the outside
  reference: what a user gets from TRL on the same data (it computes the loss on every token, and pads).
- `rows`: ecomtune, one sample per row (assistant-only labels, padding to the longest sample of the batch).
- `packed`: ecomtune with `packing: true` (rows of up to max_length tokens, no padding; over sdpa, attention runs
  per packed sample, see `packed_attention`).

Each run loads a fresh model the way its stage does (4-bit + LoRA for sft). The first optimizer step is a
warm-up and is not timed; the figures cover steps 2..N. Useful tokens are real (non-padding) tokens fed to
the model; padding fraction is padding over all positions. Peak memory is the process's resident set
(reset per run through /proc/self/clear_refs, so it includes the loaded model) and, on a GPU, the peak
allocated by torch.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ecomtune.config.schema import Recipe
from ecomtune.config.stages import stage_settings
from ecomtune.data.batches.packing import plan_packs
from ecomtune.data.images.strategies import open_image
from ecomtune.data.schema import Sample
from ecomtune.errors import ConfigError
from ecomtune.train.packed_attention import language_attention

MODES = ("trl", "rows", "packed")
LABELS = {"trl": "TRL default collator", "rows": "ecomtune, packing off", "packed": "ecomtune, packing on"}


@dataclass
class ProfileRow:
    """What one way of batching achieved over the timed steps."""

    mode: str
    label: str
    steps: int  # timed optimizer steps
    samples: int
    useful_tokens: int
    positions: int  # tokens + padding
    seconds: float
    peak_rss_gib: float
    peak_gpu_gib: float | None = None
    attention: str = ""  # the language model's attention implementation during the run
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.seconds if self.seconds else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def padding(self) -> float:
        return 1 - self.useful_tokens / self.positions if self.positions else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2),
                "samples_per_s": round(self.samples_per_s, 3), "padding_fraction": round(self.padding, 4)}


class BatchCounter:
    """Records (samples, useful tokens, positions) of every batch a trainer trains on, in order. It reads the
    batches in the training loop itself (not in the collator, which may run in dataloader worker processes)."""

    def __init__(self, drop_segments: bool = False) -> None:
        self.drop_segments = drop_segments  # token-mean loss: the segments were only needed for counting
        self.batches: list[tuple[int, int, int]] = []

    def record(self, batch: dict[str, Any]) -> None:
        positions = int(batch["input_ids"].numel())
        if "packed_segments" in batch:
            segments = batch["packed_segments"]
            useful = int((segments >= 0).sum())
            samples = int(sum(len(set(row[row >= 0].tolist())) for row in segments))
            if self.drop_segments:
                batch.pop("packed_segments")
        else:
            useful, samples = int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])
        self.batches.append((samples, useful, positions))

    def attach(self, trainer) -> None:
        """Count every batch `trainer` trains on, just before its training step."""
        step = trainer.training_step

        def counted(model, inputs, *args, **kwargs):
            self.record(inputs)
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counted


class TrlReferenceCollator:
    """ecomtune's sample rows handed to TRL's vision-language collator as TRL expects them (PIL images and
    conversational messages)."""

    def __init__(self, processor) -> None:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        self.inner = DataCollatorForVisionLanguageModeling(processor)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        samples = [Sample.from_row(r) for r in rows]
        return self.inner([{"images": [open_image(ref) for ref in s.images], "messages": s.messages}
                           for s in samples])


class StepClock(TrainerCallback):
    """Records when each optimizer step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def reset_peak_memory() -> None:
    """Start a new peak: Linux's VmHWM restarts when 5 is written to clear_refs; torch's CUDA peak likewise."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then covers the whole process
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[float, float | None]:
    """(peak resident set, peak GPU memory allocated by torch) in GiB since the last reset."""
    rss = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return rss, gpu


def _collator(mode: str, model, prepared, stage) -> tuple[Any, Any]:
    """The dataset rows and collator of one mode (packed rows always carry segments, for counting)."""
    from ecomtune.train.trl_bridge import training_data

    spec, processor = prepared.backbone.spec, prepared.processor
    if mode == "trl":
        return prepared.samples.rows, TrlReferenceCollator(processor)
    packs = None
    if mode == "packed":
        packs = plan_packs(prepared.lengths, prepared.samples.image_counts, stage.max_length,
                           stage.max_images_per_pack)
    return training_data(model, processor, prepared.samples, stage.train, stage.max_length, spec.conversation,
                         packs, spec.packing, segments=True)


def profile_mode(mode: str, recipe: Recipe, stage_name: str, prepared, steps: int) -> ProfileRow:
    """Train `steps` optimizer steps in one mode and measure steps 2..N."""
    from ecomtune.backbones.model_loading import pick_compute_dtype
    from ecomtune.train.stage_units import stage_unit
    from ecomtune.train.trl_bridge import build_trainer

    unit = stage_unit(stage_name)
    stage = unit.settings(recipe)
    model, _, _ = unit.build(recipe, prepared.backbone, None, False)
    train = stage.train.model_copy(update={"max_steps": steps, "save_steps": steps * 1000,
                                           "logging_steps": steps * 1000})
    if mode == "trl":
        train = train.model_copy(update={"loss_average": "token"})  # TRL as it ships
    data = _collator(mode, model, prepared, stage)
    attention = language_attention(model)  # read after the collator: packed training may switch it
    counter = BatchCounter(drop_segments=mode == "packed" and train.loss_average != "sample")
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="ecomtune-profile-") as output:
        trainer = build_trainer(model, prepared.processor, data, train, Path(output),
                                pick_compute_dtype(stage.quant.compute_dtype), [clock])
        counter.attach(trainer)
        reset_peak_memory()
        trainer.train()
    rss, gpu = peak_memory()
    per_step = train.grad_accum
    timed = counter.batches[per_step:steps * per_step]  # the batches of steps 2..N, in the order they were made
    samples, useful, positions = (sum(b[i] for b in timed) for i in range(3))
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ProfileRow(mode, LABELS[mode], steps - 1, samples, useful, positions, clock.ends[-1] - clock.ends[0],
                      round(rss, 3), round(gpu, 3) if gpu is not None else None, attention)


def profile_recipe(recipe: Recipe, stage_name: str = "sft", steps: int = 10,
                   modes: tuple[str, ...] = MODES, progress=None, repeats: int = 1) -> list[ProfileRow]:
    """Every mode in `modes` on the recipe's data; a family that cannot pack gets a `packed` row saying why.

    With `repeats` > 1 the modes run in rounds (trl, rows, packed, trl, ...), so drift in the machine's speed
    hits every mode alike, and each mode reports its median run by useful tokens/s."""
    from ecomtune.train.preparation import prepare_stage

    if steps < 2:
        raise ConfigError(f"--steps {steps}: profiling needs at least 2 steps (the first is an untimed warm-up)",
                          fix="pass --steps 2 or more (10 gives steadier figures)")
    stage = stage_settings(recipe, stage_name)
    if stage.max_length is None:
        raise ConfigError(f"{stage_name}.max_length is None: packed rows need a length to fill",
                          fix=f"set {stage_name}.max_length")
    prepared = prepare_stage(recipe, stage.model_copy(update={"packing": False}), stage_name)
    runs: dict[str, list[ProfileRow]] = {mode: [] for mode in modes}
    for round_index in range(repeats):
        for mode in modes:
            if mode == "packed" and prepared.backbone.spec.packing is None:
                continue
            if progress is not None:
                progress(f"{mode} ({round_index + 1}/{repeats})" if repeats > 1 else mode)
            runs[mode].append(profile_mode(mode, recipe, stage_name, prepared, steps))
    out = []
    for mode in modes:
        if not runs[mode]:
            out.append(ProfileRow(mode, LABELS[mode], 0, 0, 0, 0, 0.0, 0.0,
                                  note=f"refused: {prepared.backbone.spec.packing_refusal}"))
            continue
        ranked = sorted(runs[mode], key=lambda r: r.tokens_per_s)
        median = ranked[len(ranked) // 2]
        median.peak_rss_gib = max(r.peak_rss_gib for r in ranked)  # peaks: the worst run
        if median.peak_gpu_gib is not None:
            median.peak_gpu_gib = max(r.peak_gpu_gib or 0.0 for r in ranked)
        out.append(median)
    return out


def write_profile(rows: list[ProfileRow], path: Path, context: dict[str, Any]) -> None:
    from ecomtune.runs.manifest import write_json_atomic

    write_json_atomic(Path(path), {**context, "rows": [r.as_dict() for r in rows]})
