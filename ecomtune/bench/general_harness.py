"""`ecomtune bench --general lmms-eval:TASKS`: the paper's before/after check of general skills (MMBench, MME,
TextVQA, ...) run by lmms-eval, its scores written beside ecomtune's own in the results JSON.

Everything that can fail is checked before any model loads, in seconds: lmms-eval installed, a model it can
load (a model folder, alias or hub id; an ecomtune run with an adapter is not one), a model class for the
family, task names it knows, and each task's data cached here or the hub reachable. A harness run that would
die on a download after minutes of setup is refused up front, with the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from ecomtune.errors import ConfigError, EcomtuneError, Problem
from ecomtune.runs.files import ADAPTER_CONFIG
from ecomtune.runtime import hub_reachable

PREFIX = "lmms-eval:"
INSTALL_FIX = "pip install 'ecomtune[eval]' (lmms-eval 0.7.3 and what its model classes import)"
# lmms-eval's model class per backbone family (`--model` of the harness). qwen2_vl is run end to end on CPU
# by the tests; the others are the classes lmms-eval registers for those architectures.
MODEL_CLASSES = {"qwen2-vl": "qwen2_vl", "qwen2.5-vl": "qwen2_5_vl", "qwen3-vl": "qwen3_vl", "llava": "llava_hf",
                 "llava-next": "llava_hf", "llava-onevision": "llava_hf", "gemma3": "gemma3",
                 "mistral3": "mistral3_vl"}


@dataclass(frozen=True)
class HarnessPlan:
    """A checked harness run: what to load with which class, the tasks (as named and as leaf tasks), and
    optionally a folder of extra task YAMLs (`--include_path`, e.g. `ecomtune bench export`'s package) and
    further harness arguments."""

    model: str
    model_class: str
    tasks: list[str]
    leaves: list[str]
    include_path: Path | None = None
    extra: tuple[str, ...] = ()

    def command(self, output: Path, device: str) -> list[str]:
        """The harness's command line. Batch size 1: lmms-eval's Qwen2-VL class leaves the padding side to the "
        tokenizer, and one prompt at a time is never padded."""
        args = f"pretrained={self.model},device={device}" + (",device_map=cpu" if device == "cpu" else "")
        include = ["--include_path", str(self.include_path)] if self.include_path else []
        return [sys.executable, "-m", "lmms_eval", *include, "--model", self.model_class, "--model_args", args,
                "--tasks", ",".join(self.tasks), "--batch_size", "1", "--output_path", str(output), *self.extra]


def parse_general(value: str) -> list[str]:
    """`lmms-eval:mme,textvqa_val` -> ["mme", "textvqa_val"]."""
    names = [n.strip() for n in value[len(PREFIX):].split(",") if n.strip()] if value.startswith(PREFIX) else []
    if not names:
        raise ConfigError(f"--general {value!r} names no lmms-eval tasks",
                          fix="e.g. --general lmms-eval:mmbench_en_dev,mme,textvqa_val (lmms-eval's task names)")
    return names


def require_lmms_eval() -> None:
    """One message naming the extra, instead of an ImportError."""
    try:
        import lmms_eval  # noqa: F401
        import qwen_vl_utils  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--general needs lmms-eval, which is not installed here ({exc.name} is missing)",
                          fix=INSTALL_FIX) from None


def harness_model(model: str) -> tuple[str, str]:
    """(what lmms-eval loads, its model class). lmms-eval loads a model folder or hub id and has no adapter
    option, so a run folder or an adapter is refused with the command that turns it into a folder."""
    from ecomtune.infer.load import model_backbone, run_of

    folder = Path(model)
    if run_of(model) is not None or (folder / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"--model {model} is an ecomtune run (an adapter or projector on a base model): lmms-eval "
                          "loads a plain model folder and has no adapter option",
                          fix=f"merge it first: `ecomtune export {model} --out MERGED`, then "
                          "`ecomtune bench --model MERGED --general ...`")
    backbone = model_backbone(model)
    model_class = MODEL_CLASSES.get(backbone.spec.family)
    if model_class is None:
        raise ConfigError(f"No lmms-eval model class is known for {backbone.spec.title} ({model})",
                          fix=f"--general runs these families: {', '.join(sorted(MODEL_CLASSES))}; for another one "
                          "run lmms-eval yourself with the class it offers for that model")
    return (str(folder.resolve()) if backbone.is_local else backbone.source), model_class


def _task_manager():
    """lmms-eval's index of tasks, built quietly: it logs every YAML it skips (loguru, at DEBUG), which would
    bury the one message this command has to say."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="ERROR")


def leaf_tasks(manager: Any, names: list[str]) -> list[str]:
    """The tasks behind each name (a group or tag stands for its members), each once; unknown names refused."""
    unknown = [n for n in names if n not in manager.task_index]
    if unknown:
        close = {n: get_close_matches(n, manager.all_tasks, 3) for n in unknown}
        problems = [Problem(f"{n} is not an lmms-eval task, group or tag",
                            fix="did you mean " + " or ".join(close[n]) if close[n] else "") for n in unknown]
        raise ConfigError("Unknown lmms-eval task(s)", problems,
                          fix="`python -m lmms_eval --tasks list` prints every name")
    leaves: list[str] = []
    for name in names:
        entry = manager.task_index[name]
        if entry["type"] in ("task", "python_task"):
            leaves.append(name)
        else:
            members = entry["task"] if isinstance(entry["task"], list) else [entry["task"]]
            leaves += leaf_tasks(manager, [m for m in members if isinstance(m, str) and m in manager.task_index])
    return list(dict.fromkeys(leaves))


def dataset_of(manager: Any, task: str) -> dict[str, Any]:
    """The task's dataset fields, read from its YAML without importing its functions."""
    from lmms_eval import utils

    path = manager.task_index[task]["yaml_path"]
    if path == -1:
        return {}
    config = utils.load_yaml_config(path, mode="simple")
    return {key: config.get(key) for key in ("dataset_path", "dataset_name", "dataset_kwargs")}


def dataset_cached(repo_id: str) -> bool:
    """Whether a hub dataset is on this machine: its files in the hub cache, or a prepared copy in the datasets
    cache (HF_HUB_CACHE / HF_DATASETS_CACHE, as `datasets` itself looks)."""
    from datasets import config as datasets_config
    from datasets.naming import camelcase_to_snakecase
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    namespace, _, name = repo_id.rpartition("/")
    prepared = Path(datasets_config.HF_DATASETS_CACHE) / "___".join(filter(None, (namespace,
                                                                               camelcase_to_snakecase(name))))
    return (snapshots.is_dir() and any(snapshots.iterdir())) or prepared.is_dir()


def missing_data(manager: Any, leaves: list[str], hub_reachable: bool) -> list[Problem]:
    """Each leaf task whose data can be neither read here nor downloaded."""
    problems = []
    for task in leaves:
        dataset = dataset_of(manager, task)
        source = dataset.get("dataset_path") or ""
        files = (dataset.get("dataset_kwargs") or {}).get("data_files")
        if not source or Path(source).exists():
            continue
        if files:  # a builder (json, parquet, ...) over named files: local ones must exist, URLs need network
            paths = [files] if isinstance(files, str) else (list(files.values()) if isinstance(files, dict) else files)
            flat = [p for item in paths for p in ([item] if isinstance(item, str) else item)]
            remote = [p for p in flat if "://" in p]
            absent = [p for p in flat if "://" not in p and not Path(p).exists()]
            if absent or (remote and not hub_reachable):
                problems.append(Problem(f"{task}: data files {', '.join((absent or remote)[:3])} cannot be read"))
            continue
        if not hub_reachable and not dataset_cached(source):
            problems.append(Problem(f"{task}: dataset {source} is not in the local cache and the hub is not reachable"))
    return problems


def plan_general(model: str, names: list[str]) -> HarnessPlan:
    """Every check, in seconds, before any model loads or any ecomtune task runs."""
    require_lmms_eval()
    pretrained, model_class = harness_model(model)
    manager = _task_manager()
    leaves = leaf_tasks(manager, names)
    problems = missing_data(manager, leaves, hub_reachable())
    if problems:
        raise ConfigError(
            f"--general: the data of {len(problems)} lmms-eval task(s) is not on this machine and cannot be "
            "downloaded; nothing was run", problems,
            fix="run where the hub is reachable, or copy a Hugging Face cache that holds these datasets here and "
            "point HF_HOME (or HF_HUB_CACHE / HF_DATASETS_CACHE) at it; `hf download --repo-type "
            "dataset ID` fills one")
    return HarnessPlan(pretrained, model_class, names, leaves)


def read_scores(output: Path) -> dict[str, Any]:
    """Numeric scores per task from the harness's results file (`<output>/<model>/<time>_results.json`)."""
    files = sorted(output.rglob("*results*.json"))
    if not files:
        raise EcomtuneError(f"lmms-eval wrote no results file under {output}",
                            fix="see lmms-eval's output above for what went wrong")
    results = json.loads(files[-1].read_text(encoding="utf-8")).get("results", {})
    return {task: {key.split(",")[0]: value for key, value in metrics.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in key}
            for task, metrics in results.items()}


def run_general(plan: HarnessPlan, output: Path | None = None) -> dict[str, Any]:
    """Run the harness in its own process (its logging and its failures stay its own) and collect its scores.
    `output`: where the harness writes its files (default: a temporary folder, removed afterwards)."""
    from importlib.metadata import version

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="ecomtune-lmms-eval-") as tmp:
        folder = Path(output) if output is not None else Path(tmp)
        command = plan.command(folder, device)
        done = subprocess.run(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False)
        if done.returncode != 0:
            raise EcomtuneError(f"lmms-eval failed (exit {done.returncode}) on {', '.join(plan.tasks)}",
                                fix="its own message is above; the command was: " + " ".join(command))
        scores = read_scores(folder)
    return {"harness": f"lmms-eval {version('lmms_eval')}", "model_class": plan.model_class, "model": plan.model,
            "command": command, "tasks": scores}


