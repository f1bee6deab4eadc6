"""`ecomtune plan`'s memory estimate against the real tensors of a real-size QLoRA run, on a CPU.

The 2B-class real-size twin (`sized:qwen2-vl-2b`: Qwen2-VL-2B-Instruct's published dimensions, random weights,
its real processor) is loaded the way `ecomtune sft` loads it (bitsandbytes nf4 with double quantization, read
tensor by tensor from the twin's bfloat16 safetensors; PEFT LoRA on the language model; the projector trained in
full) and trained for two optimizer steps of the shipped recipe (`recipes/qwen2-vl.yaml`: r16 on q/k/v/o/gate/up/down,
max_pixels 512 x 28 x 28, max_length 2048, gradient checkpointing, paged 8-bit AdamW, TRL's token loss) on full-size
photos (1200 x 1600 by default), through ecomtune's own trainer setup. Changed for a CPU: float32 compute (a CPU
trains in float32; the planner is asked for float32 too), no gradient accumulation and the batch size of
`--batch` (the recipe's 16 x 2 samples per step would take an hour).

Static parts, compared with the bytes of the tensors themselves after step 2 (the planner must agree within 2%):
- 4-bit weights: every bitsandbytes Linear4bit's packed weight plus its quantization state (absmax, the nested
  absmax and code tables);
- the rest of the base per component (embeddings and norms, vision tower), the projector (PEFT's trained copy and
  the frozen original), LoRA parameters;
- gradients: every gradient tensor alive just before the optimizer step;
- optimizer state: every tensor the optimizer holds after step 2.
Activations: the planner's formula for the batch step 2 really trained (its padded positions and image tokens)
against the peak of resident memory during step 2 above the resident memory at its start (Linux VmHWM, reset at
the step's start). The process runs with a fixed malloc mmap threshold (64 KiB), so every large tensor is its own
mapping and a freed one leaves the resident set at once; what the peak still holds beyond the formula (dequantized
4-bit weights, the vision tower's transient forward, allocator slack) is said in the output.

    nice -n 10 flock /tmp/ecomtune-heavy.lock .venv/bin/python benchmarks/planner_check.py

It writes ~4.4 GB of random weights once (ECOMTUNE_CACHE/sized), needs ~8 GB of RAM and takes minutes. Nothing here
passes or fails a test; it measures and prints (and exits 1 when a static part is off by more than 2%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
MMAP_THRESHOLD = "65536"


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def four_bit_bytes(model) -> tuple[int, int]:
    """(bytes, parameters) of every 4-bit layer: packed weight plus its quantization state."""
    import bitsandbytes as bnb

    total = params = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            state = weight.quant_state
            total += tensor_bytes(weight.data) + tensor_bytes(state.absmax) + tensor_bytes(state.code)
            if state.nested:
                total += tensor_bytes(state.state2.absmax) + tensor_bytes(state.state2.code)
            params += module.in_features * module.out_features
    return total, params


def static_bytes(model, roles, optimizer) -> dict[str, float]:
    """The bytes of the loaded model's tensors, split as the planner splits them."""
    parts = {"lm_linear": 0, "lm_rest": 0, "vision": 0, "projector": 0, "lora": 0}
    parts["lm_linear"], _ = four_bit_bytes(model)
    for name, param in model.named_parameters():
        if type(param).__name__ == "Params4bit":
            continue
        role = roles.component_of(name)
        key = {"language_model": "lm_rest", "vision_tower": "vision", "projector": "projector", "lora": "lora"}[role]
        parts[key] += tensor_bytes(param)
    inner = getattr(optimizer, "optimizer", optimizer)
    parts["optimizer"] = sum(tensor_bytes(v) for state in inner.state.values() for v in state.values()
                             if hasattr(v, "element_size"))
    return parts


