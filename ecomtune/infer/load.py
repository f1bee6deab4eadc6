"""Loading what a model argument names, for inference or export: a finished run (base + adapter, or base +
aligned projector), a plain PEFT adapter folder, or a backbone (alias, hub id, model folder).

The one place that turns a run folder back into a model, so bench, predict and export load a run exactly the
same way, on the precision it trained on (`quant_as_trained`), never through the trainer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomtune.config.schema import ImageSettings, QuantSettings
from ecomtune.errors import ConfigError, Problem
from ecomtune.runs.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from ecomtune.runs.manifest import FinishedRun, finished_run, is_run_folder, weights_problem

TEXT_LLM = "text-llm"  # the `kind` of a text-only LLM (`load_text_llm`): its processor is its tokenizer


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    info: dict[str, Any]


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _fingerprint_model_folder(folder: Path) -> str:
    """config.json plus the size and first MiB of every weight file: tells apart models that share a config
    (tiny twins of different seeds) without reading gigabytes of weights."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def quant_as_trained(run: FinishedRun | None, load_in_4bit: bool | None = None,
                     compute_dtype: str | None = None) -> QuantSettings:
    """The run's own quantization settings (nf4 or fp4, double quant, compute dtype, vision quantized or not),
    so its adapter meets the base it was trained on; `load_in_4bit` overrides only whether to quantize,
    `compute_dtype` only the dtype it computes in."""
    trained = dict(run.stage_settings().get("quant", {})) if run else {}
    if load_in_4bit is not None:
        trained["load_in_4bit"] = load_in_4bit
    elif not run:
        trained["load_in_4bit"] = False
    if compute_dtype is not None:
        trained["compute_dtype"] = compute_dtype
    return QuantSettings(**trained)


def reapply_resolution(processor, backbone, run: FinishedRun | None) -> None:
    """The run's resolution settings, set again on its saved processor: some live in processor-level defaults
    that `save_pretrained` does not keep (see `apply_resolution`)."""
    from ecomtune.backbones.model_loading import apply_resolution
    from ecomtune.config.schema import ResolutionSettings

    settings = run.manifest.get("recipe", {}).get("backbone", {}).get("resolution") if run else None
    if settings:
        apply_resolution(processor, backbone.spec, ResolutionSettings(**settings))


def run_of(spec: str) -> FinishedRun | None:
    """The finished ecomtune run `spec` names, None when it names no run folder (an alias, hub id, model folder
    or plain PEFT adapter), or a ConfigError when it is a run that is not finished or lacks its outputs."""
    folder = Path(spec)
    return finished_run(folder, "--model") if folder.is_dir() and is_run_folder(folder) else None


def run_images(model: str) -> ImageSettings:
    """The multi-image strategy a run trained with, or the default for anything else."""
    run = run_of(model)
    return ImageSettings(**run.stage_settings().get("images", {})) if run else ImageSettings()


def _adapter_base(folder: Path) -> str:
    try:
        return str(json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / ADAPTER_CONFIG} does not name its base model ({exc})",
                          fix="a PEFT adapter folder needs adapter_config.json with base_model_name_or_path") from None


def model_backbone(spec: str):
    """The backbone a model argument stands on, found without loading weights: a run's base, an adapter's base,
    or the argument itself (alias, hub id, folder)."""
    from ecomtune.backbones.registry import resolve_backbone

    run, folder = run_of(spec), Path(spec)
    if run is not None:
        return resolve_backbone(run.base)
    if folder.is_dir() and (folder / ADAPTER_CONFIG).is_file():
        return resolve_backbone(_adapter_base(folder))
    return resolve_backbone(spec)


def model_fingerprint(spec: str) -> str:
    """What tells this model's weights apart, without loading them: the adapter or aligned projector of a run,
    the config and weight-file heads of a local folder, the id and revision of a hub model."""
    run, folder = run_of(spec), Path(spec)
    if folder.is_dir() and (folder / ADAPTER_CONFIG).is_file():
        return sha256_files([folder / ADAPTER_WEIGHTS])
    if run is not None and run.projector:
        return sha256_files([folder / run.projector])
    backbone = model_backbone(spec)
    if backbone.is_local:
        return _fingerprint_model_folder(Path(backbone.source))
    return f"{backbone.source}@{backbone.revision or 'main'}"


