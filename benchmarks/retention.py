"""What general replay buys, measured: the same pretrained base, the same steps, three ways of training.

    python benchmarks/retention.py --output /tmp/retention [--items 480] [--set sft.train.max_steps=600]

From one align run of the demo's recipe on the general base (`tiny-qwen2-vl-general`), mid and sft are trained
three times:
  (a) catalog only: the catalog's own data, no replay;
  (b) catalog + general replay: the shipped recipe's mixtures (its sampling rules);
  (c) catalog + replay + the guard: (b) with the retention probe (held to align's start) and `on_general_drop: stop`.
Each sft run is benchmarked on every task. It prints general and in-domain scores for each, beside the base in
full precision and in 4-bit, and the share of the stages' tokens that was general replay. A benchmark, not a
test: it trains seven stages and takes about 15 minutes on 2 CPU cores (the base cached).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import ecomtune
from ecomtune.bench.runner import run_bench
from ecomtune.config.recipe_files import load_recipe
from ecomtune.studies.demo import DEMO_RECIPE, demo_recipe, is_replay, replay_share
from ecomtune.synth.catalog import write_catalog
from ecomtune.tasks.registry import TASKS
from ecomtune.train.stages import run_stage

VARIANTS = {"a": "catalog only", "b": "catalog + general replay", "c": "catalog + replay + guard (stop)"}


def variant_recipe(variant: str, data: dict[str, Path], overrides: list[str]):
    """The demo's recipe for one variant: (a) drops the replay source and the probe, (b) keeps the replay and drops
    the probe, (c) is the demo's recipe (replay, the probe on every stage held to align's start) with its guard set
    to stop instead of the demo's warn."""
    recipe = demo_recipe(data, overrides)
    if variant == "c":
        return ecomtune.load_recipe(recipe, {f"{stage}.probe.on_general_drop": "stop" for stage in ("mid", "sft")})
    values = {"backbone.name": recipe.backbone.name}
    for stage in ("align", "mid", "sft"):
        data_of = getattr(recipe, stage).data
        sources = [s.model_dump(mode="json") for s in data_of] if isinstance(data_of, list) else [{"path": data_of}]
        values[f"{stage}.data"] = [s for s in sources if not is_replay(s)] if variant == "a" else sources
    return load_recipe(DEMO_RECIPE, overrides, values=values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--items", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="abc")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, as --set")
    args = parser.parse_args()
    console = Console()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    data = write_catalog(out / "catalog", args.items, args.seed, overwrite=True)
    recipe = demo_recipe(data, args.sets)
    columns = {"base": run_bench(recipe.backbone.name, "all", data["bench"], load_in_4bit=False),
               "base 4-bit": run_bench(recipe.backbone.name, "all", data["bench"], load_in_4bit=True)}
    aligned = run_stage("align", recipe, out / "align", overwrite=True)
    columns["after align (shared)"] = run_bench(str(aligned.output), "all", data["bench"])
    shares, seconds, stopped = {}, {}, {}
    for variant in args.variants:
        started = time.perf_counter()
        chosen = variant_recipe(variant, data, args.sets)
        mid = run_stage("mid", chosen, out / variant / "mid", init_from=aligned.output, overwrite=True)
        sft = run_stage("sft", chosen, out / variant / "sft", init_from=mid.output, overwrite=True)
        columns[f"({variant}) {VARIANTS[variant]}"] = run_bench(str(sft.output), "all", data["bench"])
        shares[variant] = (replay_share(mid.manifest), replay_share(sft.manifest))
        stopped[variant] = [m.get("probe", {}).get("stopped") for m in (mid.manifest, sft.manifest)]
        seconds[variant] = time.perf_counter() - started

    table = Table(title=f"retention on {recipe.backbone.name}: the same base, the same steps "
                  f"(mid {recipe.mid.train.max_steps}, sft {recipe.sft.train.max_steps})")
    table.add_column("task")
    for label in columns:
        table.add_column(label, justify="right")
    in_domain = [t.name for t in TASKS.values() if not t.retention]
    for task in ("general", *in_domain):
        metric = TASKS[task].headline
        table.add_row(f"{task} ({metric})", *(f"{r['tasks'][task]['scores'][metric]:.3f}" for r in columns.values()))
    blank = [""] * 3

    def general(results: dict) -> float:
        return results["tasks"]["general"]["scores"]["accuracy"]

    table.add_row("general: change vs 4-bit base", *blank, *(f"{general(r) - general(columns['base 4-bit']):+.3f}"
                                                             for label, r in columns.items() if label.startswith("(")))
    table.add_row("replay share of tokens (mid / sft)", *blank, *(f"{m:.0%} / {s:.0%}" for m, s in shares.values()))

    def stops(found: list) -> str:
        return ", ".join(f"{stage} at {s['step']}" for stage, s in zip(("mid", "sft"), found, strict=True) if s) or "no"

    table.add_row("guard stopped", *blank, *(stops(found) for found in stopped.values()))
    table.add_row("minutes (mid + sft + bench)", *blank, *(f"{s / 60:.1f}" for s in seconds.values()))
    console.print(table)
    (out / "retention.json").write_text(json.dumps({"scores": {k: {t: v["tasks"][t]["scores"][TASKS[t].headline]
                                                                   for t in v["tasks"]} for k, v in columns.items()},
                                                   "replay_share": shares, "stopped": stopped, "seconds": seconds},
                                                  indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
