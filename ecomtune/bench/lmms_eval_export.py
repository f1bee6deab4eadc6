"""`ecomtune bench export --format lmms-eval`: the benchmark as an lmms-eval task package.

One YAML per task (`ecomtune_<task>`), a group YAML (`ecomtune`, every exported task) and a `utils.py` that binds
`ecomtune.bench.lmms_eval_tasks` to the data, so `lmms-eval --include_path DIR --tasks ecomtune ...` runs the same
prompts, the same greedy generation length and the same scorers as `ecomtune bench`, on the same records. The
data is checked with ecomtune's reader first: a package that would fail minutes into a harness run is refused
here, with every problem named.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ecomtune.bench.lmms_eval_tasks import scalar_metrics
from ecomtune.config.schema import ImageSettings
from ecomtune.data.task_records import read_task_records, records_root
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.runs.outputs import Guarded, replacing_folder
from ecomtune.tasks.registry import Task

FORMATS = ("lmms-eval",)
GROUP = "ecomtune"
LOWER_IS_BETTER = frozenset({"unparsed_rate", "hallucination_rate", "verifiable_incorrect", "unverifiable"})


@dataclass(frozen=True)
class ExportedPackage:
    """What was written: the package folder, its task names (ecomtune's -> the harness's) and items per task."""

    out: Path
    tasks: dict[str, str]
    items: dict[str, int]


def harness_name(task: Task) -> str:
    """The harness's name for an ecomtune task: `deep-fashion` -> `ecomtune_deep_fashion`."""
    return f"{GROUP}_{task.name.replace('-', '_')}"


def _function(name: str) -> str:
    return f"!function utils.{name}"


def task_yaml(task: Task, data_file: Path) -> str:
    """The task's YAML. Strings are written as JSON, which YAML reads as they are (paths with spaces or `#`).
    `until: []`: the harness would otherwise stop at a blank line, which ecomtune's generation does not."""
    name = harness_name(task)
    lines = [
        f"# ecomtune task {task.name}: {task.description}",
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: generate_until",
        f"doc_to_visual: {_function(name + '_doc_to_visual')}",
        f"doc_to_text: {_function(name + '_doc_to_text')}",
        'doc_to_target: "id"',
        "generation_kwargs:",
        f"  max_new_tokens: {task.max_new_tokens}",
        "  temperature: 0",
        "  do_sample: false",
        "  num_beams: 1",
        "  until: []",
        f"process_results: {_function(name + '_process_results')}",
        "metric_list:",
    ]
    for metric in scalar_metrics(task):
        lines += [f"  - metric: {metric}", f"    aggregation: {_function(f'{name}_{metric}')}",
                  f"    higher_is_better: {str(metric not in LOWER_IS_BETTER).lower()}"]
    lines += ["metadata:", "  version: 1.0", f"  ecomtune_task: {task.name}"]
    return "\n".join(lines) + "\n"


def group_yaml(tasks: list[Task]) -> str:
    """The `ecomtune` group: every exported task in one `--tasks ecomtune`."""
    return "\n".join([f"group: {GROUP}", "task:", *[f"  - {harness_name(t)}" for t in tasks]]) + "\n"


def utils_source(tasks: list[Task], data_files: dict[str, Path], root: Path, images: ImageSettings) -> str:
    """`utils.py`: module-level names the YAMLs' `!function utils.NAME` resolve to, bound to this package's data."""
    files = {t.name: str(data_files[t.name]) for t in tasks}
    lines = [
        '"""lmms-eval functions for ecomtune\'s benchmark tasks, written by `ecomtune bench export --format '
        'lmms-eval`.',
        "",
        "Prompts and scores are ecomtune's own (ecomtune.bench.lmms_eval_tasks), so ecomtune must be importable",
        "where the harness runs: pip install 'ecomtune[eval]'.",
        '"""',
        "",
        "from ecomtune.bench.lmms_eval_tasks import Bindings",
        "",
        f"_BOUND = Bindings(data_files={files!r},",
        f"                  root={str(root)!r},",
        f"                  images={images.model_dump()!r})",
        "",
    ]
    for task in tasks:
        name = harness_name(task)
        for role in ("doc_to_visual", "doc_to_text", "process_results"):
            lines.append(f"{name}_{role} = _BOUND.{role}({task.name!r})")
        lines += [f"{name}_{metric} = _BOUND.aggregate({task.name!r}, {metric!r})" for metric in scalar_metrics(task)]
        lines.append("")
    return "\n".join(lines)