def run_bench_with_general(general: str, model: str, tasks: str, data: Path, out: Path | None = None,
                           overwrite: bool = False, **bench: Any) -> dict[str, Any]:
    """`ecomtune bench` plus the harness: its checks first (seconds), then ecomtune's tasks, then the harness's;
    its scores go into the results under `general_harness`, beside ecomtune's `tasks`."""
    from ecomtune.bench.runner import run_bench
    from ecomtune.runs.manifest import write_json_atomic
    from ecomtune.runs.outputs import Guarded, check_file_output

    names = parse_general(general)
    if out is not None:
        inputs = [("model folder", Path(model))] if Path(model).is_dir() else []
        check_file_output(Path(out), overwrite, Guarded(folders=[*inputs, ("benchmark data", Path(data))]))
    plan = plan_general(model, names)
    results = run_bench(model, tasks, data, **bench)
    import gc

    import torch

    gc.collect()  # the benchmark's model is gone; its GPU memory goes back before lmms-eval loads the model again
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    results["general_harness"] = run_general(plan)
    if out is not None:
        write_json_atomic(Path(out), results)
    return results


def general_table(results: dict[str, Any]):
    """The harness's scores, one row per task and metric."""
    from rich.table import Table

    harness = results["general_harness"]
    table = Table(title=f"general skills ({harness['harness']}, --model {harness['model_class']}): "
                  f"{results['model']['spec']}")
    for column in ("task", "metric", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for task, metrics in harness["tasks"].items():
        for i, (metric, value) in enumerate(metrics.items()):
            table.add_row(task if i == 0 else "", metric, f"{value:.3f}")
    return table
