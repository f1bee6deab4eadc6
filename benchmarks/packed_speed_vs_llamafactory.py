"""Packed QLoRA training speed: ecomtune's packing against LLaMA-Factory 0.9.5's `neat_packing`, same model, same data.

Both sides train the tiny Qwen2-VL that ecomtune builds locally (`tiny-qwen2-vl`: a real
`Qwen2VLForConditionalGeneration` with random weights, its real processor and a Qwen-style chat template) on the
same synthetic catalog (`ecomtune synth --items N`: ~265 single-turn samples with 1 to 8 images each for 48 items;
LLaMA-Factory gets the same records as a sharegpt dataset with `<image>` placeholders). Same settings on both sides:
bitsandbytes nf4 base (double quantization), LoRA r16 / alpha 32 / dropout 0 on the language model's
q/k/v/o/gate/up/down projections, vision tower and projector frozen, samples packed into rows of up to
`--max-length` tokens where each sample attends only to itself, 8 rows per step, no gradient accumulation, no
gradient checkpointing, AdamW, cosine schedule and learning rate of the shipped tiny recipe, the same seed, CPU,
float32. ecomtune keeps the recipe's own loss (`loss_average: sample`; LLaMA-Factory: token mean) unless told
otherwise (`--ecomtune-set sft.train.loss_average=token`). Each run is a fresh process; the rounds interleave the two
(LLaMA-Factory, ecomtune, LLaMA-Factory, ...) so drift in the machine's speed hits both alike.

What is measured, on both sides the same way:
- useful tokens: the real (non-padding) sample tokens of every batch the trainer trained on, counted just before each
  training step (LLaMA-Factory: the diagonal of its block-diagonal 4-D attention mask, which masks padding entirely;
  ecomtune: `packed_segments` >= 0, the collator's sample index per token, -1 on padding);
- time, three ways, all inside transformers' training loop (model loading, reading, tokenising and packing the
  data come before it on both sides): "steps 1..N", from the trainer's train-begin callback to the end of the last
  step; "steps 2..N", from the end of step 1 to the end of step N with the batches of steps 2..N (the first step is
  a warm-up); and the Trainer's own `train_runtime`, which on the ecomtune side also holds one checkpoint saved at
  the last step (ecomtune refuses `save_steps` > `max_steps`; LLaMA-Factory runs with `save_strategy: no`);
- where the time goes: seconds inside the data collator (LLaMA-Factory: image processing, per-sample mRoPE
  positions, padding, the 4-D mask; ecomtune: chat template, tokenising, image processing, mRoPE positions,
  packing) and inside `training_step` (forward + backward); the rest is mostly the optimizer step.
The ratio is ecomtune / LLaMA-Factory (above 1: ecomtune trains more useful tokens per second). Nothing here passes
or fails: it measures and prints.

Reproduce (LLaMA-Factory in its own virtualenv: it pins transformers<=5.6, peft<=0.18.1, trl<=0.24, datasets<=4):

    flock /tmp/ecomtune-heavy.lock python3 -m venv /tmp/lf-venv
    flock /tmp/ecomtune-heavy.lock /tmp/lf-venv/bin/pip install llamafactory==0.9.5 torch==2.14.1 \\
        torchvision==0.29.1 bitsandbytes==0.50.2
    flock /tmp/ecomtune-heavy.lock .venv/bin/python benchmarks/packed_speed_vs_llamafactory.py --rounds 5

torch and bitsandbytes are pinned to the versions ecomtune's .venv has, so both sides run the same kernels.
Options: --rounds, --steps, --items, --llamafactory-python, --work (keep the data, configs and logs there),
--ecomtune-set KEY=VALUE and --lf-set KEY=VALUE (extra settings for one side; ecomtune's recipe keys, LLaMA-Factory's
YAML keys).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny-qwen2-vl.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DATASET = "ecomtune_instruct"

# Run with LLaMA-Factory's python: `lf_runner.py config.yaml result.json`. It trains through
# `llamafactory.train.tuner.run_exp`, counting every batch just before its training step.
LF_RUNNER = r'''
import json
import sys
import time

import torch
import yaml
from transformers import TrainerCallback

from llamafactory.data import collator as lf_collator
from llamafactory.train.sft import trainer as lf_trainer
from llamafactory.train.sft import workflow as lf_workflow
from llamafactory.train.tuner import run_exp

config_path, result_path = sys.argv[1], sys.argv[2]
with open(config_path, encoding="utf-8") as handle:
    config = yaml.safe_load(handle)

batches = []  # (samples, useful tokens, positions) per trained batch
timers = {"collate_s": 0.0, "step_s": 0.0}
epoch = {}
logs = {}


def count(inputs):
    """(samples, useful tokens, positions) of one batch. neat_packing on sdpa/eager: a [B, 1, L, L] mask where a
    token sees itself unless it is padding, and a sample starts where a real token cannot see the one before it."""
    mask = inputs.get("attention_mask")
    ids = inputs["input_ids"]
    if mask is None:  # flash-attention varlen: padding already removed
        return int(ids.shape[0]), int(ids.numel()), int(ids.numel())
    if mask.dim() == 4:
        real = mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0
        cut = mask[:, 0].diagonal(offset=-1, dim1=-2, dim2=-1) != 0
        starts = int(real[:, 0].sum()) + int((real[:, 1:] & cut).sum())
        return starts, int(real.sum()), int(ids.numel())
    samples = sum(len(set(row[row != 0].tolist())) for row in mask)
    return samples, int((mask != 0).sum()), int(ids.numel())


collate = lf_collator.SFTDataCollatorWith4DAttentionMask.__call__


def timed_collate(self, features):
    start = time.perf_counter()
    try:
        return collate(self, features)
    finally:
        timers["collate_s"] += time.perf_counter() - start


lf_collator.SFTDataCollatorWith4DAttentionMask.__call__ = timed_collate
training_step = lf_trainer.CustomSeq2SeqTrainer.training_step


def counted_step(self, model, inputs, *args, **kwargs):
    batches.append(count(inputs))
    start = time.perf_counter()
    try:
        return training_step(self, model, inputs, *args, **kwargs)
    finally:
        timers["step_s"] += time.perf_counter() - start


lf_trainer.CustomSeq2SeqTrainer.training_step = counted_step
get_dataset = lf_workflow.get_dataset


def measured_dataset(*args, **kwargs):
    """The packed training rows as LLaMA-Factory made them: one epoch's samples and real tokens."""
    module = get_dataset(*args, **kwargs)
    masks = module["train_dataset"]["attention_mask"]
    epoch.update(rows=len(masks), samples=sum(len({v for v in m if v}) for m in masks),
                 tokens=sum(sum(1 for v in m if v) for m in masks))
    return module


