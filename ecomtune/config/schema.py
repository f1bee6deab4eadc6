"""The recipe schema: every knob of the staged recipe, typed, with one description per field.

YAML only fills these models. Unknown keys are errors (`extra="forbid"`); cross-field rules live in
`model_validator`s here, never in the trainer, so `ecomtune validate` catches them before any work.
A validator reports every rule a section breaks at once (`refuse`), each at its own key, so a user
fixes a recipe in one pass.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ecomtune.config.sampling import parse_rule

ComponentMode = Literal["frozen", "full"]
VisionMode = Literal["frozen", "lora"]
ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
QuantStorage = Literal["auto", "uint8", "bfloat16", "float16", "float32"]

# The pydantic error type of `refuse`; `validate_recipe_dict` turns each of its problems into its own Problem.
RULES_BROKEN = "ecomtune_rules"


class RuleProblem(NamedTuple):
    """One broken rule: the key it is reported at (dotted, relative to the section; "" = the field itself),
    what is wrong, and the fix."""

    key: str
    what: str
    fix: str = ""


def refuse(problems: list[RuleProblem]) -> None:
    """Raise every broken rule of one section as one pydantic error, so none hides behind the first.

    pydantic keeps one error per validator call; the problems ride in its context and `validate_recipe_dict`
    reports each at its own dotted key and line, with its fix. The message joins them for code that builds
    a section directly and reads `str(error)`.
    """
    if problems:
        summary = "; ".join(f"{p.key + ' ' if p.key else ''}{p.what}" + (f" ({p.fix})" if p.fix else "")
                            for p in problems)
        raise PydanticCustomError(RULES_BROKEN, "{summary}", {"summary": summary, "problems": tuple(problems)})


def optimizer_names_in_source() -> tuple[str, ...]:
    """`transformers.training_args.OptimizerNames`' string values, read from its source without running it;
    () when the source no longer holds the class there (then `optimizer_names` imports it)."""
    spec = importlib.util.find_spec("transformers")  # a top-level spec does not import the package
    source = Path(spec.origin).parent / "training_args.py" if spec and spec.origin else None
    if source is None or not source.is_file():
        return ()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == "OptimizerNames":
            return tuple(s.value.value for s in node.body if isinstance(s, ast.Assign)
                         and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
    return ()


@lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...]:
    """The optimizer names transformers accepts (`transformers.training_args.OptimizerNames`).

    Importing `transformers.training_args` pulls in torch (~10 s against ~0.4 s for all of `ecomtune validate`),
    so unless it is loaded already the names are read from its source (a test checks both agree).
    """
    if "transformers.training_args" not in sys.modules and (names := optimizer_names_in_source()):
        return names
    from transformers.training_args import OptimizerNames

    return tuple(o.value for o in OptimizerNames)


class StrictModel(BaseModel):
    """Base for every recipe section: unknown keys are errors, assignments are re-validated, and no float may be
    inf or nan (YAML reads `.inf` and `.nan` as floats; no rate, ratio, size or count here means anything at
    either, and `gt=0` alone lets `.inf` through)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ResolutionSettings(StrictModel):
    """Image resolution, one section for every family; each family supports the settings its image processor
    has (`ecomtune backbones` lists them). Unset values keep the processor's own defaults."""

    max_pixels: int | None = Field(
        None, ge=784,
        description="Upper bound on pixels per image (Qwen families). Fewer pixels, fewer image tokens, less memory; "
        "more pixels, finer detail (text on labels).",
    )
    min_pixels: int | None = Field(None, ge=784, description="Lower bound on pixels per image (Qwen families).")
    longest_edge: int | None = Field(
        None, ge=28, description="Resize so the longest side is at most this many pixels (Idefics3, SmolVLM, "
        "Mistral 3 / Pixtral)."
    )
    splitting: bool | None = Field(
        None, description="Split large images into tiles seen one by one (Idefics3 / SmolVLM image splitting, "
        "Gemma 3 pan-and-scan, InternVL crops): finer detail at more image tokens."
    )
    max_tiles: int | None = Field(
        None, ge=1, description="At most this many tiles per image (Llama 3.2 Vision, InternVL, Gemma 3 pan-and-scan)."
    )

    @model_validator(mode="after")
    def _pixels_ordered(self) -> ResolutionSettings:
        """Reported at min_pixels, through `refuse` like every cross-field rule, so it names its key and line."""
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            refuse([RuleProblem("min_pixels", f"{self.min_pixels} is larger than max_pixels ({self.max_pixels})",
                                "lower min_pixels or raise max_pixels")])
        return self

    def chosen(self) -> dict[str, int | bool]:
        """The settings the recipe gives (the rest stay at the processor's defaults)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class BackboneSettings(StrictModel):
    name: str = Field(
        "tiny-qwen2-vl",
        description="Registry alias (see `ecomtune backbones`), Hugging Face hub id, or a local model folder.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    seed: int = Field(0, description="Seed for building `tiny-` backbones (same seed, same weights).")
    resolution: ResolutionSettings = Field(default_factory=ResolutionSettings,
                                           description="Image resolution settings given to the processor.")
    chat_template: Path | None = Field(
        None, description="A Jinja chat template file, for models whose processor ships none or a wrong one."
    )
    vision_tower: str | None = Field(
        None, description="Module path of the vision tower, for models whose layout ecomtune cannot find itself "
        "(`ecomtune backbones --inspect MODEL` shows what it finds)."
    )
    projector: str | list[str] | None = Field(
        None, description="Module path(s) of the projector between vision tower and language model."
    )
    language_model: str | None = Field(None, description="Module path of the language model.")


class QuantSettings(StrictModel):
    load_in_4bit: bool = Field(
        True, description="Load the language model in bitsandbytes 4-bit (QLoRA). ~4x less weight memory."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; nf4 is the QLoRA default.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (~0.4 bit/param saved).")
    compute_dtype: ComputeDtype = Field(
        "auto", description="Dtype of 4-bit matmuls; auto = bfloat16 on GPUs that support it, else float16 / float32."
    )
    quantize_vision: bool = Field(
        False, description="Also quantize the vision tower. Saves memory on large ViTs; costs some image fidelity."
    )
    quant_storage: QuantStorage = Field(
        "auto", description="Dtype the packed 4-bit weights are stored in. auto: uint8 on one process or DDP; the "
        "compute dtype under FSDP or DeepSpeed ZeRO-3, which shard only floating tensors of one dtype (the load "
        "dtype). An explicit value that differs from the compute dtype is refused there.",
    )


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, description="LoRA rank: capacity of the adapter. Higher = more params and memory.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator; effective scale is alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] | None = Field(
        None,
        description="Linear layer names in the language model to adapt. None = the backbone's defaults "
        "(all attention and MLP projections).",
    )
    vision_targets: list[str] | None = Field(
        None, description="Linear layer names in the vision tower to adapt when `vision: lora`. None = the "
        "backbone's defaults (`ecomtune backbones`)."
    )


class TrainSettings(StrictModel):
    max_steps: int = Field(
        -1, description="Stop after this many optimizer steps (1 or more); -1 = train by `epochs` instead. 0 and "
        "other negatives are refused.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the data when max_steps is -1.")
    batch_size: int = Field(1, ge=1, description="Samples per device per forward pass.")
    grad_accum: int = Field(8, ge=1, description="Forward passes per optimizer step (effective batch multiplier).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward: ~30% slower, far less activation memory."
    )
    optimizer: str = Field(
        "adamw_torch", description="transformers optimizer name (its `OptimizerNames`); paged_adamw_8bit saves "
        "memory on GPU.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    save_steps: int = Field(200, ge=1, description="Write a resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    loss_average: Literal["token", "sample"] = Field(
        "token",
        description="token: mean over all answer tokens of a batch (TRL's default; long answers weigh more). "
        "sample: mean within each sample, then over samples (every instruction counts once; keeps one-word "
        "VQA answers from being drowned by long JSON answers; materialises the full logits).",
    )
    seed: int = Field(42, description="Seed for data order and adapter initialisation.")
    dataloader_workers: int = Field(0, ge=0, description="Worker processes that load and process images.")
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers that get the loss, learning rate, eval loss and "
        "probe scores, with the recipe as the run's config. tensorboard writes to <output>/tensorboard offline; "
        "each tracker's package must be installed.",
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Held-out loss every N steps (default: save_steps), when the stage has "
        "eval_fraction or eval_data.",
    )

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        """-1 is the one way to say "train by epochs": transformers trains 0 steps on a 0, and quietly reads any
        other negative as -1, where -5 is more likely a typo than a wish for epochs."""
        if value == 0 or value < -1:
            refuse([RuleProblem("", f"{value} is neither a step count nor -1",
                                "set max_steps to 1 or more optimizer steps, or to -1 to train by `epochs`")])
        return value

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        """Checked against transformers' own list now, not when TrainingArguments is built after the model
        has loaded."""
        names = optimizer_names()
        if value not in names:
            # a name that starts a valid one (adamw -> adamw_torch) beats difflib, which prefers grokadamw
            wanted = value.strip().lower()
            close = [n for n in names if n.startswith(wanted)] or difflib.get_close_matches(wanted, names, n=1,
                                                                                            cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            refuse([RuleProblem("", f"'{value}' is not a transformers optimizer",
                                f"{hint}valid names: {', '.join(names)}")])
        return value


class ImageSettings(StrictModel):
    """How a sample's images reach the model (training, bench and predict alike)."""

    strategy: Literal["all", "primary", "grid", "crops"] = Field(
        "all",
        description="all: every image, interleaved in listing order, capped at max_images. primary: the first image "
        "only. grid: all images stitched into one canvas (for single-image backbones). crops: the primary image "
        "plus one square crop around the boxed text of each image that has boxes, de-duplicated by pHash.",
    )
    max_images: int = Field(10, ge=1, description="Cap on images per sample for all and crops (the paper saw "
                            "memory and speed suffer above ~10).")
    keep: Literal["first", "spread"] = Field(
        "first",
        description="Which images `all` keeps over the cap. first: the first max_images in listing order (sellers "
        "put the primary and their best views first). spread: the primary plus views evenly spaced over the rest "
        "of the listing (keeps late label close-ups).",
    )
    grid_columns: int | None = Field(None, ge=1, description="Columns of the grid; None = ceil(sqrt(images)).")
    grid_size: int = Field(896, ge=56, description="Longest side of the grid canvas in pixels; each image is "
                           "fitted, aspect kept, into an equal square cell.")
    crop_margin: float = Field(0.1, ge=0.0, le=2.0, description="Grow each box by this fraction of its size "
                               "before merging and squaring (crops).")
    dedupe_threshold: int = Field(6, ge=0, le=64, description="pHash bits under which two images count as "
                                  "duplicates (crops).")


