"""Watching a stage while it trains: one progress display, a JSON log of every metric, and an in-training
probe of chosen benchmark tasks with a guard on general skill.

- `LiveProgress` replaces the Trainer's progress bar and printed metric dicts with one rich line per stage
  (step / total, loss, learning rate, tokens/s, ETA); every logged dict goes to `metrics.jsonl` in the run
  folder instead of the terminal.
- `BenchProbe` runs the chosen `ecomtune bench` tasks on a few items at step 0, every `every` steps and at the
  last step, on the model as it trains (greedy, batched, the bench's own prompts and scorers), and logs
  `probe/<task>` to the Trainer (so to every tracker). With `general_drop_limit`, a general score more than the
  limit below the guard's baseline warns, or (`on_general_drop: stop`) ends training with the weights of the last
  probe that was within the limit put back, so the run's outputs are the last weights that kept general skill.
  The baseline is the stage's step-0 value, or, along an `--init-from` chain (`chain_baseline`), the one the
  chain's first guarded stage measured: each stage of align -> mid -> sft starting where the last one ended would
  otherwise allow the limit again, and the chain could lose it three times over.
  Under DDP the main process's scores go to every process, so all reach the same decision (sharded engines refuse
  the probe: `ecomtune.train.distributed`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ecomtune.runtime import is_main_process


def _same_on_every_process(scores: dict[str, float]) -> dict[str, float]:
    """The main process's scores, on every process of a multi-process run: each generated on its own, and one
    differing kernel must not let one process stop training while the others go on (the job would hang)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    box = [scores]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LiveProgress(TrainerCallback):
    """A rich progress line for the stage, and every logged metric dict appended to `metrics_file`."""

    def __init__(self, stage: str, tokens_per_step: float | None, metrics_file: Path | None,
                 console=None) -> None:
        self.stage, self.tokens_per_step, self.metrics_file = stage, tokens_per_step, metrics_file
        self.console, self.progress, self.task = console, None, None
        self.started: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(f"[bold]{self.stage}[/bold]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]}"),
                                 TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(self.stage, total=state.max_steps, completed=state.global_step,
                                           loss="-", lr="-", rate="")
        self.started = (time.perf_counter(), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None or self.started is None:
            return
        seconds = time.perf_counter() - self.started[0]
        steps = state.global_step - self.started[1]
        rate = ""
        if seconds > 0 and steps > 0 and self.tokens_per_step:
            rate = f"~{self.tokens_per_step * steps / seconds:,.0f} tok/s"
        self.progress.update(self.task, completed=state.global_step, rate=rate)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.metrics_file is not None:
            with self.metrics_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
        if self.progress is not None:
            fields = {}
            if "loss" in logs:
                fields["loss"] = f"{float(logs['loss']):.4f}"
            if "learning_rate" in logs:
                fields["lr"] = f"{float(logs['learning_rate']):.2e}"
            if fields:
                self.progress.update(self.task, **fields)
            probes = {k.removeprefix("probe/"): v for k, v in logs.items() if k.startswith("probe/")}
            evals = {k: v for k, v in logs.items() if k == "eval_loss"}
            if probes or evals:
                shown = ", ".join(f"{k} {float(v):.3f}" for k, v in {**evals, **probes}.items())
                self.progress.console.print(f"  step {state.global_step}: {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the display (also when training raised, so the terminal gets its cursor back)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def watched_score(scores: dict[str, float], prefix: str = "") -> float | None:
    """The score the guard watches in `scores` (keys `prefix + task name`): that of the first task the registry
    marks `retention` (general skill) that was probed; None when none was."""
    from ecomtune.tasks.registry import TASKS

    return next((float(scores[prefix + name]) for name, task in TASKS.items()
                 if task.retention and prefix + name in scores), None)


class BenchProbe(TrainerCallback):
    """Bench tasks on a few items during training, and the general-skill guard (see the module docstring)."""

    def __init__(self, processor, records: dict[str, list[dict[str, Any]]], every: int,
                 general_drop_limit: float | None = None, on_general_drop: str = "warn", batch_size: int = 8,
                 console=None, chain: ChainBaseline | None = None, probed: dict[str, Any] | None = None) -> None:
        self.processor, self.records, self.every = processor, records, every
        self.limit, self.on_drop, self.batch_size = general_drop_limit, on_general_drop, batch_size
        self.console, self.chain, self.probed = console, chain, probed or {}
        self.trainer = None
        self.history: list[dict[str, Any]] = []
        self.baseline: float | None = chain.value if chain is not None else None
        # trainable weights at the last probe within the limit (a guard that stops only)
        self.kept: dict[str, torch.Tensor] | None = None
        self.kept_step: int | None = None
        self.stopped: dict[str, Any] | None = None
        self.warned: list[dict[str, Any]] = []  # the probes past the limit that did not stop training

    def attach(self, trainer) -> BenchProbe:
        self.trainer = trainer
        return self

    def scores(self, model) -> dict[str, float]:
        """Each task's headline score on its probe items, with the model as it is now."""
        from ecomtune.infer.generate import generate_batches
        from ecomtune.infer.load import LoadedModel
        from ecomtune.tasks.judging import FieldMatchJudge
        from ecomtune.tasks.registry import TASKS

        was_training = model.training
        model.eval()
        try:
            loaded = LoadedModel(model, self.processor, {})
            found = {}
            for name, records in self.records.items():
                task = TASKS[name]
                answers = [a for batch in generate_batches(loaded, [task.prompt(r) for r in records],
                                                           [r["images"] for r in records], task.max_new_tokens,
                                                           self.batch_size, [r["_source"] for r in records])
                           for a in batch]
                found[name] = float(task.score(records, answers, FieldMatchJudge())[0][task.headline])
            return found
        finally:
            model.train(was_training)

    def _probe(self, state, control, model) -> None:
        scores = _same_on_every_process(self.scores(model))
        entry = {"step": state.global_step, **scores}
        self.history.append(entry)
        if self.trainer is not None:
            self._log({f"probe/{name}": value for name, value in scores.items()}, control)
        general = watched_score(scores)
        if general is None or self.limit is None:
            return
        if self.baseline is None:
            self.baseline = general
        drop = self.baseline - general
        if drop <= self.limit:
            if self.on_drop == "stop":  # only a guard that stops puts weights back: a warning one copies nothing
                self.kept = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                             if p.requires_grad}
                self.kept_step = state.global_step
            return
        where = "its step-0 value" if self.chain is None else f"the chain's baseline (from {self.chain.source})"
        message = (f"general skill fell {drop:.3f} below {where} {self.baseline:.3f} at step "
                   f"{state.global_step} (limit {self.limit})")
        if self.on_drop == "stop" and self.kept is not None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.kept:
                        param.copy_(self.kept[name].to(param.device, param.dtype))
            self.stopped = {"step": state.global_step, "weights_from_step": self.kept_step, "reason": message}
            control.should_training_stop = True
            message += f": training stopped, weights of step {self.kept_step} kept"
        else:
            self.warned.append({"step": state.global_step, "drop": round(drop, 6)})
            if self.on_drop == "stop":
                message += (": no probe of this stage was within the limit, so there are no weights to keep; "
                            "training goes on")
        if is_main_process():
            if self.console is not None:
                self.console.print(f"[yellow]warning: {message}[/yellow]")
            else:
                print(f"warning: {message}")

    def _log(self, values: dict[str, float], control) -> None:
        """Log through Trainer's own `log` (trackers, the console, `log_history`). TRL's override is passed by: it
        would fold its running token metrics into this entry. A log made between steps also clears the Trainer's
        wish to log the loss at this step, which is put back."""
        from transformers import Trainer

        wanted = control.should_log
        Trainer.log(self.trainer, values)
        control.should_log = wanted

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Probe before the first step. A resumed run takes its step-0 value and earlier probes from the Trainer's
        own history, then probes the weights it resumes with (so the guard has weights to keep)."""
        earlier = [e for e in state.log_history if any(k.startswith("probe/") for k in e)]
        self.history = [{"step": e.get("step", 0), **{k.removeprefix("probe/"): v for k, v in e.items()
                                                      if k.startswith("probe/")}} for e in earlier]
        general = [value for e in earlier if (value := watched_score(e, "probe/")) is not None]
        if general and self.chain is None:
            self.baseline = float(general[0])
        self._probe(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Probe every `every` steps, and at the last step whatever `every` is: the weights that will be saved are
        always checked by the guard (with every: 50 and 120 steps, steps 101-120 would otherwise go unchecked)."""
        if (state.global_step % self.every == 0 or state.global_step >= state.max_steps) and not self.stopped:
            self._probe(state, control, model)

    def summary(self) -> dict[str, Any]:
        return {"history": self.history, "baseline_general": self.baseline,
                "baseline_from": "step 0" if self.chain is None else self.chain.source, "probed": self.probed,
                "warned": self.warned, "stopped": self.stopped}


@dataclass(frozen=True)
class ChainBaseline:
    """The general score a guard measures from when it is not the stage's own step 0, and where it came from."""

    value: float
    source: str


def probe_identity(probe) -> dict[str, Any]:
    """What decides whether two probes' scores compare: the same items of the same benchmark files."""
    return {"data": str(Path(probe.data).resolve()), "items": probe.items}


def chain_baseline(probe, start) -> ChainBaseline | None:
    """The baseline the `--init-from` run's guard measured from (`start`: its FinishedRun), for a probe set to
    `baseline: chain` that asks the same items of the same data; None (the stage's own step 0) otherwise, and for
    a stage that starts from the backbone."""
    if probe.baseline != "chain" or start is None:
        return None
    earlier = start.manifest.get("probe") or {}
    value = earlier.get("baseline_general")
    if value is None or earlier.get("probed") != probe_identity(probe):
        return None
    origin = earlier.get("baseline_from", "step 0")
    return ChainBaseline(float(value), f"step 0 of {start.folder.resolve()}" if origin == "step 0" else origin)


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",),
                    "mlflow": ("mlflow",)}


