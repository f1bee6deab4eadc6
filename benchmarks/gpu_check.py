"""Peak GPU memory and speed of real-size QLoRA sft beside `ecomtune plan`'s estimate, with no download.

On a GPU: the 7B-class real-size twin (`sized:qwen2.5-vl-7b`: Qwen2.5-VL-7B-Instruct's published dimensions, its
real processor, seeded random weights written on the machine and read back in nf4) trains `--steps` (20) optimizer
steps of the shipped recipe (`recipes/qwen2.5-vl.yaml`: LoRA r16, projector in full, max_pixels 512 x 28 x 28,
max_length 2048, gradient checkpointing, paged 8-bit AdamW, batch 2) on full-size photos (1200 x 1600), three ways:
TRL's default vision collator, ecomtune with packing off, and ecomtune with packing on. Each way runs in a Python
process of its own (the script starts itself once per way, with `--modes` set to that way, and prints one table
from what they write), so each peak is that run's alone, not what an earlier run left in the allocator. Gradient
accumulation is 1, so 20 steps are 40 rows; the peak per step is the same as with the recipe's 16. For each: useful
tokens/s over steps 2..N, padding, torch's peak allocated GPU memory and `ecomtune plan`'s estimate of the same run
(packed rows for the packed run), and their ratio. The bar is the estimate within 10% of the measured peak.

Without a GPU it runs the same on a CPU at 2B size (`sized:qwen2-vl-2b`, recipes/qwen2-vl.yaml) with 2 steps of
1 sample (or packed row), float32, and, to keep it under half an hour on two cores, photos at 256 x 28 x 28 pixels
at most (256 image tokens) and rows of 1024 tokens: the peak is then the process's resident set (it holds the
model and the data; a fixed malloc mmap threshold hands freed tensors back at once), shown beside the estimate for
reference only.

On a machine with no network, ecomtune's own dependencies and the wheels of trl, datasets and bitsandbytes must be
installed first, e.g.:

    pip install --no-index --find-links wheels/ trl datasets bitsandbytes
    python benchmarks/gpu_check.py            # not yet timed on a GPU: 16.6 GB of weights written once, three
                                              # 4-bit loads of the 7B, 3 x 20 steps

    nice -n 10 flock /tmp/ecomtune-heavy.lock .venv/bin/python benchmarks/gpu_check.py   # CPU: 11 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

GPU = {"backbone": "sized:qwen2.5-vl-7b", "recipe": "qwen2.5-vl.yaml", "steps": 20, "batch": 2, "items": 24,
       "max_images": 2, "sets": []}
# A CPU step of the 2B at 512 image tokens takes minutes: 256 per photo and rows of 1024 keep it under half an hour.
CPU = {"backbone": "sized:qwen2-vl-2b", "recipe": "qwen2-vl.yaml", "steps": 2, "batch": 1, "items": 8,
       "max_images": 1, "sets": ["sft.max_length=1024", "backbone.resolution.max_pixels=200704",
                                 "backbone.resolution.min_pixels=100352"]}
MODES = ("trl", "rows", "packed")
MMAP_THRESHOLD = "65536"  # bytes
# Handed on to every run's process; the device-dependent ones only when given (each run picks GPU or CPU defaults).
PASSED_ON = ("backbone", "recipe", "steps", "batch", "items", "max_images", "photo", "work")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help=f"default {GPU['backbone']} on a GPU, {CPU['backbone']} on a CPU")
    parser.add_argument("--recipe", help=f"default recipes/{GPU['recipe']} on a GPU, recipes/{CPU['recipe']} on a CPU")
    parser.add_argument("--steps", type=int, help=f"default {GPU['steps']} on a GPU, {CPU['steps']} on a CPU")
    parser.add_argument("--batch", type=int, help=f"default {GPU['batch']} on a GPU, {CPU['batch']} on a CPU")
    parser.add_argument("--items", type=int, help=f"catalog items; default {GPU['items']} on a GPU, "
                                                  f"{CPU['items']} on a CPU")
    parser.add_argument("--max-images", type=int, help=f"photos per sample at most; default {GPU['max_images']} "
                                                       f"on a GPU, {CPU['max_images']} on a CPU")
    parser.add_argument("--photo", default="1200x1600")
    parser.add_argument("--modes", default=",".join(MODES), help="each runs in a fresh process of its own")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ecomtune-realsize"))
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides KEY=VALUE")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--one-process", action="store_true", help=argparse.SUPPRESS)  # a run's own process
    args = parser.parse_args()
    unknown = [m for m in args.modes.split(",") if m and m not in MODES]
    if unknown or not args.modes.strip(","):
        parser.error(f"--modes {args.modes}: choose among {', '.join(MODES)}")
    if args.one_process and not args.json:
        parser.error("--one-process writes its figures to --json")
    return args


def measure(args: argparse.Namespace) -> None:
    """Train the modes in this process and write what the table needs to `args.json` (no table printed)."""
    import torch
    from realsize_data import full_size_data

    from ecomtune.config.command_options import photo_size
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.memory import GIB
    from ecomtune.train.plan import plan_stage
    from ecomtune.train.profile import profile_recipe

    on_gpu = torch.cuda.is_available()
    defaults = GPU if on_gpu else CPU
    backbone, recipe_name, steps, batch, items, max_images = (
        defaults[name] if getattr(args, name) is None else getattr(args, name)
        for name in ("backbone", "recipe", "steps", "batch", "items", "max_images"))
    recipe_path = Path(args.recipe) if args.recipe else REPO / "recipes" / recipe_name
    photo = photo_size(args.photo)
    data = full_size_data(Path(args.work), photo, items=items, max_images=max_images)
    sets = [f"backbone.name={backbone}", f"sft.data={data}", "sft.train.grad_accum=1",
            f"sft.train.batch_size={batch}", "sft.train.dataloader_workers=0", "sft.on_overlong=drop",
            *([] if on_gpu else ["sft.quant.compute_dtype=float32"]), *defaults["sets"], *args.set]
    recipe = load_recipe(recipe_path, sets)
    modes = tuple(m for m in args.modes.split(",") if m)
    plans = {packed: plan_stage(load_recipe(recipe_path, [*sets, f"sft.packing={str(packed).lower()}"]))
             for packed in {False, "packed" in modes}}
    rows = profile_recipe(recipe, "sft", steps, modes=modes,
                          progress=lambda mode: print(f"training {mode} ...", flush=True))
    figures = [{**row.as_dict(), "planner_terms_gib": plans[row.mode == "packed"]["memory"]["terms_gib"]}
               for row in rows if row.steps]
    refused = [row.as_dict() for row in rows if not row.steps]
    Path(args.json).write_text(json.dumps({
        "device": torch.cuda.get_device_name(0) if on_gpu else "CPU (float32)", "on_gpu": on_gpu,
        "backbone": backbone, "recipe": recipe_path.name, "steps": steps, "batch": batch, "photo": list(photo),
        "max_images": max_images, "samples": plans[False]["samples"],
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3) if on_gpu else None,
        "rows": figures, "refused": refused}, indent=2))


def run_alone(args: argparse.Namespace, mode: str, out: Path) -> int:
    """One mode in a fresh Python process (this script again): its peaks are its own, not what an earlier run
    left in the allocator or in torch's counters. Returns the process's exit status."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one-process", "--modes", mode, "--json", str(out)]
    for name in PASSED_ON:
        if getattr(args, name) is not None:
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for override in args.set:
        command += ["--set", override]
    # A fixed malloc mmap threshold (as in planner_check.py) hands freed tensors back at once, so the resident set
    # measures what the run holds rather than what glibc keeps for reuse (on a CPU that was 8 GiB of the packed peak).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    return subprocess.run(command, check=False, env=env).returncode