# `auto` and the data formats' names (`ecomtune.data.sources.formats.format_names()`, which config, below data,
# cannot import; tests/test_format_unit.py keeps the two equal).
DataFormat = Literal["auto", "canonical", "llava", "sharegpt", "alpaca", "hf"]


class DataSource(StrictModel):
    """One dataset of a stage's mixture, and how much of it the stage takes."""

    path: str = Field(description="A data file (.jsonl / .json), a folder (Hugging Face `save_to_disk`, parquet or "
                      "arrow files), or a Hugging Face hub dataset id (owner/name).")
    format: DataFormat = Field(
        "auto", description="canonical (ecomtune JSONL), llava (LLaVA JSON: image + conversations from/value), "
        "sharegpt (messages / conversations with role/content or from/value), alpaca (instruction / input / output, "
        "LLaMA-Factory), hf (a Hugging Face dataset with an Image column). auto: detected from the path and the "
        "first record.")
    sampling: str = Field(
        "all", description="Rows taken: all, first:N, end:N or random:N; N is a count or a percentage (first:10%). "
        "A percentage above 100% repeats the source. random is seeded by the stage's train.seed.")
    image_root: Path | None = Field(
        None, description="Folder that relative image paths start from (LLaVA data keeps one image folder for "
        "all its files). Default: the data file's folder.")
    split: str = Field("train", description="Split of a Hugging Face dataset (hub id, folder or `save_to_disk` "
                       "dict).")
    config: str | None = Field(None, description="Config (subset) of a Hugging Face dataset that holds several: "
                               "`datasets.load_dataset(id, config)` for a hub id; for a downloaded folder, a config "
                               "its README.md lists, or its subfolder when the README is missing.")
    columns: dict[str, str] | None = Field(
        None, description="Which of the data's columns hold what ecomtune reads, as {ecomtune name: column}: "
        "conversations, messages, prompt, completion, images, system, instruction, input, output, history "
        "(e.g. {messages: dialog, images: pictures}).")
    dataset: str | None = Field(None, description="With a LLaMA-Factory dataset_info.json as path: the dataset "
                                "name(s) it maps to a file, formatting and columns (several, comma-separated, make "
                                "one source each).")
    tags: dict[str, str] | None = Field(None, description="ShareGPT turns written with other keys or role names, "
                                        "as LLaMA-Factory's tags: role_tag, content_tag, user_tag, assistant_tag, "
                                        "system_tag, observation_tag, function_tag.")

    @field_validator("sampling")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        parse_rule(value)  # raises ValueError naming the rules there are
        return value


