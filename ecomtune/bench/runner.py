"""`ecomtune bench`: load a model, generate greedily in batches, score every task, write results JSON.

A model is a backbone alias / hub id / local folder, an `ecomtune align` run (base + aligned
projector) or an `ecomtune sft` run / any PEFT adapter folder (base + adapter, through PEFT).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ecomtune.bench.judges import Judge, make_judge
from ecomtune.bench.records import check_records_fit, read_task_records
from ecomtune.bench.tasks import TASKS, Task
from ecomtune.config.schema import ImageSettings
from ecomtune.data.collator import adds_own_specials, batch_images
from ecomtune.data.schema import ImageRef
from ecomtune.data.strategies import open_image
from ecomtune.errors import ConfigError
from ecomtune.runs.manifest import (
    FinishedRun,
    finished_run,
    is_run_folder,
    versions,
    weights_problem,
    write_json_atomic,
)


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    info: dict[str, Any]


def _sha256_files(paths: list[Path]) -> str:
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


def trained_in_4bit(run: FinishedRun | None) -> bool:
    """Whether an ecomtune run trained on a 4-bit base (its adapter is then evaluated on one too)."""
    return bool(run and run.stage_settings().get("quant", {}).get("load_in_4bit", False))


def reapply_resolution(processor, backbone, run: FinishedRun | None) -> None:
    """The run's resolution settings, set again on its saved processor: some live in processor-level defaults
    that `save_pretrained` does not keep (see `apply_resolution`)."""
    from ecomtune.backbones.loading import apply_resolution
    from ecomtune.config.schema import ResolutionSettings

    settings = run.manifest.get("recipe", {}).get("backbone", {}).get("resolution") if run else None
    if settings:
        apply_resolution(processor, backbone.spec, ResolutionSettings(**settings))


def run_of(spec: str) -> FinishedRun | None:
    """The finished ecomtune run `spec` names, None when it names no run folder (an alias, hub id, model folder
    or plain PEFT adapter), or a ConfigError when it is a run that is not finished or lacks its outputs."""
    folder = Path(spec)
    return finished_run(folder, "--model") if folder.is_dir() and is_run_folder(folder) else None


def _adapter_base(folder: Path) -> str:
    try:
        return str(json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / 'adapter_config.json'} does not name its base model ({exc})",
                          fix="a PEFT adapter folder needs adapter_config.json with base_model_name_or_path") from None


def model_backbone(spec: str):
    """The backbone a model argument stands on, found without loading weights: a run's base, an adapter's base,
    or the argument itself (alias, hub id, folder)."""
    from ecomtune.backbones.registry import resolve_backbone

    run, folder = run_of(spec), Path(spec)
    if run is not None:
        return resolve_backbone(run.base)
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        return resolve_backbone(_adapter_base(folder))
    return resolve_backbone(spec)


def model_fingerprint(spec: str) -> str:
    """What tells this model's weights apart, without loading them: the adapter or aligned projector of a run,
    the config and weight-file heads of a local folder, the id and revision of a hub model."""
    run, folder = run_of(spec), Path(spec)
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        return _sha256_files([folder / "adapter_model.safetensors"])
    if run is not None and run.projector:
        return _sha256_files([folder / run.projector])
    backbone = model_backbone(spec)
    if backbone.is_local:
        return _fingerprint_model_folder(Path(backbone.source))
    return f"{backbone.source}@{backbone.revision or 'main'}"


def load_for_inference(spec: str, load_in_4bit: bool | None = None) -> LoadedModel:
    """Resolve `spec` to a model ready for generation (eval mode), its processor and a description.
    `load_in_4bit=None` follows the run: a QLoRA adapter is evaluated on the 4-bit base it was trained on."""
    from transformers import AutoProcessor

    from ecomtune.backbones.loading import load_model, load_processor
    from ecomtune.backbones.spec import ResolvedRoles, RoleOverrides
    from ecomtune.config.schema import QuantSettings
    from ecomtune.train.models import load_aligned_projector

    folder, run = Path(spec), run_of(spec)
    quant = QuantSettings(load_in_4bit=trained_in_4bit(run) if load_in_4bit is None else load_in_4bit)
    backbone = model_backbone(spec)
    if folder.is_dir() and (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter = folder / "adapter_model.safetensors"
        problem = weights_problem(adapter) if adapter.is_file() else "it is missing"
        if problem:
            raise ConfigError(f"--model {folder}: the adapter {adapter.name} cannot be used ({problem})",
                              fix="copy the adapter folder again, or train it again")
        model = PeftModel.from_pretrained(load_model(backbone, quant), str(folder))
        processor = AutoProcessor.from_pretrained(folder)  # saved beside the adapter by `ecomtune sft`
        reapply_resolution(processor, backbone, run)
        kind = "adapter"
    elif run is not None and run.projector:
        roles = ResolvedRoles(**run.manifest["roles"])  # as found when the run trained, recipe overrides included
        model = load_model(backbone, quant, RoleOverrides(roles.vision_tower, roles.projector, roles.language_model))
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


def generate_batches(loaded: LoadedModel, prompts: list[str], images: list[list[ImageRef]], max_new_tokens: int,
                     batch_size: int) -> Iterator[list[str]]:
    """Greedy, batched, left-padded generation; yields the decoded new text of each batch's prompts, in order."""
    processor = loaded.processor
    processor.tokenizer.padding_side = "left"
    device = next(loaded.model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        texts, pixels = [], []
        for prompt, refs in zip(prompts[start:start + batch_size], images[start:start + batch_size], strict=True):
            content = [{"type": "image"} for _ in refs] + [{"type": "text", "text": prompt}]
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True))
            pixels.append([open_image(ref) for ref in refs])
        inputs = processor(text=texts, images=batch_images(pixels), padding=True, return_tensors="pt",
                           add_special_tokens=adds_own_specials(processor, texts[0])).to(device)
        with torch.no_grad():
            out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        yield [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                          skip_special_tokens=True)]