def make_measuring_callback():
    import torch
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        """Gradient bytes before each optimizer step; the resident peak of the profiled step."""

        def __init__(self, profiled_step: int) -> None:
            self.profiled_step = profiled_step
            self.gradients: list[int] = []
            self.baseline = self.peak = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == self.profiled_step:
                Path("/proc/self/clear_refs").write_text("5")
                self.baseline = rss_now()

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.gradients.append(sum(tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.profiled_step:
                self.peak = rss_peak()

    del torch
    return Measure


def attach_batch_record(trainer, image_token_id: int) -> list[dict[str, int]]:
    """Record the shape of every batch the trainer trains on (positions, rows, image tokens, vision patches)."""
    batches: list[dict[str, int]] = []
    step = trainer.training_step

    def recorded(model, inputs, *args, **kwargs):
        ids = inputs["input_ids"]
        batches.append({"rows": int(ids.shape[0]), "positions": int(ids.numel()),
                        "image_tokens": int((ids == image_token_id).sum()),
                        "patches": int(inputs["pixel_values"].shape[0]) if "pixel_values" in inputs else 0})
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = recorded
    return batches


def run(args) -> dict[str, Any]:
    from dataclasses import replace

    import torch
    from realsize_data import full_size_data

    from ecomtune.backbones.model_loading import pick_compute_dtype
    from ecomtune.config.command_options import photo_size
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.memory import GIB, ModelShape, TrainShape, estimate, weight_parts
    from ecomtune.train.plan import plan_stage
    from ecomtune.train.preparation import prepare_stage
    from ecomtune.train.stage_units import stage_unit
    from ecomtune.train.trl_bridge import build_trainer, training_data

    torch.manual_seed(0)
    photo = photo_size(args.photo)
    data = full_size_data(Path(args.work), photo, items=args.items, max_images=1)
    sets = [f"backbone.name={args.backbone}", f"sft.data={data}", f"sft.train.max_steps={args.steps}",
            f"sft.train.save_steps={args.steps}", "sft.train.grad_accum=1", f"sft.train.batch_size={args.batch}",
            "sft.train.logging_steps=1", "sft.train.dataloader_workers=0", "sft.quant.compute_dtype=float32",
            "sft.on_overlong=drop", *args.set]
    recipe = load_recipe(REPO / "recipes" / "qwen2-vl.yaml", sets)
    stage = recipe.sft
    report = plan_stage(recipe, "sft")
    shape = ModelShape(**report["memory"]["model"])
    planned = TrainShape(**report["memory"]["step"])
    prepared = prepare_stage(recipe, stage, "sft")
    model, roles, _ = stage_unit("sft").build(recipe, prepared.backbone, None, False)
    dataset = training_data(model, prepared.processor, prepared.samples, stage.train, stage.max_length,
                            prepared.backbone.spec.conversation)
    measure = make_measuring_callback()(profiled_step=args.steps)
    with tempfile.TemporaryDirectory(prefix="ecomtune-planner-check-") as output:
        trainer = build_trainer(model, prepared.processor, dataset, stage.train, Path(output),
                                pick_compute_dtype(stage.quant.compute_dtype), [measure])
        batches = attach_batch_record(trainer, model.config.image_token_id)
        trainer.train()
        measured = static_bytes(model, roles, trainer.optimizer)
    planned_parts = weight_parts(shape, planned)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    terms = estimate(shape, planned)
    rows = [(name, planned_parts[name], measured[name]) for name in planned_parts]
    rows += [("gradients", terms["gradients"], max(measure.gradients)), ("optimizer", terms["optimizer"],
                                                                         measured["optimizer"])]
    last = batches[-1]
    step_shape = replace(planned, batch_size=last["rows"], seq_len=last["positions"] // last["rows"],
                         image_tokens=last["image_tokens"])
    at_step = estimate(shape, step_shape)
    transient_planned = at_step["activations"] + at_step["logits"] + at_step["vision"] + at_step["gradients"]
    return {"rows": rows, "trainable": trainable, "planned_trainable": planned.lora_params + shape.projector,
            "batch": last, "transient_measured": measure.peak - measure.baseline,
            "transient_planned": transient_planned, "activation_terms": {k: at_step[k] for k in (
                "activations", "logits", "vision", "gradients")}, "baseline_rss": measure.baseline,
            "gib": GIB, "steps": args.steps, "photo": photo, "backbone": args.backbone, "data": str(data),
            "plan_total": terms["total"], "image_tokens_per_photo": report["image_tokens"]["max"]}


def print_result(result: dict[str, Any]) -> bool:
    gib = result["gib"]
    print(f"\n{result['backbone']}: {result['steps']} QLoRA sft steps of recipes/qwen2-vl.yaml on "
          f"{result['photo'][0]}x{result['photo'][1]} photos ({result['image_tokens_per_photo']} image tokens "
          f"each), CPU float32")
    print(f"trainable parameters: planned {result['planned_trainable']:,}, model {result['trainable']:,}")
    print("\n| part | planner (GiB) | measured (GiB) | planner / measured |\n|---|---:|---:|---:|")
    ok = True
    for name, planned, measured in result["rows"]:
        ratio = planned / measured if measured else float("nan")
        ok &= abs(ratio - 1) <= 0.02
        print(f"| {name} | {planned / gib:.4f} | {measured / gib:.4f} | {ratio:.4f} |")
    batch = result["batch"]
    print(f"\nactivation step: {batch['rows']} row(s) x {batch['positions'] // batch['rows']} positions, "
          f"{batch['image_tokens']} image tokens ({batch['patches']} vision patches)")
    terms = ", ".join(f"{k} {v / gib:.3f}" for k, v in result["activation_terms"].items())
    print(f"planner, transient part of that step (GiB): {terms}; sum {result['transient_planned'] / gib:.3f}")
    print(f"measured: resident peak during the step above its start {result['transient_measured'] / gib:.3f} GiB "
          f"(resident at the start {result['baseline_rss'] / gib:.2f} GiB); planner / measured "
          f"{result['transient_planned'] / max(result['transient_measured'], 1):.2f}")
    print("static parts within 2%: " + ("yes" if ok else "NO"))
    return ok


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # see the module docstring
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sized:qwen2-vl-2b")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="samples per step (the recipe has 2)")
    parser.add_argument("--photo", default="1200x1600")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ecomtune-realsize"))
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides KEY=VALUE")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    result = run(args)
    ok = print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