def end_checkpoint_note(train: TrainSettings) -> str | None:
    """What happens when `save_steps` exceeds `max_steps` (a smoke run that lowered only max_steps): transformers
    saves at the last step whatever save_steps says, so the run has one checkpoint, at its end."""
    if train.max_steps > 0 and train.save_steps > train.max_steps:
        return (f"train.save_steps ({train.save_steps}) exceeds train.max_steps ({train.max_steps}): the one "
                f"checkpoint is written at the end of training (step {train.max_steps}), as transformers does")
    return None


def _data_kind(value: object) -> str:
    return "sources" if isinstance(value, list) else "path"


class ProbeSettings(StrictModel):
    """Benchmark tasks run on a few items while the stage trains, and the guard on general skill."""

    data: Path = Field(..., description="Folder with <task>.jsonl benchmark files, as `ecomtune bench --data`.")
    tasks: list[str] = Field(default_factory=lambda: ["general"], min_length=1,
                             description="ecomtune bench tasks to probe (`general` is the retention check).")
    items: int = Field(16, ge=1, description="Items per task (the first ones of each file).")
    every: int = Field(50, ge=1, description="Probe every N optimizer steps (and at step 0).")
    batch_size: int = Field(8, ge=1, description="Prompts per generation batch.")
    general_drop_limit: float | None = Field(
        None, gt=0, le=1, description="Largest allowed fall of the general score below the guard's baseline "
        "(accuracy points, e.g. 0.05; see `baseline`). None = no guard.",
    )
    on_general_drop: Literal["warn", "stop"] = Field(
        "warn", description="Past the limit: warn, or stop and keep the weights of the last probe within it.")
    baseline: Literal["chain", "stage"] = Field(
        "chain", description="Where the guard measures the fall from. chain: the general score the --init-from "
        "run's guard measured from, when it probed the same items (so align -> mid -> sft together lose at most the "
        "limit), else this stage's step 0. stage: this stage's own step-0 value.")

    @model_validator(mode="after")
    def _guard_needs_general(self) -> ProbeSettings:
        problems = []
        if self.general_drop_limit is not None and "general" not in self.tasks:
            problems.append(RuleProblem("general_drop_limit", "set, but `general` is not among the probe's tasks",
                                        "add general to tasks, or remove general_drop_limit"))
        if "on_general_drop" in self.model_fields_set and self.general_drop_limit is None:
            problems.append(RuleProblem("on_general_drop", f"'{self.on_general_drop}', but general_drop_limit is not "
                                        "set, so there is no guard to act", "set general_drop_limit (e.g. 0.05), or "
                                        "remove on_general_drop"))
        refuse(problems)
        return self


