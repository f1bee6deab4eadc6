"""What an exported lmms-eval task package calls at evaluation time (its `utils.py` only binds these).

The harness reads `<data>/<task>.jsonl` through `datasets`, which merges the nested dicts of all records into
one schema (a record's `aspects` would gain every other record's keys, as None). So the documents it hands us
are used for their `id` only: the record itself is read here by ecomtune's own reader, with the same image
root and multi-image strategy `ecomtune bench` uses, and looked up by id. Prompts come from `Task.prompt` and
scores from `Task.score` over the whole list, so the harness reports exactly the numbers `ecomtune bench` does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from ecomtune.tasks.judging import FieldMatchJudge
from ecomtune.tasks.registry import TASKS, Task


def scalar_metrics(task: Task) -> list[str]:
    """The task's top-level numeric scores, headline first (what `ecomtune bench` prints in its table). Read off
    an empty scoring, so a metric added to a scorer reaches the export without a second list to keep."""
    scores, _ = task.score([], [], FieldMatchJudge())
    names = [k for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sorted(names, key=lambda name: name != task.headline)


def answer_text(result: Any) -> str:
    """A model's answer as `ecomtune bench` keeps it: the text (some harness versions wrap it in an object),
    stripped."""
    text = getattr(result, "text", result)
    return str(text).strip()


class Bindings:
    """The functions one exported package needs, bound to its data files, image root and image settings."""

    def __init__(self, data_files: dict[str, str], root: str, images: dict[str, Any]) -> None:
        self.data_files = data_files
        self.root = Path(root)
        self.images = images

    @cache  # noqa: B019 (one Bindings per package; the records of each task are read once)
    def records(self, task_name: str) -> dict[str, dict[str, Any]]:
        """The task's records by id, read and presented as `ecomtune bench` reads them."""
        from ecomtune.config.schema import ImageSettings
        from ecomtune.data.task_records import read_task_records

        records = read_task_records(Path(self.data_files[task_name]), TASKS[task_name], ImageSettings(**self.images),
                                    self.root)
        return {str(record["id"]): record for record in records}

    def record(self, task_name: str, doc: dict[str, Any]) -> dict[str, Any]:
        return self.records(task_name)[str(doc["id"])]

    def doc_to_visual(self, task_name: str) -> Callable[[dict], list]:
        """The record's images as PIL images, in the order and form the strategy presents them."""
        from ecomtune.data.images.strategies import open_image

        def doc_to_visual(doc: dict) -> list:
            return [open_image(ref) for ref in self.record(task_name, doc)["images"]]

        return doc_to_visual

    def doc_to_text(self, task_name: str) -> Callable[..., str]:
        """ecomtune's prompt for the record, word for word."""
        task = TASKS[task_name]

        def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
            return task.prompt(self.record(task_name, doc))

        return doc_to_text

    def process_results(self, task_name: str) -> Callable[[dict, list], dict[str, tuple[str, str]]]:
        """Scores are corpus-level (F1 over all fields), so each example passes (id, answer) on to every metric's
        aggregation instead of a number of its own."""
        metrics = scalar_metrics(TASKS[task_name])

        def process_results(doc: dict, results: list) -> dict[str, tuple[str, str]]:
            item = (str(doc["id"]), answer_text(results[0]))
            return dict.fromkeys(metrics, item)

        return process_results

    def aggregate(self, task_name: str, metric: str) -> Callable[[list], float]:
        """One metric of `Task.score` over every (id, answer) of the run."""
        task = TASKS[task_name]

        def aggregate(items: list) -> float:
            records = [self.records(task_name)[str(key)] for key, _ in items]
            scores, _ = task.score(records, [answer for _, answer in items], FieldMatchJudge())
            return float(scores[metric])

        aggregate.__name__ = f"{task_name.replace('-', '_')}_{metric}"
        return aggregate
