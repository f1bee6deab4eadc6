"""A stage's data, everything before its model loads: read and check every source of the mixture, measure every
sample with the real processor (over-long ones are an error or dropped, never cut), keep samples apart for the
eval loss, plan packed rows; then the rows the trainer takes and the manifest's record of the data. Shared by
training, `plan` and `profile`, so they never disagree about the data."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import ResolvedBackbone, resolve_backbone
from ecomtune.config.schema import LoraStage, Recipe, StageSettings
from ecomtune.data.batches.packing import check_packable, packing_stats, plan_packs
from ecomtune.data.prepare.lengths import prepare_store
from ecomtune.data.prepare.sample_store import SampleStore
from ecomtune.data.prepare.stage_samples import StageSamples, load_stage_samples, mixture_table
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.runtime import is_main_process
from ecomtune.train.lora_targets import check_lora_targets_early
from ecomtune.train.packed_attention import language_attention
from ecomtune.train.trl_bridge import training_data


def stage_console():
    """Where a stage's own messages go: stderr, quiet on every process but the main one."""
    from rich.console import Console

    return Console(stderr=True, quiet=not is_main_process())


def _length_report(processor, read: StageSamples, stage: StageSettings,
                   conversation: str = "chat") -> tuple[SampleStore, dict[str, Any], array]:
    """Measure every sample (text + image tokens, exact; `ecomtune.data.prepare.lengths`), and tokenize its text
    once for the training steps (`Sample.text`; `read.samples` becomes the store that holds it); over-long samples
    are an error or dropped, never cut. Returns the samples kept, the stats and the kept samples' lengths."""
    prepared = prepare_store(processor, read.samples, conversation, workers=stage.prepare_workers)
    samples = read.samples = prepared.samples
    lengths = prepared.totals
    limit = stage.max_length
    over = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
    ordered = sorted(lengths)
    stats = {"samples": len(samples), "min": ordered[0], "median": ordered[len(ordered) // 2],
             "max": ordered[-1], "over_max_length": len(over), "max_length": limit}
    del ordered

    def located(indices: list[int]) -> list[Problem]:
        return [Problem(f"{lengths[i]} tokens", where) for i, where in zip(indices, samples.locations(indices),
                                                                           strict=True)]

    if over and stage.on_overlong == "error":
        raise DataError(
            f"{len(over)} sample(s) are longer than max_length={limit} tokens (cutting them could split image "
            "tokens)", located(over[:20]),
            fix="raise max_length, lower backbone.resolution (max_pixels, longest_edge, max_tiles), or set "
            "on_overlong: drop")
    if over and len(over) == len(samples):
        raise DataError(f"every sample ({len(samples)}) is longer than max_length={limit} tokens, so on_overlong: "
                        "drop left nothing to train on", located(over[:5]),
                        fix="raise max_length, or lower backbone.resolution (max_pixels, longest_edge, max_tiles)")
    if over:
        stage_console().print(f"[yellow]dropped {len(over)} sample(s) longer than {limit} tokens[/yellow]")
        dropped = set(over)
        kept = [i for i in range(len(samples)) if i not in dropped]
        samples, lengths = samples.select(kept), array("i", (lengths[i] for i in kept))
    return samples, stats, lengths


@dataclass
class StageInput:
    """A stage's data read and checked, before anything is measured: the backbone, its processor, the samples as
    the strategy presents them, and the realised mixture."""

    backbone: ResolvedBackbone
    processor: Any
    read: StageSamples


def read_stage(recipe: Recipe, stage: StageSettings, stage_name: str) -> StageInput:
    """Resolve the backbone, refuse what cannot run, read and check every source of the stage's mixture. Shared by
    training, `plan` and `profile`, so they never disagree about the data."""
    if stage.data is None:
        raise ConfigError(f"No training data for {stage_name}", fix=f"pass --data FILE or set {stage_name}.data")
    backbone = resolve_backbone(recipe.backbone.name, recipe.backbone.seed, recipe.backbone.revision)
    if stage.packing:
        check_packable(backbone.spec, f"{stage_name}.packing")
    read = load_stage_samples(stage.data, backbone.spec, stage.images, stage.train.seed, f"{stage_name}.data",
                              stage.prepare_workers)
    for note in read.notes:
        stage_console().print(f"[yellow]{stage_name}.data: {note}[/yellow]")
    if isinstance(stage, LoraStage):  # after the data check (which never contacts the hub), before measuring
        check_lora_targets_early(recipe, stage, stage_name, backbone)
    return StageInput(backbone, load_processor(backbone, recipe.backbone), read)


@dataclass
class HeldOut:
    """Samples kept apart for the eval loss (measured like the training samples; packed when the stage packs)."""

    samples: SampleStore
    lengths: Sequence[int]
    packs: list[list[int]] | None
    source: str  # "eval_fraction" or the eval_data it was read from


@dataclass
class PreparedData:
    """A stage's data, checked and measured: the samples kept, their stats and token lengths, the packed rows
    (sample indices per row) when the stage packs, the realised mixture, and the held-out samples if any."""

    backbone: ResolvedBackbone
    processor: Any
    samples: SampleStore
    stats: dict[str, Any]
    lengths: Sequence[int]
    packs: list[list[int]] | None
    read: StageSamples
    held_out: HeldOut | None = None


def prepare_stage(recipe: Recipe, stage: StageSettings, stage_name: str) -> PreparedData:
    """Everything before the model loads: `read_stage`, then measure every sample (over-long ones are an error or
    dropped, per on_overlong) and plan packed rows."""
    given = read_stage(recipe, stage, stage_name)
    conversation = given.backbone.spec.conversation
    samples, stats, lengths = _length_report(given.processor, given.read, stage, conversation)
    given.read.count_tokens(lengths, samples.origins)
    held_out = None
    if stage.eval_fraction > 0:
        samples, lengths, held_samples, held_lengths = split_held_out(samples, lengths, stage.eval_fraction,
                                                                      stage.train.seed, f"{stage_name}.eval_fraction")
        held_out = HeldOut(held_samples, held_lengths, None, "eval_fraction")
    elif stage.eval_data is not None:
        read = load_stage_samples(stage.eval_data, given.backbone.spec, stage.images, stage.train.seed,
                                  f"{stage_name}.eval_data", stage.prepare_workers)
        held_samples, _, held_lengths = _length_report(given.processor, read, stage, conversation)
        held_out = HeldOut(held_samples, held_lengths, None, str(stage.eval_data))
    packs = None
    if stage.packing:
        packs = _packs(samples, lengths, stage)
        stats["packing"] = packing_stats(packs, lengths, stage.max_length)
        if held_out is not None:
            held_out.packs = _packs(held_out.samples, held_out.lengths, stage)
    return PreparedData(given.backbone, given.processor, samples, stats, lengths, packs, given.read, held_out)


def _packs(samples: SampleStore, lengths: Sequence[int], stage: StageSettings) -> list[list[int]]:
    """The packed rows (sample indices per row) of measured samples, within the stage's length and image caps."""
    return plan_packs(lengths, samples.image_counts, stage.max_length, stage.max_images_per_pack)


def split_held_out(samples: SampleStore, lengths: Sequence[int], fraction: float, seed: int,
                   key: str) -> tuple[SampleStore, array, SampleStore, array]:
    """(train samples, their lengths, held-out samples, their lengths): a seeded share kept apart, at least one,
    never all."""
    import random

    count = max(1, round(len(samples) * fraction))
    if count >= len(samples):
        raise ConfigError(f"{key} = {fraction} of {len(samples)} samples leaves none to train on",
                          fix=f"lower {key}, or give more data")
    chosen = set(random.Random(f"held-out:{seed}").sample(range(len(samples)), count))
    train = [i for i in range(len(samples)) if i not in chosen]
    held = sorted(chosen)
    return (samples.select(train), array("i", (lengths[i] for i in train)), samples.select(held),
            array("i", (lengths[i] for i in held)))


def stage_data(prepared: PreparedData, model, stage: StageSettings):
    """The (dataset, collator) a stage trains on, and the held-out dataset (or None) for the same collator. A
    packed run records the attention its rows go through."""
    spec = prepared.backbone.spec
    data = training_data(model, prepared.processor, prepared.samples, stage.train, stage.max_length,
                         spec.conversation, prepared.packs, spec.packing)
    if prepared.packs is not None:
        prepared.stats["packing"]["attention"] = language_attention(model)
    held = prepared.held_out
    held_rows = None if held is None else training_data(
        model, prepared.processor, held.samples, stage.train, stage.max_length, spec.conversation, held.packs,
        spec.packing)[0]
    return data, held_rows


def data_record(stage: StageSettings, prepared: PreparedData) -> dict[str, Any]:
    """The manifest's record of the data: every source (available, rule, taken, tokens, share, sha256), one
    sha256 over all of them and the images used, and the token statistics."""
    path = str(stage.data) if not isinstance(stage.data, list) else None
    record = {"path": path, "sources": mixture_table(prepared.read.sources),
              "sha256": prepared.read.fingerprint(prepared.samples.image_paths()), "tokens": prepared.stats}
    if prepared.held_out is not None:
        record["eval"] = {"source": prepared.held_out.source, "samples": len(prepared.held_out.samples),
                          "train_samples": len(prepared.samples)}
    return record


def tokens_per_step(prepared: PreparedData, stage: StageSettings, processes: int) -> float:
    """Tokens one optimizer step trains on, on average, from the measured lengths (rows when packed)."""
    rows = len(prepared.packs) if prepared.packs is not None else len(prepared.samples)
    per_row = sum(prepared.lengths) / max(rows, 1)
    return per_row * stage.train.batch_size * stage.train.grad_accum * processes