# One path, or a list of sources: tagged so that a broken list reports only its own problems.
StageData = Annotated[Annotated[Path, Tag("path")] | Annotated[list[DataSource], Tag("sources")],
                      Discriminator(_data_kind)]


class StageSettings(StrictModel):
    data: StageData | None = Field(
        None, description="The stage's data: one source (a path: data file, folder, hub dataset id, or a "
        "LLaVA-OneVision mixture YAML with `datasets:`), or a list of sources, each with its own sampling rule.")
    images: ImageSettings = Field(default_factory=ImageSettings, description="Multi-image strategy and caps.")
    max_length: int | None = Field(
        2048,
        ge=16,
        description="Longest sample in tokens (text + image tokens). Samples are never cut: longer ones are "
        "reported, then dropped or fatal per `on_overlong`. None = no limit.",
    )
    on_overlong: Literal["error", "drop"] = Field(
        "error", description="What to do with samples longer than max_length: stop with a report, or drop them."
    )
    packing: bool = Field(
        False,
        description="Pack several samples, with all their images, into rows of up to max_length tokens: no padding, "
        "each sample attends only to itself, the loss is averaged as without packing. train.batch_size then counts "
        "packed rows. Families that cannot be packed safely are refused with the reason (`ecomtune backbones`).",
    )
    prepare_workers: int | None = Field(
        None, ge=1, description="Processes that check the images and measure the samples before training (and in "
        "`ecomtune plan`); None = every core. Results are cached between runs (in ECOMTUNE_CACHE; "
        "ECOMTUNE_PREPARE_CACHE=off disables).")
    max_images_per_pack: int = Field(16, ge=1, description="Cap on images in one packed row: bounds the vision "
                                     "tower's work and memory per row.")
    quant: QuantSettings = Field(default_factory=QuantSettings, description="Base-model quantization.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimizer and loop settings.")
    gpu_memory_gb: float = Field(24.0, gt=0, description="GPU memory one process may use; `ecomtune plan` "
                                 "compares its estimate with it and says what to lower.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=0.5, description="Hold out this share of the stage's samples "
                                 "(seeded by train.seed) for an eval loss every train.eval_steps.")
    eval_data: StageData | None = Field(None, description="Held-out data for the eval loss instead (same forms "
                                        "as data).")
    probe: ProbeSettings | None = Field(None, description="Benchmark tasks on a few items during training, and the "
                                        "general-skill guard.")

    @model_validator(mode="after")
    def _stage_consistent(self) -> StageSettings:
        """Every broken rule of the stage at once, each at the key to change."""
        problems = []
        if self.packing and self.max_length is None:
            problems.append(RuleProblem("packing", "true, but max_length is None: packed rows need a length to fill",
                                        "set max_length (e.g. 2048) or disable packing"))
        if self.eval_fraction > 0 and self.eval_data is not None:
            problems.append(RuleProblem("eval_fraction", f"{self.eval_fraction}, and eval_data is set too",
                                        "hold out a share of the data or give eval_data, not both"))
        if self.quant.quantize_vision and not self.quant.load_in_4bit:
            problems.append(RuleProblem(
                "quant.quantize_vision", "true, but quant.load_in_4bit is false: there is no 4-bit base to put "
                "the vision tower in", "enable load_in_4bit or disable quantize_vision"))
        refuse(problems)
        return self