def generate(loaded: LoadedModel, prompts: list[str], images: list[list[ImageRef]], max_new_tokens: int,
             batch_size: int, description: str) -> list[str]:
    """All answers of `generate_batches`, with a progress bar."""
    from rich.progress import Progress

    answers: list[str] = []
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(prompts))
        for batch in generate_batches(loaded, prompts, images, max_new_tokens, batch_size):
            answers.extend(batch)
            progress.advance(bar, len(batch))
    return answers


def resolve_tasks(names: str) -> list[Task]:
    if names.strip() == "all":
        return list(TASKS.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in TASKS]
    if unknown:
        raise ConfigError(f"Unknown task(s): {', '.join(unknown)}", fix=f"choose from all, {', '.join(TASKS)}")
    return [TASKS[n] for n in chosen]


def run_images(model: str) -> ImageSettings:
    """The multi-image strategy a run trained with, or the default for anything else."""
    run = run_of(model)
    return ImageSettings(**run.stage_settings().get("images", {})) if run else ImageSettings()


def run_bench(model: str, tasks: str, data: Path, out: Path | None = None, limit: int | None = None,
              batch_size: int = 16, judge: str | None = None, load_in_4bit: bool | None = None,
              images: ImageSettings | None = None, judge_plain_http: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Run the chosen tasks on `model` over `data/<task>.jsonl`; write and return the results. `images`: the
    multi-image strategy (default: the one the run trained with). Relative image paths may reach the data
    folder's parent (a catalog keeps `bench/` beside `images/`) but no further."""
    chosen = resolve_tasks(tasks)
    if out is not None:
        from ecomtune.runs.outputs import Guarded, check_file_output

        inputs = [("model folder", Path(model))] if Path(model).is_dir() else []
        check_file_output(Path(out), overwrite, Guarded(folders=[*inputs, ("benchmark data", Path(data))]))
    images = images or run_images(model)
    root = Path(data).resolve().parent
    spec = model_backbone(model).spec
    task_records = {t.name: read_task_records(Path(data) / f"{t.name}.jsonl", t, images, root, spec=spec)[:limit]
                    for t in chosen}
    for records in task_records.values():
        check_records_fit(records, spec)
    the_judge: Judge = make_judge(judge, judge_plain_http)
    loaded = load_for_inference(model, load_in_4bit)
    results: dict[str, Any] = {"model": loaded.info, "created_at": datetime.now(timezone.utc).isoformat(),
                               "data": {"dir": str(data)}, "images": images.model_dump(), "versions": versions(),
                               "tasks": {}}
    data_files: list[Path] = []
    for task in chosen:
        records = task_records[task.name]
        data_files.append(Path(data) / f"{task.name}.jsonl")
        started = time.perf_counter()
        answers = generate(loaded, [task.prompt(r) for r in records], [r["images"] for r in records],
                           task.max_new_tokens, batch_size, task.name)
        seconds = time.perf_counter() - started
        scores, details = task.score(records, answers, the_judge)
        examples = [{**d, "prompt": task.prompt(r), "images": len(r["images"]), "prediction": a}
                    for d, r, a in zip(details, records, answers, strict=True)]
        results["tasks"][task.name] = {"scores": scores, "n": len(records), "seconds": round(seconds, 3),
                                       "examples_per_second": round(len(records) / seconds, 3) if seconds else None,
                                       "examples": examples}
    results["data"]["fingerprint"] = _sha256_files(data_files)
    if out is not None:
        write_json_atomic(Path(out), results)
    return results
