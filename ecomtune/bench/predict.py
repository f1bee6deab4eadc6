"""`ecomtune predict`: one task's prompt over many items, answers parsed as the benchmark parses them.

Resumable: results are appended batch by batch to `<out>.partial` (flushed and synced), and items
already there (or in a finished `<out>`) are skipped on the next run. Only when every item has an
answer is the file renamed to `<out>`, so a file at `<out>` is always complete. A line torn by a
crash mid-write is dropped and its item predicted again. Answers already written are never dropped:
a smaller `--limit` leaves a finished file as it is.

A run resumes only what the same model, task, data and settings wrote: they are recorded beside each
file (`<out>.settings.json`, `<out>.partial.settings.json`), and anything else is refused with what
differs, unless `--overwrite` (which replaces the old file only once the new one is complete).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomtune.bench.runner import check_records_fit_context
from ecomtune.config.schema import ImageSettings
from ecomtune.data.images.strategies import ref_paths
from ecomtune.data.task_records import check_records_fit, read_task_records
from ecomtune.errors import ConfigError, Problem
from ecomtune.infer.generate import generate_batches
from ecomtune.infer.load import load_for_inference, model_backbone, model_fingerprint, run_images
from ecomtune.runs.appendlog import append_synced, lines_by_key, recorded_settings, rewrite, settings_differences
from ecomtune.runs.manifest import fingerprint_file, write_json_atomic
from ecomtune.runs.outputs import Guarded, check_location, check_writable, locked
from ecomtune.tasks.registry import resolve_tasks


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


def settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".settings.json")


def _earlier_answers(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, str]:
    """The answers earlier runs left that were made exactly this way. Each file has its own record of what made
    it: `<out>.settings.json` for the finished file, `<out>.partial.settings.json` for the one in progress, so an
    interrupted `--overwrite` never passes the old model's answers off as the new one's. Anything else is refused
    unless `overwrite` (which keeps only a partial file of this very run)."""
    answers: dict[str, str] = {}
    files = ((out, settings_path(out)), (partial_path(out), settings_path(partial_path(out))))
    for index, (path, recorded) in enumerate(files):
        if not path.exists() or (overwrite and index == 0):
            continue
        before = recorded_settings(recorded)
        changes = ["(no record of what made it)"] if before is None else settings_differences(before, settings)
        if changes and overwrite:
            continue  # a partial file of another run: it is replaced
        if changes:
            raise ConfigError(f"{path} was made by another model, task, data or settings: it cannot be resumed",
                              [Problem(change, str(recorded)) for change in changes],
                              fix="pass the same options as before to resume, --overwrite to replace it, or a new "
                              "--out")
        answers.update(lines_by_key(path))
    return answers


def run_predict(model: str, data: Path, task_name: str, out: Path, images: ImageSettings | None = None,
                batch_size: int = 16, limit: int | None = None, load_in_4bit: bool | None = None,
                on_progress=None, root: Path | None = None, overwrite: bool = False) -> PredictSummary:
    """Predict `task_name` for every item of `data` into `out` (see the module docstring). `on_progress(done,
    total)` is called when generation starts and after every batch. `root`: the folder relative image paths
    must stay inside (default: the folder above the data file's, as for `bench`: `records_root`)."""
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
    check_records_fit_context(model, {task.name: records})

    out, partial = Path(out), partial_path(Path(out))
    inputs = [("data file", Path(data))] + [("image", Path(p)) for r in records for ref in r["images"]
                                            for p in ref_paths(ref)]
    for where in (out, partial, settings_path(out)):
        check_location(where, Guarded(files=inputs), "--out")
    settings = {"model": str(model), "model_fingerprint": model_fingerprint(model), "task": task.name,
                "data_sha256": fingerprint_file(Path(data)), "images": images.model_dump(),
                "load_in_4bit": load_in_4bit, "max_new_tokens": task.max_new_tokens}
    with locked(out):
        done = _earlier_answers(out, settings, overwrite)
        todo = [r for r in records if str(r["id"]) not in done]
        if not todo and out.exists() and not partial.exists():
            return PredictSummary(out, len(records), len(records), 0, 0, 0.0, _images_per_item(records))
        check_writable(out.parent, option="--out")
        write_json_atomic(settings_path(partial), settings)
        rewrite(partial, done.values())  # rewritten whole (torn line dropped), then swapped in
        predicted, parsed, seconds = _predict_into(partial, model, load_in_4bit, task, todo, images, batch_size,
                                                   on_progress)
        partial.replace(out)
        settings_path(partial).replace(settings_path(out))  # after the answers: a stale record only refuses
    return PredictSummary(out, len(records), len(records) - len(todo), predicted, parsed, seconds,
                          _images_per_item(records))


def _images_per_item(records: list[dict[str, Any]]) -> float:
    return sum(len(r["images"]) for r in records) / max(len(records), 1)


def _predict_into(partial: Path, model: str, load_in_4bit: bool | None, task, todo: list[dict[str, Any]],
                  images: ImageSettings, batch_size: int, on_progress) -> tuple[int, int, float]:
    """Answer `todo`, appending each batch's lines to `partial` (synced); returns (predicted, parsed, seconds)."""
    predicted = parsed = 0
    started = time.perf_counter()
    if not todo:
        return 0, 0, 0.0
    loaded = load_for_inference(model, load_in_4bit)
    prompts = [task.prompt(r) for r in todo]
    if on_progress is not None:
        on_progress(0, len(todo))
    with partial.open("a", encoding="utf-8") as handle:
        batches = generate_batches(loaded, prompts, [r["images"] for r in todo], task.max_new_tokens, batch_size,
                                   [r["_source"] for r in todo])
        for batch in batches:
            lines = []
            for record, answer in zip(todo[predicted:predicted + len(batch)], batch, strict=True):
                value = task.parse(record, answer)
                parsed += value is not None
                lines.append(_line(task.name, record, answer, value, images))
            append_synced(handle, lines)
            predicted += len(batch)
            if on_progress is not None:
                on_progress(predicted, len(todo))
    return predicted, parsed, time.perf_counter() - started


def _line(task: str, record: dict[str, Any], raw: str, value: Any, images: ImageSettings) -> dict[str, Any]:
    return {"id": record["id"], "task": task, "prediction": value, "parsed": value is not None, "raw": raw,
            "images": len(record["images"]), "strategy": images.strategy}