def main() -> None:
    args = parse_args()
    if args.one_process:
        measure(args)
        return
    started = time.perf_counter()
    modes = [m for m in args.modes.split(",") if m]
    runs: dict[str, dict] = {}
    failed: dict[str, int] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ecomtune-gpu-check-") as folder:
        for mode in modes:
            out = Path(folder) / f"{mode}.json"
            mode_started = time.perf_counter()
            status = run_alone(args, mode, out)
            seconds[mode] = time.perf_counter() - mode_started
            if status or not out.is_file():
                failed[mode] = status
            else:
                runs[mode] = json.loads(out.read_text())
    if not runs:
        raise SystemExit(f"no run finished: {', '.join(f'{m} exit status {s}' for m, s in failed.items())}")
    first = next(iter(runs.values()))
    on_gpu = first["on_gpu"]
    print(f"\n{first['backbone']} on {first['device']}: {first['steps']} steps of {first['recipe']} per run, batch "
          f"{first['batch']}, {first['photo'][0]}x{first['photo'][1]} photos (at most {first['max_images']} per "
          f"sample), {first['samples']} samples; {time.perf_counter() - started:.0f} s in all ("
          + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()) + ", each in its own process)")
    peak_name = "peak GPU allocated (GiB)" if on_gpu else "peak resident set (GiB)"
    print(f"\n| run | tokens/s | padding | {peak_name} | planner total (GiB) | planner without overhead | "
          "planner / measured |\n|---|---:|---:|---:|---:|---:|---:|")
    figures = []
    for mode in modes:
        if mode in failed:
            print(f"| {mode} | - | - | - | - | - | failed: exit status {failed[mode]}, its output is above |")
            continue
        for row in runs[mode]["refused"]:
            print(f"| {row['label']} | - | - | - | - | - | {row['note']} |")
        for row in runs[mode]["rows"]:
            plan = row["planner_terms_gib"]
            measured = row["peak_gpu_gib"] if on_gpu else row["peak_rss_gib"]
            bare = plan["total"] - plan["overhead"]
            print(f"| {row['label']} | {row['tokens_per_s']:.1f} | {row['padding_fraction']:.1%} | {measured:.2f} | "
                  f"{plan['total']:.2f} | {bare:.2f} | {plan['total'] / measured:.2f} |")
            figures.append({**row, "process_s": round(seconds[mode], 1)})
    if on_gpu:
        print("\nthe bar: planner total within 10% of the measured peak (0.90 to 1.10); peak reserved "
              + ", ".join(f"{m} {r['peak_reserved_gib']:.2f}" for m, r in runs.items()) + " GiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": first["device"], "backbone": first["backbone"],
                                               "steps": first["steps"], "rows": figures}, indent=2))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
