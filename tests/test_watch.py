"""Watching a stage: TensorBoard events with the loss, a held-out eval loss, the in-training bench probe, the
general-skill guard, and library output kept in the run folder's log instead of the terminal."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ecomtune.config.recipe_files import load_recipe
from ecomtune.errors import ConfigError
from ecomtune.runs.manifest import FinishedRun
from ecomtune.train.stages import run_stage
from ecomtune.train.watch import BenchProbe, ChainBaseline, chain_baseline, probe_identity
from tests.conftest import quick_overrides, run_cli

pytestmark = pytest.mark.slow


def recipe(catalog, *extra: str):
    return load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=4),
                              "sft.train.learning_rate=0.01", "sft.lora.r=4", "sft.images.strategy=primary",
                              *extra])


def test_tensorboard_eval_loss_and_probe_are_recorded(catalog, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    chosen = recipe(catalog, "sft.train.report_to=[tensorboard]", "sft.eval_fraction=0.1", "sft.train.eval_steps=2",
                    f"sft.probe.data={catalog['bench']}", "sft.probe.tasks=[general,deep-fashion]",
                    "sft.probe.items=3", "sft.probe.every=2")
    result = run_stage("sft", chosen, tmp_path / "sft")
    manifest = result.manifest

    events = list((result.output / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard event files are written offline"
    scalars: dict[str, list[float]] = {}
    texts: list[str] = []
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
        texts += accumulator.Tags().get("tensors", [])
    print(sorted(scalars), texts)
    assert len(scalars["train/loss"]) == 4 and all(v > 0 for v in scalars["train/loss"])
    assert len(scalars["eval/loss"]) == 2
    assert len(scalars["train/probe/general"]) == 3
    assert any("ecomtune/manifest" in t for t in texts)

    held_out = manifest["data"]["eval"]
    assert held_out["samples"] >= 1
    assert held_out["samples"] + held_out["train_samples"] == manifest["data"]["tokens"]["samples"]
    assert manifest["metrics"]["eval_loss"] > 0
    probe = manifest["probe"]
    assert [entry["step"] for entry in probe["history"]] == [0, 2, 4]
    assert all(0.0 <= entry["general"] <= 1.0 and "deep-fashion" in entry for entry in probe["history"])
    logged = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    assert sum("probe/general" in entry for entry in logged) == 3 and any("loss" in entry for entry in logged)


class ScriptedScores(BenchProbe):
    """The guard's decisions given a known sequence of general scores (the probe's own scoring is the real one in
    the test above): the weights restored, training stopped, the run saved."""

    def __init__(self, sequence: list[float], every: int = 1, chain: ChainBaseline | None = None) -> None:
        super().__init__(None, {}, every=every, general_drop_limit=0.05, on_general_drop="stop", chain=chain)
        self.sequence = sequence

    def scores(self, model) -> dict[str, float]:
        return {"general": self.sequence[min(len(self.history), len(self.sequence) - 1)]}


def test_general_drop_stops_training_and_keeps_the_last_weights_within_the_limit(catalog, tmp_path):
    guard = ScriptedScores([0.50, 0.48, 0.30])  # step 0, step 1 (within 0.05), step 2 (fell 0.20)
    kept_at_step_1 = {}

    from transformers import TrainerCallback

    class KeepStep1(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                kept_at_step_1.update({n: p.detach().clone().cpu() for n, p in model.named_parameters()
                                       if p.requires_grad and "lora_B" in n})

    result = run_stage("sft", recipe(catalog), tmp_path / "sft", callbacks=[KeepStep1(), guard])
    assert result.complete and result.manifest["metrics"]["global_step"] == 2
    assert guard.stopped == {"step": 2, "weights_from_step": 1, "reason": guard.stopped["reason"]}
    saved = load_file(str(result.output / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and kept_at_step_1
    for name, value in kept_at_step_1.items():
        key = next(k for k in lora_b if name.replace(".default", "").endswith(k.removeprefix("base_model.model.")))
        assert torch.equal(lora_b[key], value), key
    assert result.manifest["stopped_early"]["weights_from_step"] == 1


def test_the_last_step_is_always_probed_so_the_saved_weights_are_guarded(catalog, tmp_path):
    """every: 3 on a 4-step run probes steps 0, 3 and 4: a fall at the last step puts back step 3's weights."""
    guard = ScriptedScores([0.50, 0.49, 0.20], every=3)
    result = run_stage("sft", recipe(catalog), tmp_path / "sft", callbacks=[guard])
    assert [entry["step"] for entry in guard.history] == [0, 3, 4]
    assert guard.stopped is not None and (guard.stopped["step"], guard.stopped["weights_from_step"]) == (4, 3)
    assert result.manifest["stopped_early"]["weights_from_step"] == 3


def _drive(guard: BenchProbe, steps: int) -> torch.nn.Linear:
    """Run the guard's callbacks over `steps` steps of a model whose one weight is the step number, with the
    Trainer's own state and control objects and no training: the guard's decisions alone."""
    from transformers import TrainerControl, TrainerState

    model = torch.nn.Linear(1, 1, bias=False)
    state, control = TrainerState(max_steps=steps), TrainerControl()
    with torch.no_grad():
        model.weight.fill_(0)
    guard.on_train_begin(None, state, control, model=model)
    for step in range(1, steps + 1):
        if control.should_training_stop:
            break
        state.global_step = step
        with torch.no_grad():
            model.weight.fill_(step)
        guard.on_step_end(None, state, control, model=model)
    return model


