"""`ecomtune bench`: load a model, generate greedily in batches, score every task, write results JSON.

A model is a backbone alias / hub id / local folder, an `ecomtune align` run (base + aligned
projector) or an `ecomtune sft` run / any PEFT adapter folder (base + adapter, through PEFT).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ecomtune.bench.judges import Judge, make_judge
from ecomtune.bench.records import check_records_fit, read_task_records
from ecomtune.bench.tasks import TASKS, Task
from ecomtune.config.schema import ImageSettings
from ecomtune.data.batches.collator import adds_own_specials, batch_images
from ecomtune.data.images.strategies import open_image, ref_paths
from ecomtune.data.schema import ImageRef
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.runs.loading import (
    LoadedModel,
    load_for_inference,
    model_backbone,
    run_images,
    sha256_files,
)
from ecomtune.runs.manifest import versions, write_json_atomic


def model_context(config) -> int | None:
    """The language model's context (`max_position_embeddings`), None when the config does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def check_prompts_fit(tokenizer, context: int | None, prompts: list[str], max_new_tokens: int,
                      sources: list[str] | None = None) -> None:
    """Every prompt's text tokens plus the answer's `max_new_tokens` must fit the model's `context` (images come
    on top). A prompt past it (a record with a huge title or description) is refused before anything is
    generated, each named by `sources` (the records' file:line), instead of running the machine out of memory
    or past the model's positions."""
    if not context or not prompts:
        return
    counts = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    over = [i for i, count in enumerate(counts) if count + max_new_tokens > context]
    if over:
        where = sources or [f"prompt {i + 1}" for i in range(len(prompts))]
        raise DataError(f"{len(over)} prompt(s) do not fit the model's context of {context} tokens with their "
                        f"{max_new_tokens}-token answer; nothing was generated",
                        [Problem(f"the prompt has {counts[i]:,} text tokens", where[i]) for i in over[:20]],
                        fix="shorten the long fields of those records (a title or description of that size is "
                        "rarely meant), or drop the records")


def generate_batches(loaded: LoadedModel, prompts: list[str], images: list[list[ImageRef]], max_new_tokens: int,
                     batch_size: int, sources: list[str] | None = None) -> Iterator[list[str]]:
    """Greedy, batched, left-padded generation; yields the decoded new text of each batch's prompts, in order.
    Every prompt is first checked to fit the model's context (`check_prompts_fit`; `sources` name them)."""
    check_prompts_fit(loaded.processor.tokenizer, model_context(loaded.model.config), prompts, max_new_tokens,
                      sources)
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
             batch_size: int, description: str, sources: list[str] | None = None) -> list[str]:
    """All answers of `generate_batches`, with a progress bar."""
    from rich.progress import Progress

    answers: list[str] = []
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(prompts))
        for batch in generate_batches(loaded, prompts, images, max_new_tokens, batch_size, sources):
            answers.extend(batch)
            progress.advance(bar, len(batch))
    return answers


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


def resolve_tasks(names: str) -> list[Task]:
    if names.strip() == "all":
        return list(TASKS.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in TASKS]
    if unknown:
        raise ConfigError(f"Unknown task(s): {', '.join(unknown)}", fix=f"choose from all, {', '.join(TASKS)}")
    return [TASKS[n] for n in chosen]


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