class AlignStage(StageSettings):
    """Stage 1, vision-language alignment: only the projector learns, on caption data."""

    quant: QuantSettings = Field(
        default_factory=lambda: QuantSettings(load_in_4bit=False),
        description="Base precision; align defaults to a non-quantized base (LLaVA-style).",
    )
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(learning_rate=1e-3, grad_accum=4),
        description="Optimizer and loop settings; projector-only training takes a high learning rate.",
    )


class LoraStage(StageSettings):
    """A stage that trains a LoRA adapter on a (4-bit) base: the projector full or frozen, the vision tower frozen
    or adapted too."""

    projector: ComponentMode = Field(
        "full", description="Train the projector fully (full) or keep it as align left it (frozen)."
    )
    vision: VisionMode = Field("frozen", description="Keep the vision tower frozen, or adapt it with LoRA.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The LoRA adapter on the language model.")


class MidStage(LoraStage):
    """Stage 1.5, mid-stage training: re-captioned and OCR-style data, at more capacity than align (LoRA on the
    language model, projector full) on the same 4-bit base as sft."""


class SftStage(LoraStage):
    """Stage 3, visual instruction tuning: QLoRA on the language model, projector full or frozen."""


class Recipe(StrictModel):
    """A whole recipe: the backbone and the settings of each stage."""

    backbone: BackboneSettings = Field(default_factory=BackboneSettings, description="The model to adapt.")
    align: AlignStage = Field(default_factory=AlignStage, description="Stage 1: projector alignment.")
    mid: MidStage = Field(default_factory=MidStage, description="Stage 1.5: mid-stage training on re-captions and "
                          "OCR-style data (QLoRA).")
    sft: SftStage = Field(default_factory=SftStage, description="Stage 3: visual instruction tuning (QLoRA).")
