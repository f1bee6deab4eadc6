"""`ecomtune bench`: load a model, generate greedily in batches, score every task, write results JSON.

A model is a backbone alias / hub id / local folder, an `ecomtune align` run (base + aligned
projector) or an `ecomtune sft` run / any PEFT adapter folder (base + adapter, through PEFT).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ecomtune.bench.judges import make_judge
from ecomtune.config.schema import ImageSettings
from ecomtune.data.images.strategies import ref_paths
from ecomtune.data.task_records import check_records_fit, read_task_records
from ecomtune.infer.generate import check_prompts_fit, generate, model_context
from ecomtune.infer.load import (
    load_for_inference,
    model_backbone,
    run_images,
    sha256_files,
)
from ecomtune.runs.manifest import versions, write_json_atomic
from ecomtune.tasks.judging import Judge
from ecomtune.tasks.registry import TASKS, resolve_tasks


def check_records_fit_context(model: str, task_records: dict[str, list[dict[str, Any]]]) -> None:
    """`check_prompts_fit` for bench and predict records before any weights load: the base model's tokenizer
    and config (a run's processor is its base's)."""
    from transformers import AutoConfig, AutoTokenizer

    backbone = model_backbone(model)
    tokenizer = AutoTokenizer.from_pretrained(backbone.source, revision=backbone.revision)
    context = model_context(AutoConfig.from_pretrained(backbone.source, revision=backbone.revision))
    for name, records in task_records.items():
        task = TASKS[name]
        check_prompts_fit(tokenizer, context, [task.prompt(r) for r in records], task.max_new_tokens,
                          [r["_source"] for r in records])


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
    spec = model_backbone(model).spec
    task_records = {t.name: read_task_records(Path(data) / f"{t.name}.jsonl", t, images, spec=spec)[:limit]
                    for t in chosen}
    for records in task_records.values():
        check_records_fit(records, spec)
    check_records_fit_context(model, task_records)
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
                           task.max_new_tokens, batch_size, task.name, [r["_source"] for r in records])
        seconds = time.perf_counter() - started
        scores, details = task.score(records, answers, the_judge)
        examples = [{**d, "prompt": task.prompt(r), "images": len(r["images"]), "prediction": a,
                     "image_paths": [p for ref in r["images"] for p in ref_paths(ref)],
                     "reference": {key: r[key] for key in task.reference_fields if key in r}}
                    for d, r, a in zip(details, records, answers, strict=True)]
        results["tasks"][task.name] = {"scores": scores, "n": len(records), "seconds": round(seconds, 3),
                                       "examples_per_second": round(len(records) / seconds, 3) if seconds else None,
                                       "examples": examples}
    results["data"]["fingerprint"] = sha256_files(data_files)
    if out is not None:
        write_json_atomic(Path(out), results)
    return results