def load_aligned_projector(model, roles, run: FinishedRun, backbone) -> str:
    """Copy the projector a finished run saved (`ecomtune align`) into `model`; checks the run has one, matches the
    backbone, and that its projector file is whole."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    init_from = run.folder
    if not run.projector:
        raise ConfigError(f"--init-from {init_from} is a {run.stage} run, which saved no projector of its own",
                          fix="point it at the --output of a finished `ecomtune align`")
    if run.base != backbone.source:
        raise ConfigError(f"--init-from {init_from} was aligned on {run.base}, not {backbone.source}",
                          fix="use the same --backbone for align and sft")
    path = Path(init_from) / run.projector
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"--init-from {init_from}: {run.projector} cannot be read ({exc})",
                          fix="the file is damaged or truncated; run `ecomtune align` again into a new --output") \
            from None
    stray = [k for k in weights if not any(k.startswith(path + ".") for path in roles.projector)]
    if stray:
        raise ConfigError(f"{path} holds weights outside this model's projector",
                          [Problem(f"{stray[:3]}", "projector modules " + ", ".join(roles.projector))],
                          fix="align and sft must use the same backbone and the same backbone.projector")
    for module_path in roles.projector:
        module = model.get_submodule(module_path)
        ref = next(module.parameters())
        part = {k.removeprefix(module_path + "."): v.to(ref.device, ref.dtype) for k, v in weights.items()
                if k.startswith(module_path + ".")}
        try:
            module.load_state_dict(part, strict=True)  # a missing key is an error, never ignored
        except RuntimeError as exc:
            raise ConfigError(f"{path} does not fit this model's projector {module_path}",
                              [Problem(str(exc).splitlines()[0], str(path))],
                              fix="align and sft must use the same backbone") from None
    return str(init_from)


def run_roles(run: FinishedRun):
    """The module roles as found when the run trained (recipe overrides included), and the overrides that find
    them again on a freshly loaded base."""
    from ecomtune.backbones.spec import ResolvedRoles, RoleOverrides

    roles = ResolvedRoles(**run.manifest["roles"])
    return roles, RoleOverrides(roles.vision_tower, roles.projector, roles.language_model)


def check_adapter_file(folder: Path) -> None:
    adapter = folder / ADAPTER_WEIGHTS
    problem = weights_problem(adapter) if adapter.is_file() else "it is missing"
    if problem:
        raise ConfigError(f"--model {folder}: the adapter {adapter.name} cannot be used ({problem})",
                          fix="copy the adapter folder again, or train it again")


def load_for_inference(spec: str, load_in_4bit: bool | None = None, compute_dtype: str | None = None) -> LoadedModel:
    """Resolve `spec` to a model ready for generation (eval mode), its processor and a description.
    `load_in_4bit=None` follows the run: a QLoRA adapter is evaluated on the 4-bit base it was trained on, with
    the run's own quantization settings. `compute_dtype` (e.g. "float32") overrides the dtype it computes in."""
    from transformers import AutoProcessor

    from ecomtune.backbones.model_loading import load_model, load_processor

    folder, run = Path(spec), run_of(spec)
    quant = quant_as_trained(run, load_in_4bit, compute_dtype)
    backbone = model_backbone(spec)
    if folder.is_dir() and (folder / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        check_adapter_file(folder)
        overrides = run_roles(run)[1] if run is not None else None
        model = PeftModel.from_pretrained(load_model(backbone, quant, overrides), str(folder))
        processor = AutoProcessor.from_pretrained(folder)  # saved beside the adapter by `ecomtune sft`
        reapply_resolution(processor, backbone, run)
        kind = "adapter"
    elif run is not None and run.projector:
        roles, overrides = run_roles(run)
        model = load_model(backbone, quant, overrides)
        load_aligned_projector(model, roles, run, backbone)
        processor = AutoProcessor.from_pretrained(folder)  # saved by `ecomtune align`
        reapply_resolution(processor, backbone, run)
        kind = "aligned"
    else:
        processor = load_processor(backbone)
        model = load_model(backbone, quant)
        kind = "base"
    model.eval()
    return LoadedModel(model, processor, {"spec": spec, "kind": kind, "base": backbone.source,
                                          "family": backbone.spec.family, "fingerprint": model_fingerprint(spec),
                                          "load_in_4bit": quant.load_in_4bit})


def load_text_llm(spec: str) -> LoadedModel:
    """A text-only LLM (a folder or hub id of `AutoModelForCausalLM`, e.g. curation's caption verifier), in eval
    mode, with its tokenizer as the processor (padding with its eos token when it names no pad token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ecomtune.backbones.model_loading import pick_compute_dtype

    tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": pick_compute_dtype("auto")}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    return LoadedModel(AutoModelForCausalLM.from_pretrained(spec, **kwargs).eval(), tokenizer,
                       {"spec": spec, "kind": TEXT_LLM})
