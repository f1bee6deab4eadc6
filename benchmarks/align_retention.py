"""How much general skill the align stage alone costs, per learning rate, on the demo's own recipe and data.

After `make demo` (which leaves `runs/demo/align/manifest.json` and the catalog in `runs/demo/catalog`), this
re-runs align from the demo's recipe with each learning rate given, then benches `general` and `deep-fashion` on
each align run and prints the scores beside nothing else: compare them with the demo's base column.

    .venv/bin/python benchmarks/align_retention.py 5e-3 1e-3 2e-4

Measured on 2 shared cores after a fresh `make demo` with the earlier align (replay `random:300`, token-averaged
loss; base in full precision: general 0.644): lr 5e-3 (then shipped)
general 0.461, 1e-3 0.467, 2e-4 0.500; count, reading and spatial fall even at 2e-4, colour comes back (0.967).
On that base, align at 1e-3 with `loss_average: sample` and 600 replay rows left 0.550 after align alone (count
1.00 -> 0.67); mid and sft's replay won back some or all of it (0.594 to 0.667 after the recipe in three runs).
The general world and its base have changed since (docs/backbones.md); these figures were not measured again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ecomtune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rates", nargs="+", type=float, help="align learning rates to try")
    parser.add_argument("--demo", default="runs/demo", help="a finished demo's output folder")
    parser.add_argument("--work", default="runs/align-retention", help="where the align runs go")
    args = parser.parse_args()

    demo, work = Path(args.demo), Path(args.work)
    recipe = json.loads((demo / "align" / "manifest.json").read_text())["recipe"]
    for rate in args.rates:
        out = work / f"align-lr{rate:g}"
        started = time.perf_counter()
        ecomtune.run_stage("align", ecomtune.load_recipe(recipe, {"align.train.learning_rate": rate}), out,
                           overwrite=True)
        results = ecomtune.run_bench(out, tasks="general,deep-fashion", data=demo / "catalog" / "bench",
                                     out=work / f"align-lr{rate:g}-bench.json", overwrite=True)
        general = results["tasks"]["general"]["scores"]
        skills = {name: round(row["accuracy"], 3) for name, row in general.get("by_attribute", {}).items()}
        print(f"lr {rate:g}: general {general['accuracy']:.3f} {skills}; deep-fashion "
              f"{results['tasks']['deep-fashion']['scores']['accuracy']:.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
