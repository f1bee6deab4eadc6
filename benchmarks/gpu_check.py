"""Peak GPU memory and speed of real-size QLoRA sft beside `ecomtune plan`'s estimate, with no download.

On a GPU: the 7B-class real-size twin (`sized:qwen2.5-vl-7b`: Qwen2.5-VL-7B-Instruct's published dimensions, its
real processor, seeded random weights written on the machine and read back in nf4) trains `--steps` (20) optimizer
steps of the shipped recipe (`recipes/qwen2.5-vl.yaml`: LoRA r16, projector in full, max_pixels 512 x 28 x 28,
max_length 2048, gradient checkpointing, paged 8-bit AdamW, batch 2) on full-size photos (1200 x 1600), three ways,
each with a freshly loaded model (`ecomtune profile`'s runs): TRL's default vision collator, ecomtune with packing
off, and ecomtune with packing on. Gradient accumulation is 1, so 20 steps are 40 rows; the peak per step is the
same as with the recipe's 16. For each: useful tokens/s over steps 2..N, padding, torch's peak allocated GPU memory
and `ecomtune plan`'s estimate of the same run (packed rows for the packed run), and their ratio. The bar is the
estimate within 10% of the measured peak.

Without a GPU it runs the same on a CPU at 2B size (`sized:qwen2-vl-2b`, recipes/qwen2-vl.yaml) with 2 steps of
1 sample (or packed row), float32, and, to keep it near half an hour on two cores, photos at 256 x 28 x 28 pixels
at most (256 image tokens) and rows of 1024 tokens: the peak is then the process's resident set (it holds the
model and the data), shown beside the estimate for reference only.

On a machine with no network, ecomtune's own dependencies and the wheels of trl, datasets and bitsandbytes must be
installed first, e.g.:

    pip install --no-index --find-links wheels/ trl datasets bitsandbytes
    python benchmarks/gpu_check.py            # not yet timed on a GPU: 16.6 GB of weights written once, three
                                              # 4-bit loads of the 7B, 3 x 20 steps

    nice -n 10 flock /tmp/ecomtune-heavy.lock .venv/bin/python benchmarks/gpu_check.py   # CPU, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

GPU = {"backbone": "sized:qwen2.5-vl-7b", "recipe": "qwen2.5-vl.yaml", "steps": 20, "batch": 2, "items": 24,
       "max_images": 2, "sets": []}
# A CPU step of the 2B at 512 image tokens takes minutes: 256 per photo and rows of 1024 keep the run near half an hour.
CPU = {"backbone": "sized:qwen2-vl-2b", "recipe": "qwen2-vl.yaml", "steps": 2, "batch": 1, "items": 8,
       "max_images": 1, "sets": ["sft.max_length=1024", "backbone.resolution.max_pixels=200704",
                                 "backbone.resolution.min_pixels=100352"]}


def main() -> None:
    import torch

    on_gpu = torch.cuda.is_available()
    defaults = GPU if on_gpu else CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=defaults["backbone"])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / defaults["recipe"]))
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--batch", type=int, default=defaults["batch"])
    parser.add_argument("--items", type=int, default=defaults["items"])
    parser.add_argument("--max-images", type=int, default=defaults["max_images"], help="photos per sample at most")
    parser.add_argument("--photo", default="1200x1600")
    parser.add_argument("--modes", default="trl,rows,packed")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ecomtune-realsize"))
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides KEY=VALUE")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    from realsize_data import full_size_data

    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.memory import GIB
    from ecomtune.train.plan import plan_stage
    from ecomtune.train.profile import profile_recipe

    started = time.perf_counter()
    photo = tuple(int(v) for v in args.photo.lower().split("x"))
    data = full_size_data(Path(args.work), photo, items=args.items, max_images=args.max_images)
    sets = [f"backbone.name={args.backbone}", f"sft.data={data}", "sft.train.grad_accum=1",
            f"sft.train.batch_size={args.batch}", "sft.train.dataloader_workers=0", "sft.on_overlong=drop",
            *([] if on_gpu else ["sft.quant.compute_dtype=float32"]), *defaults["sets"], *args.set]
    recipe = load_recipe(Path(args.recipe), sets)
    plans = {packed: plan_stage(load_recipe(Path(args.recipe), [*sets, f"sft.packing={str(packed).lower()}"]))
             for packed in (False, True)}
    modes = tuple(m for m in args.modes.split(",") if m)
    rows = profile_recipe(recipe, "sft", args.steps, modes=modes,
                          progress=lambda mode: print(f"training {mode} ...", flush=True))
    device = torch.cuda.get_device_name(0) if on_gpu else "CPU (float32)"
    print(f"\n{args.backbone} on {device}: {args.steps} steps of {Path(args.recipe).name} per run, batch "
          f"{args.batch}, {photo[0]}x{photo[1]} photos (at most {args.max_images} per sample), "
          f"{plans[False]['samples']} samples; {time.perf_counter() - started:.0f} s in all")
    peak_name = "peak GPU allocated (GiB)" if on_gpu else "peak resident set (GiB)"
    print(f"\n| run | tokens/s | padding | {peak_name} | planner total (GiB) | planner without overhead | "
          "planner / measured |\n|---|---:|---:|---:|---:|---:|---:|")
    figures = []
    for row in rows:
        if not row.steps:
            print(f"| {row.label} | - | - | - | - | - | {row.note} |")
            continue
        plan = plans[row.mode == "packed"]["memory"]["terms_gib"]
        measured = row.peak_gpu_gib if on_gpu else row.peak_rss_gib
        bare = plan["total"] - plan["overhead"]
        print(f"| {row.label} | {row.tokens_per_s:.1f} | {row.padding:.1%} | {measured:.2f} | {plan['total']:.2f} | "
              f"{bare:.2f} | {plan['total'] / measured:.2f} |")
        figures.append({**row.as_dict(), "planner_terms_gib": plan})
    if on_gpu:
        print(f"\nthe bar: planner total within 10% of the measured peak (0.90 to 1.10); peak reserved "
              f"{torch.cuda.max_memory_reserved() / GIB:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "backbone": args.backbone, "steps": args.steps,
                                               "rows": figures}, indent=2))


if __name__ == "__main__":
    main()