def check_trackers(report_to: list[str], key: str) -> None:
    """Every tracker the recipe names is installed: found before any model loads, not at the first log."""
    from importlib.util import find_spec

    from ecomtune.errors import ConfigError, Problem

    missing = [name for name in report_to if not any(find_spec(p) for p in TRACKER_PACKAGES[name])]
    if missing:
        raise ConfigError(f"{key} names tracker(s) that are not installed: {', '.join(missing)}",
                          [Problem(f"{name}: no {' or '.join(TRACKER_PACKAGES[name])} package", key)
                           for name in missing],
                          fix=f"pip install {' '.join(TRACKER_PACKAGES[n][0] for n in missing)}, or remove them")


class RecipeToTrackers(TrainerCallback):
    """The run's recipe and manifest (as written when the run started) with the tracker run: a text summary in
    TensorBoard, the run config in W&B, an artifact in MLflow. transformers' own tracker callbacks log the
    Trainer's arguments (trackio gets those alone)."""

    def __init__(self, report_to: list[str], config: dict[str, Any]) -> None:
        self.report_to, self.config, self.trainer = report_to, config, None

    def attach(self, trainer) -> RecipeToTrackers:
        self.trainer = trainer
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.trainer is None:
            return
        text = json.dumps(self.config, indent=1, default=str)
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_text("ecomtune/manifest", f"```\n{text}\n```")
                writer.flush()
        if "wandb" in self.report_to:
            import wandb

            if wandb.run is not None:
                wandb.config.update({"ecomtune": self.config}, allow_val_change=True)
        if "mlflow" in self.report_to:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_dict(self.config, "ecomtune_manifest.json")


def quiet_trainer(trainer) -> None:
    """Take the Trainer's own progress bar and printed metric dicts off the terminal (LiveProgress shows the
    stage, metrics.jsonl keeps every dict)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


def probe_records(probe, spec, images) -> dict[str, list[dict[str, Any]]]:
    """The probe's items per task, read and checked like `ecomtune bench` data, before any model loads."""
    from ecomtune.data.task_records import check_records_fit, read_task_records
    from ecomtune.tasks.registry import resolve_tasks

    records = {}
    for task in resolve_tasks(",".join(probe.tasks)):
        found = read_task_records(Path(probe.data) / f"{task.name}.jsonl", task, images, spec=spec)
        check_records_fit(found[:probe.items], spec)
        records[task.name] = found[:probe.items]
    return records
