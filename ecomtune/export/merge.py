"""Folding a finished run into standard model folders.

A run is a base plus what it trained: an aligned projector file (align), or a PEFT adapter whose
`modules_to_save` carries the projector (mid, sft). Serving stacks want neither: they load one model folder
(transformers, lmms-eval), or a base plus a language-model-only LoRA (vLLM refuses `modules_to_save`).

Which base weights the LoRA is folded into (`merge_base`):
- `dequantized` (default): the 4-bit weights the adapter was trained against, dequantized. The merged model
  computes what the run computed, up to rounding to the export dtype; it carries the 4-bit rounding of the base.
- `pristine`: the base's original full-precision weights. No 4-bit rounding in the base, but the adapter was
  trained to correct a slightly different (quantized) base, so outputs drift from the run by the quantization
  error. Verification then compares against the run's adapter on the full-precision base.
A run that trained without 4-bit has one base, and both choices give the same folder.

Merging is done in the export dtype, never into 4-bit weights (which would round the LoRA delta away).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ecomtune.errors import ConfigError, Problem
from ecomtune.infer.load import load_aligned_projector, quant_as_trained, reapply_resolution, run_roles
from ecomtune.runs.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from ecomtune.runs.manifest import FinishedRun

MergeBase = Literal["dequantized", "pristine"]
ExportDtype = Literal["bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class ExportSource:
    """A finished run and how to rebuild its model for export."""

    run: FinishedRun
    backbone: Any  # ResolvedBackbone
    merge_base: MergeBase
    dtype: ExportDtype

    @property
    def base_in_4bit(self) -> bool:
        """Whether the merge starts from the 4-bit base the run trained on (dequantized)."""
        return self.merge_base == "dequantized" and quant_as_trained(self.run).load_in_4bit


def export_source(run: FinishedRun, merge_base: MergeBase, dtype: ExportDtype) -> ExportSource:
    from ecomtune.backbones.registry import resolve_backbone

    return ExportSource(run, resolve_backbone(run.base), merge_base, dtype)


def full_precision_base(source: ExportSource):
    """The run's base with every weight in the export dtype, the trained projector of an align run in place."""
    from ecomtune.backbones.model_loading import load_model
    from ecomtune.config.schema import QuantSettings

    run = source.run
    roles, overrides = run_roles(run)
    trained = quant_as_trained(run)
    if source.base_in_4bit:
        model = load_model(source.backbone, trained, overrides)
        model = model.dequantize(dtype=getattr(torch, source.dtype))  # also drops quantization_config
    else:
        model = load_model(source.backbone, QuantSettings(load_in_4bit=False, compute_dtype=source.dtype), overrides)
    model = model.to(getattr(torch, source.dtype))
    if run.projector:
        load_aligned_projector(model, roles, run, source.backbone)
    return model


def with_adapter(model, run: FinishedRun):
    """`model` with the run's adapter on top (unmerged), or `model` itself for a projector-only run."""
    if not run.adapter:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(run.folder))


def merged_model(source: ExportSource):
    """One model: base, LoRA folded in, trained projector in place (the adapter's `modules_to_save` copy)."""
    model = with_adapter(full_precision_base(source), source.run)
    if source.run.adapter:
        model = model.merge_and_unload()
    return model.eval()


def _under(module_name: str, prefix: str) -> bool:
    return module_name == prefix or module_name.startswith(prefix + ".")


def split_for_vllm(source: ExportSource):
    """(base, adapter weights, adapter config) for serving with vLLM: the base holds the trained projector and any
    vision-tower LoRA folded in; the adapter keeps only the language model's LoRA, with no `modules_to_save`.
    The adapter is None for a run without language-model LoRA (align)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    run = source.run
    model = with_adapter(full_precision_base(source), run)
    if not run.adapter:
        return model.eval(), None, None
    roles, _ = run_roles(run)
    language_model = roles.language_model
    lm_layers: list[str] = []
    for name, module in model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if _under(name, language_model):
            lm_layers.append(name)
        else:
            module.merge()  # vision-tower LoRA: folded into the base, which `unload` then keeps
    state = get_peft_model_state_dict(model)
    prefix = "base_model.model."
    weights = {key: value.detach().to("cpu").contiguous() for key, value in state.items()
               if ".lora_" in key and any(_under(key.removeprefix(prefix), layer) for layer in lm_layers)}
    if not weights:
        raise ConfigError(f"{run.folder}: the adapter has no LoRA weights on the language model "
                          f"({language_model})", [Problem(f"{ADAPTER_CONFIG} target_modules", str(run.folder))],
                          fix="export the merged model instead (without --format vllm)")
    config = model.peft_config["default"]
    config.modules_to_save = None
    config.target_modules = sorted(lm_layers)  # exact module paths: cannot match a vision block by its name
    config.inference_mode = True
    base = model.unload()  # LoRA layers removed; the projector becomes the trained copy
    return base.eval(), weights, config


def save_processor(run: FinishedRun, backbone, folder: Path) -> None:
    """The run's processor (tokenizer, chat template, image settings) written beside the model."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(run.folder))
    reapply_resolution(processor, backbone, run)
    processor.save_pretrained(str(folder))


def save_model(model, folder: Path, dtype: ExportDtype) -> None:
    """safetensors only; the config says the dtype and holds no quantization settings."""
    model.config.dtype = getattr(torch, dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(str(folder), safe_serialization=True)


def save_adapter(weights: dict[str, torch.Tensor], config, folder: Path, base_folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config.base_model_name_or_path = str(base_folder)
    config.save_pretrained(str(folder))
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def folder_problems(folder: Path) -> list[str]:
    """What a served model folder lacks (the traps of merged folders): weights in safetensors only, a config
    without quantization settings, the processor, tokenizer and chat template files."""
    import json

    problems = []
    names = {p.name for p in folder.iterdir()}
    if not any(n.endswith(".safetensors") for n in names):
        problems.append("no *.safetensors weights")
    if any(n.endswith((".bin", ".pt", ".pth")) for n in names):
        problems.append("pickle weight files beside the safetensors")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if "config.json" in names else None
    if config is None:
        problems.append("no config.json")
    elif "quantization_config" in config:
        problems.append("config.json keeps quantization_config")
    if not names & {"preprocessor_config.json", "processor_config.json"}:
        problems.append("no image processor settings (preprocessor_config.json / processor_config.json)")
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json"}:
        problems.append("no tokenizer files")
    if "chat_template.jinja" not in names and "chat_template.json" not in names and not _template_inside(folder):
        problems.append("no chat template")
    return problems


def _template_inside(folder: Path) -> bool:
    import json

    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("chat_template"):
            return True
    return False
