"""`ecomtune demo`: the whole recipe on the embedded default, offline, on a CPU, in about ten minutes.

It shows the paper's central claim on a toy scale: targeted adaptation raises in-domain scores while the model keeps
its general skill. The start is a tiny Qwen2-VL that already has general skill (`tiny-qwen2-vl-general`, trained on
the general world and cached; see `ecomtune/backbones/pretrained.py`). The demo generates the synthetic catalog
(with the general world's probe and training splits), benchmarks the base in full precision and loaded in 4-bit
(what QLoRA starts from), runs align -> mid -> sft with the shipped tiny recipe (each stage mixes general replay
into the catalog data; the retention probe and its guard watch general skill while all three train, held to where
align began: `baseline: chain`), benchmarks again, and
prints the three columns and the verdicts (`ecomtune/bench/verdicts.py`): a failed one in red, never hidden. It
exports the sft run as one merged model folder, verified against the run, and writes an HTML report.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ecomtune.bench.html_report import write_report
from ecomtune.bench.result_tables import columns_table
from ecomtune.bench.runner import run_bench
from ecomtune.bench.verdicts import Verdict, verdicts
from ecomtune.config.recipe_files import SHIPPED_RECIPES, load_recipe
from ecomtune.errors import ConfigError
from ecomtune.export.runner import run_export
from ecomtune.runs.outputs import locked, refuse_non_empty
from ecomtune.synth.catalog import GENERAL_TRAIN_FILE, write_catalog
from ecomtune.train.stages import run_stage

DEMO_RECIPE = SHIPPED_RECIPES / "tiny-qwen2-vl.yaml"
GENERAL_BASE = "tiny-qwen2-vl-general"
# The retention probe during every stage: the first 60 general probe items (10 per skill), how often per stage
# (align's 300 steps move the projector every general answer goes through, so it is probed more often), and the
# guard's limit. The guard warns: sft's high rate costs general skill early and its replay wins it back, so
# stopping at the first fall would keep sft's step-0 weights (docs/benchmark.md#what-replay-buys measures it).
PROBE_ITEMS, DROP_LIMIT = 60, 0.05
PROBE_EVERY = {"align": 50, "mid": 250, "sft": 250}
PROBED_STAGES = tuple(PROBE_EVERY)
COLUMNS = ("base", "base 4-bit", "after")


def run_demo(output: Path, seed: int = 0, items: int = 480, overwrite: bool = False,
             overrides: list[str] | None = None) -> dict[str, Path]:
    """The whole demo into `output`, which must be empty unless `overwrite` (then each part is replaced once its
    new version is complete). `overrides`: `--set` changes to the tiny recipe (e.g. fewer steps)."""
    output = Path(output)
    with locked(output):
        refuse_non_empty(output, overwrite)
        return _run_demo(output, seed, items, overrides or [])


def demo_recipe(data: dict[str, Path], overrides: list[str]):
    """The shipped tiny recipe on the demo's catalog: its mixtures keep their sampling rules, their paths become the
    catalog's (`catalog_sources`), the general base is the backbone, and the retention probe with its guard watches
    every stage, measured from where align began. `overrides` (`--set`) come last: `--set
    backbone.name=tiny-qwen2-vl` runs it on the random twin."""
    shipped = load_recipe(DEMO_RECIPE)
    probe = [f"{stage}.probe={{tasks: [general], items: {PROBE_ITEMS}, every: {every}, "
             f"general_drop_limit: {DROP_LIMIT}, on_general_drop: warn}}" for stage, every in PROBE_EVERY.items()]
    values: dict = {f"{stage}.probe.data": data["bench"] for stage in PROBED_STAGES}  # a path, never read as YAML
    for stage in ("align", "mid", "sft"):
        values[f"{stage}.data"] = catalog_sources(getattr(shipped, stage).data, data)
    recipe = load_recipe(DEMO_RECIPE, [f"backbone.name={GENERAL_BASE}", *probe, *overrides], values=values)
    return recipe


def catalog_sources(sources, catalog: dict[str, Path]):
    """A stage's data pointed at the catalog: each path becomes the catalog's file of the same name
    (`data_samples/compliance.jsonl` -> the catalog's `compliance.jsonl`); a mixture keeps its sampling rules."""
    files = {path.name: path for path in catalog.values() if path.suffix == ".jsonl"}

    def catalog_file(path) -> Path:
        name = Path(path).name
        if name not in files:  # only an edited shipped recipe gets here: say which file the demo cannot stand in for
            raise ConfigError(f"{DEMO_RECIPE} reads {path}, but the synthetic catalog writes no {name}",
                              fix=f"point that source at one of the catalog's files: {', '.join(sorted(files))}")
        return files[name]

    if not isinstance(sources, list):
        return catalog_file(sources)
    return [{**source.model_dump(mode="json"), "path": str(catalog_file(source.path))} for source in sources]


def is_replay(source: dict) -> bool:
    """Whether a manifest's or recipe's source is the general world's training split (general replay)."""
    return Path(source["path"]).name == GENERAL_TRAIN_FILE


def print_verdicts(console: Console, found: list[Verdict]) -> bool:
    """Every verdict, passed in green and failed in red, and whether all passed."""
    for verdict in found:
        mark = "[green]PASS[/green]" if verdict.passed else "[bold red]FAIL[/bold red]"
        claim = verdict.claim if verdict.passed else f"[red]{verdict.claim}[/red]"
        console.print(f"{mark} {claim}: {verdict.figures}", highlight=False)
    return all(v.passed for v in found)


def probe_story(manifest: dict) -> str:
    """What the retention probe saw during a stage and what its guard decided, in one line."""
    probe = manifest.get("probe")
    if not probe:
        return "no probe"
    seen = ", ".join(f"{e['general']:.2f}@{e['step']}" for e in probe["history"] if "general" in e)
    stopped = probe.get("stopped")
    warned = probe.get("warned", [])
    if stopped:
        decision = (f"[red]guard stopped at step {stopped['step']}, weights of step {stopped['weights_from_step']} "
                    "kept[/red]")
    elif warned:
        falls = ", ".join(f"{w['drop']:.2f} at step {w['step']}" for w in warned)
        decision = f"[yellow]guard warned (fell {falls} below the baseline), trained to the end[/yellow]"
    else:
        decision = "[green]guard: within the limit throughout, trained to the end[/green]"
    baseline = probe.get("baseline_general")
    measured = "" if baseline is None else f" (baseline {baseline:.2f}, {probe.get('baseline_from', 'step 0')})"
    return f"general probe {seen}{measured}; {decision}"


def _run_demo(output: Path, seed: int, items: int, overrides: list[str]) -> dict[str, Path]:
    console = Console()
    console.rule("[bold]1/8 synthetic catalog and general world")
    data = write_catalog(output / "catalog", items, seed, overwrite=True)
    console.print(f"{items} items -> {data['captions']}, {data['instruct']}, {data['compliance']}, "
                  f"general replay {data['general_train']}, benchmark in {data['bench']}")
    recipe = demo_recipe(data, overrides)

    console.rule(f"[bold]2/8 bench: the pretrained base {recipe.backbone.name}, full precision and 4-bit")
    base = run_bench(recipe.backbone.name, "all", data["bench"], out=output / "bench-base.json", overwrite=True,
                     load_in_4bit=False)
    base_4bit = run_bench(recipe.backbone.name, "all", data["bench"], out=output / "bench-base-4bit.json",
                          overwrite=True, load_in_4bit=True)
    console.rule("[bold]3/8 align: projector only")
    aligned = run_stage("align", recipe, output / "align", overwrite=True)
    console.print(probe_story(aligned.manifest))
    console.rule("[bold]4/8 mid: re-captions and label reading + general replay, QLoRA")
    mid = run_stage("mid", recipe, output / "mid", init_from=aligned.output, overwrite=True)
    console.print(probe_story(mid.manifest))
    console.rule("[bold]5/8 sft: instructions + general replay, continuing mid's adapter")
    tuned = run_stage("sft", recipe, output / "sft", init_from=mid.output, overwrite=True)
    console.print(probe_story(tuned.manifest))
    console.rule("[bold]6/8 bench: after align + mid + sft")
    after = run_bench(str(tuned.output), "all", data["bench"], out=output / "bench-after.json", overwrite=True)
    console.rule("[bold]7/8 export: one merged model folder that plain transformers load")
    exported = run_export(tuned.output, output / "export", overwrite=True)
    check = exported.verification
    console.print(f"{exported.model_folder}: {exported.manifest['dtype']}, verified against the sft run on "
                  f"{check.samples} images: max logit difference {check.relative_diff:.2%} of the largest logit "
                  f"(allowed {check.tolerance:.0%}), greedy tokens agree at {check.token_agreement:.0%}")

    console.rule("[bold]8/8 results")
    for result in (aligned, mid, tuned):
        m = result.manifest
        trained = ", ".join(f"{r['component']} {r['trainable']:,}" for r in m["parameters"] if r["trainable"])
        replay = any(is_replay(s) for s in m["data"].get("sources", []))
        share = f"; general replay {replay_share(m):.0%} of tokens" if replay else ""
        console.print(f"{m['stage']}: trained {trained} params in {m['metrics']['global_step']} steps "
                      f"({m['metrics'].get('train_runtime', 0):.0f}s){share} -> {result.output}")
    console.print(columns_table(list(zip(COLUMNS, (base, base_4bit, after), strict=True)),
                                title=f"{recipe.backbone.name}: before (full precision, 4-bit) and after the recipe"))
    passed = print_verdicts(console, verdicts(base, base_4bit, after))
    console.print("[bold green]every verdict passed[/bold green]" if passed else
                  "[bold red]some verdicts failed (above, in red)[/bold red]")
    files = [output / "bench-base.json", output / "bench-base-4bit.json", output / "bench-after.json"]
    report = write_report(files, output / "report.html")
    console.print(f"bench results: {', '.join(map(str, files))} (`ecomtune bench report` shows them side by side); "
                  f"open {report} for bars and examples")
    return {"align": aligned.output, "mid": mid.output, "sft": tuned.output, "base": files[0], "base_4bit": files[1],
            "after": files[2], "export": exported.model_folder, "report": report, "passed": passed}


def replay_share(manifest: dict) -> float:
    """The share of a stage's tokens that came from its general replay (`general-train.jsonl`)."""
    return sum(s.get("share", 0.0) for s in manifest["data"].get("sources", []) if is_replay(s))