lf_workflow.get_dataset = measured_dataset


class Clock(TrainerCallback):
    def __init__(self):
        self.begin, self.ends, self.saves, self.attention = None, [], [], ""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.attention = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_save(self, args, state, control, **kwargs):
        self.saves.append(time.perf_counter() - self.ends[-1])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_runtime" in logs:
            globals()["logs"].update(logs)


clock = Clock()
run_exp(config, callbacks=[clock])
with open(result_path, "w", encoding="utf-8") as handle:
    json.dump({"train_runtime": logs.get("train_runtime"), "global_step": len(clock.ends), "batches": batches,
               "step_ends": clock.ends, "train_begin": clock.begin, "save_s": sum(clock.saves),
               "epoch": epoch, **timers, "attention": clock.attention, "torch": torch.__version__}, handle)
'''


def make_data(folder: Path, items: int) -> Path:
    """The synthetic catalog (`ecomtune synth`), once per benchmark: returns its instruct.jsonl."""
    data = folder / "instruct.jsonl"
    if not data.is_file():
        subprocess.run([sys.executable, "-m", "ecomtune", "synth", "--out", str(folder), "--items", str(items)],
                       check=True, stdout=subprocess.DEVNULL)
    return data


def to_llamafactory(data: Path, folder: Path) -> int:
    """The same records as a LLaMA-Factory sharegpt dataset (`messages` with `<image>` placeholders where the images
    stand, absolute image paths) registered in `folder/dataset_info.json`. Returns the record count."""
    records = []
    for line in data.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        messages = []
        for message in record["messages"]:
            content = message["content"]
            if not isinstance(content, str):
                content = "".join("<image>" if part["type"] == "image" else part.get("text", "") for part in content)
            messages.append({"role": message["role"], "content": content})
        records.append({"messages": messages, "images": [str((data.parent / p).resolve()) for p in record["images"]]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instruct.json").write_text(json.dumps(records), encoding="utf-8")
    info = {DATASET: {"file_name": "instruct.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant", "system_tag": "system"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return len(records)


def recipe_settings() -> dict[str, Any]:
    """The shipped tiny recipe's sft settings that LLaMA-Factory is given too."""
    from ecomtune.config.recipe_files import load_recipe

    return load_recipe(RECIPE).sft.model_dump(mode="json")


def lf_config(args: argparse.Namespace, model: str, dataset_dir: Path, output: Path) -> dict[str, Any]:
    sft = recipe_settings()
    config: dict[str, Any] = {
        "model_name_or_path": model, "trust_remote_code": True, "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": args.lora_r, "lora_alpha": sft["lora"]["alpha"],
        "lora_dropout": sft["lora"]["dropout"], "lora_target": ",".join(LORA_TARGETS),
        "freeze_vision_tower": True, "freeze_multi_modal_projector": True,
        "quantization_bit": 4, "quantization_method": "bnb", "quantization_type": "nf4", "double_quantization": True,
        "dataset": DATASET, "dataset_dir": str(dataset_dir), "template": "qwen2_vl", "cutoff_len": args.max_length,
        "packing": True, "neat_packing": True, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0, "output_dir": str(output), "logging_steps": 10 * args.steps,
        "save_strategy": "no", "report_to": "none", "plot_loss": False,
        "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": 1, "max_steps": args.steps,
        "learning_rate": sft["train"]["learning_rate"], "lr_scheduler_type": sft["train"]["lr_scheduler"],
        "warmup_ratio": sft["train"]["warmup_ratio"], "weight_decay": sft["train"]["weight_decay"],
        "max_grad_norm": sft["train"]["max_grad_norm"], "optim": sft["train"]["optimizer"],
        "disable_gradient_checkpointing": not sft["train"]["gradient_checkpointing"],
        "bf16": False, "fp16": False, "seed": args.seed, "data_seed": args.seed,
    }
    for item in args.lf_set:
        import yaml

        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    return config


def ecomtune_sets(args: argparse.Namespace) -> list[str]:
    return ["sft.packing=true", f"sft.max_length={args.max_length}", f"sft.train.max_steps={args.steps}",
            f"sft.train.batch_size={args.batch_size}", "sft.train.grad_accum=1", f"sft.lora.r={args.lora_r}",
            f"sft.lora.targets=[{','.join(LORA_TARGETS)}]", "sft.projector=frozen", "sft.vision=frozen",
            f"sft.train.seed={args.seed}", f"sft.train.save_steps={args.steps}",
            f"sft.train.logging_steps={10 * args.steps}", "sft.train.dataloader_workers=0", *args.ecomtune_set]


def ecomtune_side(spec: dict[str, Any]) -> dict[str, Any]:
    """One ecomtune sft run in this process (the hidden `--side ecomtune`), counted like LLaMA-Factory's."""
    import torch
    from transformers import TrainerCallback

    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.data.batches.packing import PackedCollator
    from ecomtune.train import preparation, stages

    recipe = load_recipe(RECIPE, spec["sets"], {"sft.data": Path(spec["data"])})
    drop_segments = recipe.sft.train.loss_average != "sample"  # token-mean loss: segments only for counting
    batches: list[tuple[int, int, int]] = []
    timers = {"collate_s": 0.0, "step_s": 0.0}
    epoch: dict[str, int] = {}

    training_data = preparation.training_data

    def with_segments(*args: Any, **kwargs: Any):
        return training_data(*args, **{**kwargs, "segments": True})

    prepare_stage = stages.prepare_stage

    def measured(*args: Any, **kwargs: Any):
        prepared = prepare_stage(*args, **kwargs)
        epoch.update(rows=len(prepared.packs or prepared.samples), samples=len(prepared.samples),
                     tokens=sum(prepared.lengths))
        return prepared

    collate = PackedCollator.__call__

    def timed_collate(self, rows):
        start = time.perf_counter()
        try:
            return collate(self, rows)
        finally:
            timers["collate_s"] += time.perf_counter() - start

    build_trainer = stages.build_trainer

    def counting_trainer(*args: Any, **kwargs: Any):
        trainer = build_trainer(*args, **kwargs)
        step = trainer.training_step

        def counted(model, inputs, *rest, **named):
            segments = inputs["packed_segments"]
            samples = sum(len(set(row[row >= 0].tolist())) for row in segments)
            batches.append((samples, int((segments >= 0).sum()), int(inputs["input_ids"].numel())))
            if drop_segments:
                inputs.pop("packed_segments")
            start = time.perf_counter()
            try:
                return step(model, inputs, *rest, **named)
            finally:
                timers["step_s"] += time.perf_counter() - start

        trainer.training_step = counted
        return trainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.begin, self.ends, self.saves = 0.0, [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_save(self, args, state, control, **kwargs):
            self.saves.append(time.perf_counter() - self.ends[-1])

    preparation.training_data, stages.prepare_stage, stages.build_trainer = with_segments, measured, counting_trainer
    PackedCollator.__call__ = timed_collate
    clock = Clock()
    result = stages.run_sft(recipe, Path(spec["output"]), callbacks=[clock])
    metrics = result.manifest["metrics"]
    packing = result.manifest["data"]["tokens"].get("packing", {})
    return {"train_runtime": metrics["train_runtime"], "global_step": metrics["global_step"], "batches": batches,
            "step_ends": clock.ends, "train_begin": clock.begin, "save_s": sum(clock.saves), "epoch": epoch, **timers,
            "attention": packing.get("attention", ""),
            "torch": torch.__version__}


def run_side(side: str, round_index: int, args: argparse.Namespace, work: Path, model: str, data: Path) -> dict:
    """One run in a fresh process; its log in work/logs, its figures as a dict."""
    output = work / "runs" / f"{side}-{round_index}"
    result = work / "results" / f"{side}-{round_index}.json"
    log = work / "logs" / f"{side}-{round_index}.log"
    for folder in (result.parent, log.parent, output.parent):
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false"}
    if side == "llamafactory":
        config = work / "lf" / f"config-{round_index}.yaml"
        import yaml

        config.write_text(yaml.safe_dump(lf_config(args, model, work / "lf", output)), encoding="utf-8")
        runner = work / "lf" / "lf_runner.py"
        runner.write_text(LF_RUNNER, encoding="utf-8")
        command = [args.llamafactory_python, str(runner), str(config), str(result)]
    else:
        spec = {"sets": ecomtune_sets(args), "data": str(data), "output": str(output), "result": str(result)}
        command = [sys.executable, str(Path(__file__).resolve()), "--side-spec", json.dumps(spec)]
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work).returncode
    if code != 0 or not result.is_file():
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise SystemExit(f"{side} run {round_index} failed (exit {code}); last lines of {log}:\n{tail}")
    figures = summarise(json.loads(result.read_text(encoding="utf-8")))
    figures["wall_s"] = time.perf_counter() - started
    return figures


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Useful tokens per second three ways: over the loop (train begin to the end of the last step: every step, no
    final checkpoint), over steps 2..N (the first step is a warm-up), and over transformers' train_runtime (which
    also holds a checkpoint saved at the last step: ecomtune refuses save_steps > max_steps)."""
    batches, ends = raw["batches"], raw["step_ends"]
    samples, useful, positions = (sum(b[i] for b in batches) for i in range(3))
    later = batches[1:len(ends)]
    loop_s = ends[-1] - raw["train_begin"] if ends else 0.0
    steady_s = ends[-1] - ends[0] if len(ends) > 1 else 0.0
    runtime = float(raw["train_runtime"])
    return {"steps": raw["global_step"], "samples": samples, "useful": useful, "positions": positions,
            "runtime_s": runtime, "loop_s": loop_s, "save_s": raw["save_s"],
            "loop_tok_s": useful / loop_s if loop_s else 0.0,
            "steady_tok_s": sum(b[1] for b in later) / steady_s if steady_s else 0.0,
            "runtime_tok_s": useful / runtime if runtime else 0.0,
            "collate_s": raw["collate_s"], "step_s": raw["step_s"], "epoch": raw["epoch"],
            "attention": raw.get("attention", ""), "torch": raw.get("torch", "")}


FIGURES = ("loop_tok_s", "steady_tok_s", "runtime_tok_s")


def report_round(label: str, lf: dict[str, float], ours: dict[str, float]) -> None:
    cells = [f"{lf[key]:>8.0f} {ours[key]:>8.0f} {ours[key + '_ratio']:>5.2f}" for key in FIGURES]
    print(f"{label:>6}  " + "   ".join(cells), flush=True)


def report_sides(results: dict[str, list[dict[str, Any]]]) -> None:
    print("\nper side (first run's counts; times are medians over the rounds):")
    for side, runs in results.items():
        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        first = runs[0]
        steps = first["steps"]
        padding = 1 - first["useful"] / first["positions"] if first["positions"] else 0.0
        loop, collate, step = median("loop_s"), median("collate_s"), median("step_s")
        print(f"  {side}: {steps} steps, {first['useful']} useful tokens ({first['useful'] / steps:.0f}/step), "
              f"{first['samples']} samples ({first['samples'] / steps:.1f}/step), padding {padding:.1%} of "
              f"{first['positions']} positions; one epoch packed: {first['epoch']}")
        print(f"    loop {loop:.1f}s = collator {collate:.1f}s ({collate / loop:.0%}) + training_step "
              f"(forward+backward) {step:.1f}s ({step / loop:.0%}) + rest (optimizer, scheduler, loop) "
              f"{loop - collate - step:.1f}s; train_runtime {median('runtime_s'):.1f}s (checkpoint saves "
              f"{median('save_s'):.1f}s); process wall {median('wall_s'):.0f}s; attention {first['attention'] or '?'}, "
              f"torch {first['torch']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (one run of each side per round).")
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps per run.")
    parser.add_argument("--items", type=int, default=48, help="Catalog items for `ecomtune synth` (48: ~265 samples).")
    parser.add_argument("--batch-size", type=int, default=8, help="Packed rows per step.")
    parser.add_argument("--max-length", type=int, default=640, help="Tokens per packed row (LLaMA-Factory cutoff_len).")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--llamafactory-python", default="/tmp/lf-venv/bin/python",
                        help="Python of the virtualenv LLaMA-Factory 0.9.5 is installed in.")
    parser.add_argument("--work", type=Path, default=None, help="Folder for data, configs, runs and logs (kept); "
                        "default: a temporary folder, removed at the end.")
    parser.add_argument("--ecomtune-set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra recipe override for the ecomtune side.")
    parser.add_argument("--lf-set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra LLaMA-Factory setting (YAML value).")
    parser.add_argument("--side-spec", default=None, help=argparse.SUPPRESS)  # internal: one ecomtune run
    args = parser.parse_args()
    if args.side_spec is not None:
        spec = json.loads(args.side_spec)
        Path(spec["result"]).write_text(json.dumps(ecomtune_side(spec)), encoding="utf-8")
        return
    if not Path(args.llamafactory_python).is_file():
        raise SystemExit(f"{args.llamafactory_python} not found: install LLaMA-Factory first (see this file's "
                         "docstring) or pass --llamafactory-python")
    with tempfile.TemporaryDirectory(prefix="ecomtune-vs-lf-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.config.recipe_files import load_recipe

    backbone = load_recipe(RECIPE).backbone
    model = resolve_backbone(backbone.name, backbone.seed, backbone.revision).source
    data = make_data(work / "data", args.items)
    records = to_llamafactory(data, work / "lf")
    print(f"tiny Qwen2-VL {model}; {records} samples ({args.items} items); nf4 + LoRA r{args.lora_r} on the language "
          f"model; {args.batch_size} rows x {args.max_length} tokens per step; {args.steps} steps; "
          f"{args.rounds} rounds; work folder {work}", flush=True)
    print("useful (non-padding) tokens per second; ratio = ecomtune / LLaMA-Factory", flush=True)
    print(f"{'':>6}  {'steps 1..N (loop)':^23}   {'steps 2..N':^23}   {'train_runtime':^23}")
    print(f"{'round':>6}  " + "   ".join([f"{'LF':>8} {'ecomtune':>8} {'ratio':>5}"] * 3), flush=True)
    results: dict[str, list[dict[str, Any]]] = {"LLaMA-Factory": [], "ecomtune": []}
    for index in range(1, args.rounds + 1):
        lf = run_side("llamafactory", index, args, work, model, data)
        ours = run_side("ecomtune", index, args, work, model, data)
        for key in FIGURES:
            ours[key + "_ratio"] = ours[key] / lf[key] if lf[key] else 0.0
        results["LLaMA-Factory"].append(lf)
        results["ecomtune"].append(ours)
        report_round(str(index), lf, ours)
    median = statistics.median
    lf_median = {key: median(r[key] for r in results["LLaMA-Factory"]) for key in FIGURES}
    our_median = {key: median(r[key] for r in results["ecomtune"]) for key in FIGURES}
    our_median.update({key + "_ratio": median(r[key + "_ratio"] for r in results["ecomtune"]) for key in FIGURES})
    report_round("median", lf_median, our_median)
    print("(the median ratio is the median of the per-round ratios)")
    report_sides(results)


if __name__ == "__main__":
    main()
