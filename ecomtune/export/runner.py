"""`ecomtune export RUN --out DIR`: write, verify, then swap in.

Everything is written into a staging folder beside `--out` and swapped in only after the folder has every file
serving needs and the verification against the run passed: a failed or interrupted export leaves `--out` as it
was, and nothing at `--out` ever looks complete when it is not.

Layouts (`--format`):
- `merged` (default): one model folder (config, safetensors, processor, tokenizer, chat template).
- `vllm`: `base/` (the base with the trained projector, and any vision-tower LoRA, folded in) and `adapter/` (the
  language model's LoRA alone, no `modules_to_save`), which vLLM serves with `--enable-lora`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from ecomtune.errors import ExportError, Problem
from ecomtune.export.merge import (
    ExportDtype,
    ExportSource,
    MergeBase,
    export_source,
    folder_problems,
    merged_model,
    save_adapter,
    save_model,
    save_processor,
    split_for_vllm,
)
from ecomtune.export.verify import Verification, compare, load_exported, reference, verification_samples
from ecomtune.infer.load import load_for_inference
from ecomtune.runs.files import MANIFEST
from ecomtune.runs.manifest import finished_run, versions, write_json_atomic
from ecomtune.runs.outputs import Guarded, check_writable, real_path, replacing_folder

ExportFormat = Literal["merged", "vllm"]


@dataclass(frozen=True)
class ExportResult:
    out: Path
    format: ExportFormat
    model_folder: Path  # the folder transformers / vLLM load
    adapter_folder: Path | None
    verification: Verification
    seconds: float
    manifest: dict[str, Any]


def _release() -> None:
    """Return the memory of models the caller has just dropped (`del`), before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _size(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _write_model(source: ExportSource, fmt: ExportFormat, staging: Path, final: Path) -> tuple[Path, Path | None]:
    """Write the export's weights and processor into `staging`; returns (model folder, adapter folder) there."""
    if fmt == "merged":
        model, weights, config = merged_model(source), None, None
        model_folder = staging
    else:
        model, weights, config = split_for_vllm(source)
        model_folder = staging / "base"
    adapter_bytes = sum(w.numel() * w.element_size() for w in (weights or {}).values())
    check_writable(staging, _size(model) + adapter_bytes + (64 << 20), "--out")
    save_model(model, model_folder, source.dtype)
    del model
    _release()
    save_processor(source.run, source.backbone, model_folder)
    adapter_folder = None
    if weights is not None:
        adapter_folder = staging / "adapter"
        save_adapter(weights, config, adapter_folder, final / "base")
    problems = folder_problems(model_folder)
    if problems:
        raise ExportError(f"The exported folder {model_folder.name} is not complete",
                          [Problem(p, str(model_folder)) for p in problems],
                          fix="this is a bug in ecomtune export; nothing was written to --out")
    return model_folder, adapter_folder


def _verify(source: ExportSource, model_folder: Path, adapter_folder: Path | None, samples) -> Verification:
    """The run against the export, one model in memory at a time, both computing in one dtype: float32 without a
    GPU (the difference is then the merge and the stored weights' rounding alone), the export's dtype on a GPU
    (a float32 copy of a 7B model would not fit beside nothing on a 24 GB card)."""
    compute = source.dtype if torch.cuda.is_available() else "float32"
    run_model = load_for_inference(str(source.run.folder), None if source.base_in_4bit else False, compute)
    expected = reference(run_model.model, run_model.processor, samples)
    del run_model
    _release()
    model, processor = load_exported(model_folder, adapter_folder, compute)
    try:
        return compare(model, processor, samples, expected, source.dtype)
    finally:
        del model
        _release()


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


def vllm_lora_rank(rank: int | None) -> int | None:
    """The smallest rank vLLM accepts for --max-lora-rank that holds an adapter of rank `rank`."""
    if rank is None:
        return None
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), rank)


def serve_notes(fmt: ExportFormat, out: Path, adapter: bool, rank: int | None) -> str:
    """How to load what was written (also the folder's README.md)."""
    if fmt == "merged":
        return (f"# Exported by ecomtune\n\nA merged model folder: load it with "
                f"`AutoModelForImageTextToText.from_pretrained(\"{out}\")` and "
                f"`AutoProcessor.from_pretrained(\"{out}\")`, serve it with `vllm serve {out}`, or evaluate it "
                f"with lmms-eval (`--model_args pretrained={out}`).\n")
    lines = ["# Exported by ecomtune (vLLM layout)\n",
             f"`base/` is the base model with the trained projector folded in (`vllm serve {out}/base`)."]
    if adapter:
        lines.append(f"`adapter/` is the language model's LoRA (no modules_to_save). Serve both with:\n\n"
                     f"    vllm serve {out}/base --enable-lora --lora-modules ecomtune={out}/adapter "
                     f"--max-lora-rank {rank}\n\nand ask for the model `ecomtune`.")
    else:
        lines.append("The run trained no LoRA (an align run): serve `base/` alone.")
    return "\n".join(lines) + "\n"


def run_export(run_folder: Path, out: Path, fmt: ExportFormat = "merged", merge_base: MergeBase = "dequantized",
               dtype: ExportDtype = "bfloat16", samples: int = 4, images: list[Path] | None = None,
               overwrite: bool = False) -> ExportResult:
    """Export the finished run at `run_folder` into `out` (see the module docstring); verified before it is
    swapped in. Raises ExportError when the export does not reproduce the run within rounding."""
    started = time.perf_counter()
    run = finished_run(Path(run_folder), "export")
    source = export_source(run, merge_base, dtype)
    guarded = Guarded(folders=[("run", run.folder)]).add_images(images or [])
    if source.backbone.is_local:
        guarded.folders.append(("base model", Path(source.backbone.source)))
    chosen = verification_samples(samples, images, source.backbone.spec)
    final = real_path(Path(out))
    with replacing_folder(Path(out), overwrite, guarded, "--out") as staging:
        model_folder, adapter_folder = _write_model(source, fmt, staging, final)
        verification = _verify(source, model_folder, adapter_folder, chosen)
        if not verification.ok:
            raise ExportError("The exported model does not reproduce the run; nothing was written to --out",
                              [Problem(problem, str(run.folder)) for problem in verification.problems()],
                              fix=verification.fix())
        rank = vllm_lora_rank(run.stage_settings().get("lora", {}).get("r")) if run.adapter else None
        (staging / "README.md").write_text(serve_notes(fmt, final, adapter_folder is not None, rank),
                                           encoding="utf-8")
        manifest = {"kind": "export", "status": "complete", "format": fmt, "run": str(real_path(run.folder)),
                    "run_stage": run.stage, "base": run.base, "merge_base": merge_base,
                    "base_was_4bit": source.base_in_4bit, "dtype": dtype,
                    "model_folder": str(model_folder.relative_to(staging)) or ".",
                    "adapter_folder": str(adapter_folder.relative_to(staging)) if adapter_folder else None,
                    "verification": verification.as_dict(),
                    "finished_at": datetime.now(timezone.utc).isoformat(), "versions": versions()}
        write_json_atomic(staging / MANIFEST, manifest)
    adapter = final / manifest["adapter_folder"] if adapter_folder else None
    return ExportResult(Path(out), fmt, final / manifest["model_folder"], adapter, verification,
                        time.perf_counter() - started, manifest)