def readme_text(tasks: list[Task], data: Path) -> str:
    names = ",".join(harness_name(t) for t in tasks)
    return (f"# ecomtune benchmark tasks for lmms-eval\n\nData: {data}\n\n"
            "```\npip install 'ecomtune[eval]'\n"
            f"python -m lmms_eval --include_path THIS_FOLDER --tasks {GROUP} --model qwen2_vl \\\n"
            "    --model_args pretrained=MODEL_FOLDER --batch_size 1\n```\n\n"
            "`--model`: lmms-eval's class for the model's family (qwen2_vl for Qwen2-VL; on CPU add "
            "`,device=cpu,device_map=cpu` to --model_args). "
            f"Tasks: {names} (group `{GROUP}`: all of them). Each reports the metrics `ecomtune bench` prints, "
            "scored by ecomtune's own scorers over all examples.\n\n"
            "Prompts, images, generation length and scoring are ecomtune's. The model class does two image steps of "
            "its own: lmms-eval's qwen2_vl re-encodes every image as JPEG (quality 85) and resizes it with "
            "qwen_vl_utils (sides to multiples of 28) before the processor, where `ecomtune bench` gives the "
            "processor the decoded file. A model that notices those changes can answer differently; on images that "
            "JPEG stores exactly and whose sides are multiples of 28 the answers are the same.\n")


def check_data(tasks: list[Task], data: Path, root: Path) -> tuple[dict[str, int], list[str]]:
    """Every task's records read as `ecomtune bench` reads them (all problems at once), and ids unique per task:
    the harness's documents are matched to records by id. Returns items per task and every image file."""
    items, images, duplicates = {}, [], []
    for task in tasks:
        path = data / f"{task.name}.jsonl"
        records = read_task_records(path, task, None, root)
        items[task.name] = len(records)
        images += [p for r in records for p in r["images"]]
        counts = Counter(str(r["id"]) for r in records)
        duplicates += [Problem(f"id {key!r} is used by {n} records", str(path)) for key, n in counts.items() if n > 1]
    if duplicates:
        raise DataError("The harness matches its documents to records by id: ids must be unique per task",
                        duplicates[:20], fix="give every record of a task its own id")
    return items, images


def export_lmms_eval(out: Path, data: Path, tasks: list[Task], overwrite: bool = False,
                     images: ImageSettings | None = None) -> ExportedPackage:
    """Write the package for `tasks` over `data/<task>.jsonl` into `out` (refused when non-empty unless
    `overwrite`; never inside the data or its image folders). Relative image paths may reach the data folder's
    parent, as in `ecomtune bench`."""
    data = Path(data).resolve()
    if not data.is_dir():
        raise ConfigError(f"--data {data} is not a folder",
                          fix="pass the folder holding <task>.jsonl files (default: data_samples/bench)")
    root = records_root(data / "task.jsonl")  # the folder above the records' own, as `ecomtune bench` reads them
    items, image_files = check_data(tasks, data, root)
    guarded = Guarded(folders=[("benchmark data", data)]).add_images(image_files)
    data_files = {t.name: data / f"{t.name}.jsonl" for t in tasks}
    with replacing_folder(Path(out), overwrite, guarded, "--out") as staging:
        for task in tasks:
            (staging / f"{harness_name(task)}.yaml").write_text(task_yaml(task, data_files[task.name]),
                                                                 encoding="utf-8")
        (staging / f"{GROUP}.yaml").write_text(group_yaml(tasks), encoding="utf-8")
        (staging / "utils.py").write_text(utils_source(tasks, data_files, root, images or ImageSettings()),
                                          encoding="utf-8")
        (staging / "README.md").write_text(readme_text(tasks, data), encoding="utf-8")
    return ExportedPackage(Path(out), {t.name: harness_name(t) for t in tasks}, items)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not known", fix=f"use --format {' or '.join(FORMATS)}")