def test_a_chain_baseline_holds_the_stage_to_where_the_chain_began():
    """0.58 -> 0.54 is within 0.05 of the stage's own start, but 0.06 below the chain's 0.60: stopped at step 1,
    the weights of step 0 put back. The same scores against the stage's step 0 train to the end."""
    chained = ScriptedScores([0.58, 0.54], chain=ChainBaseline(0.60, "step 0 of runs/align"))
    model = _drive(chained, 3)
    assert chained.stopped is not None and (chained.stopped["step"], chained.stopped["weights_from_step"]) == (1, 0)
    assert "the chain's baseline (from step 0 of runs/align) 0.600" in chained.stopped["reason"]
    assert float(model.weight) == 0.0
    assert chained.summary()["baseline_from"] == "step 0 of runs/align"

    own = ScriptedScores([0.58, 0.54])
    _drive(own, 3)
    assert own.stopped is None and own.summary()["baseline_general"] == 0.58 and own.summary()["warned"] == []
    assert own.summary()["baseline_from"] == "step 0"


def test_a_stage_that_starts_past_the_chain_limit_warns_and_has_nothing_to_keep(capsys):
    guard = ScriptedScores([0.40, 0.30], chain=ChainBaseline(0.60, "step 0 of runs/align"))
    _drive(guard, 2)
    assert guard.stopped is None
    assert "there are no weights to keep; training goes on" in capsys.readouterr().out
    assert [(w["step"], round(w["drop"], 2)) for w in guard.summary()["warned"]] == [(0, 0.2), (1, 0.3), (2, 0.3)]


def test_the_chain_baseline_is_taken_only_from_a_run_that_probed_the_same_items(tmp_path):
    probe = load_recipe(None, [f"sft.probe.data={tmp_path}", "sft.probe.items=60",
                               "sft.probe.general_drop_limit=0.05"]).sft.probe
    same = {"baseline_general": 0.6, "baseline_from": "step 0", "probed": probe_identity(probe)}
    start = FinishedRun(tmp_path / "align", {"probe": same})
    assert chain_baseline(probe, start) == ChainBaseline(0.6, f"step 0 of {(tmp_path / 'align').resolve()}")
    inherited = FinishedRun(tmp_path / "mid", {"probe": {**same, "baseline_from": "step 0 of runs/align"}})
    assert chain_baseline(probe, inherited) == ChainBaseline(0.6, "step 0 of runs/align")
    other_items = FinishedRun(tmp_path / "align", {"probe": {**same, "probed": {**same["probed"], "items": 16}}})
    assert chain_baseline(probe, other_items) is None
    assert chain_baseline(probe, FinishedRun(tmp_path / "align", {})) is None
    assert chain_baseline(probe, None) is None
    assert chain_baseline(probe.model_copy(update={"baseline": "stage"}), start) is None


def test_guard_settings_that_guard_nothing_are_refused():
    with pytest.raises(ConfigError, match="on_general_drop: 'stop', but general_drop_limit is not set"):
        load_recipe(None, ["sft.probe.data=bench", "sft.probe.on_general_drop=stop"])
    with pytest.raises(ConfigError, match="general_drop_limit: set, but `general` is not among"):
        load_recipe(None, ["sft.probe.data=bench", "sft.probe.tasks=[deep-fashion]",
                           "sft.probe.general_drop_limit=0.1"])
    with pytest.raises(ConfigError, match="general_drop_limit"):
        load_recipe(None, ["sft.probe.data=bench", "sft.probe.general_drop_limit=5"])  # points, not a fraction
    chosen = load_recipe(None, ["sft.probe.data=bench", "sft.probe.general_drop_limit=0.05"])
    assert chosen.sft.probe.on_general_drop == "warn"


def test_missing_tracker_and_probe_task_are_refused_before_loading(catalog, tmp_path):
    with pytest.raises(ConfigError, match="mlflow"):
        run_stage("sft", recipe(catalog, "sft.train.report_to=[mlflow]"), tmp_path / "a")
    with pytest.raises(ConfigError, match="Unknown task"):
        run_stage("sft", recipe(catalog, f"sft.probe.data={catalog['bench']}", "sft.probe.tasks=[generl]"),
                  tmp_path / "b")
    with pytest.raises(ConfigError, match="eval_data"):
        recipe(catalog, "sft.eval_fraction=0.1", f"sft.eval_data={catalog['instruct']}")


def test_the_console_shows_progress_and_the_log_file_keeps_library_output(catalog, tmp_path):
    """`--verbose` (the libraries' own output on the terminal) is the default of the libraries, not tested here."""
    out = tmp_path / "sft"
    done = run_cli("sft", "--data", str(catalog["instruct"]), "--output", str(out),
                   *[f"--set={o}" for o in quick_overrides("sft", steps=2)], "--set", "sft.images.strategy=primary")
    assert done.returncode == 0, done.stderr[-2000:]
    terminal = done.stdout + done.stderr
    assert "Loading weights" not in terminal and "{'loss'" not in terminal
    assert "2/2" in terminal
    log = (out / "train.log").read_text()
    assert log.strip(), "library output went to the run's log file"
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2
