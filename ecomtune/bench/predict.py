"""`ecomtune predict`: one task's prompt over many items, answers parsed as the benchmark parses them.

Resumable: results are appended batch by batch to `<out>.partial` (flushed and synced), and items
already there (or in a finished `<out>`) are skipped on the next run. Only when every item has an
answer is the file renamed to `<out>`, so a file at `<out>` is always complete. A line torn by a
crash mid-write is dropped and its item predicted again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomtune.bench.records import check_records_fit, read_task_records
from ecomtune.bench.runner import generate_batches, load_for_inference, model_backbone, resolve_tasks, run_images
from ecomtune.config.schema import ImageSettings
from ecomtune.errors import ConfigError


@dataclass(frozen=True)
class PredictSummary:
    out: Path
    total: int
    skipped: int  # already answered by an earlier run
    predicted: int
    parsed: int  # of the predicted, how many parsed (JSON, option or key-value answers)
    seconds: float
    images_per_item: float

    @property
    def items_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _answered(path: Path) -> dict[str, str]:
    """id -> line of every complete line in a predictions file; a torn last line is left out."""
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found[str(json.loads(line)["id"])] = line
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return found


def run_predict(model: str, data: Path, task_name: str, out: Path, images: ImageSettings | None = None,
                batch_size: int = 16, limit: int | None = None, load_in_4bit: bool | None = None,
                on_progress=None, root: Path | None = None) -> PredictSummary:
    """Predict `task_name` for every item of `data` into `out` (see the module docstring). `on_progress(done,
    total)` is called when generation starts and after every batch. `root`: the folder relative image paths
    must stay inside (default: the data file's folder)."""
    tasks = resolve_tasks(task_name)
    if len(tasks) != 1:
        raise ConfigError("predict runs one task at a time", fix="pass --task NAME, e.g. --task item-intelligence")
    task = tasks[0]
    images = images or run_images(model)
    records = read_task_records(Path(data), task, images, root, scored=False, spec=model_backbone(model).spec)[:limit]
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{data}: item id {duplicate!r} appears more than once",
                          fix="give every item a unique id: resuming skips items by id")
    check_records_fit(records, model_backbone(model).spec)

    out, partial = Path(out), partial_path(Path(out))
    done = {**_answered(out), **_answered(partial)}
    todo = [r for r in records if str(r["id"]) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = partial.with_name(partial.name + ".tmp")  # rewritten whole (torn line dropped), then swapped in
    staged.write_text("".join(done[i] + "\n" for i in ids if i in done), encoding="utf-8")
    staged.replace(partial)
    out.unlink(missing_ok=True)  # re-finished below; until then the only file is the partial one

    predicted = parsed = 0
    started = time.perf_counter()
    if todo:
        loaded = load_for_inference(model, load_in_4bit)
        prompts = [task.prompt(r) for r in todo]
        if on_progress is not None:
            on_progress(0, len(todo))
        with partial.open("a", encoding="utf-8") as handle:
            batches = generate_batches(loaded, prompts, [r["images"] for r in todo], task.max_new_tokens, batch_size)
            for batch in batches:
                for record, answer in zip(todo[predicted:predicted + len(batch)], batch, strict=True):
                    value = task.parse(record, answer)
                    parsed += value is not None
                    handle.write(json.dumps(_line(task.name, record, answer, value, images)) + "\n")
                predicted += len(batch)
                handle.flush()
                os.fsync(handle.fileno())
                if on_progress is not None:
                    on_progress(predicted, len(todo))
    seconds = time.perf_counter() - started
    partial.replace(out)
    return PredictSummary(out, len(records), len(records) - len(todo), predicted, parsed, seconds,
                          sum(len(r["images"]) for r in records) / max(len(records), 1))


def _line(task: str, record: dict[str, Any], raw: str, value: Any, images: ImageSettings) -> dict[str, Any]:
    return {"id": record["id"], "task": task, "prediction": value, "parsed": value is not None, "raw": raw,
            "images": len(record["images"]), "strategy": images.strategy}
