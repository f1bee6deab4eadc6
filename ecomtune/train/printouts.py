"""What the training commands print: a finished stage, `ecomtune plan`'s measurements and `ecomtune profile`'s
figures. The commands in `ecomtune.cli` only parse, run and hand the result here."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ecomtune.config.schema import Recipe
from ecomtune.runs.files import MANIFEST
from ecomtune.runtime import is_main_process


def print_stage_result(result, stdout: Console) -> None:
    """A finished stage in three lines: what trained, steps and loss, where it was saved."""
    if not is_main_process():
        return
    m = result.manifest
    if result.model is None:  # --resume on a finished run: nothing was trained
        return
    if not result.complete:
        stdout.print(f"[yellow]{m['stage']} stopped at step {m['metrics']['global_step']} before its last step: "
                     f"nothing final was saved; continue with --resume --output {result.output}[/yellow]")
        return
    trained = ", ".join(f"{r['component']} ({r['mode']}, {r['trainable']:,} params)"
                        for r in m["parameters"] if r["trainable"])
    metrics = m["metrics"]
    stdout.print(f"[bold]{m['stage']}[/bold] on {m['backbone']['name']}: trained {trained}")
    loss = "-" if metrics.get("train_loss") is None else f"{metrics['train_loss']:.4f}"
    stdout.print(f"  steps {metrics['global_step']}, final mean train loss {loss}, "
                 f"{metrics.get('train_runtime', 0):.1f}s")
    stdout.print(f"  saved to {result.output} ({MANIFEST}, {', '.join(m['outputs'])})")


def print_profile(rows: list, chosen: Recipe, stage: str, steps: int, repeats: int, stdout: Console) -> None:
    """`ecomtune profile`'s table: each run's useful tokens/s, padding and memory, against TRL's collator."""
    settings = getattr(chosen, stage)
    table = Table(title=f"profile: {stage} on {chosen.backbone.name}, {settings.data}, {steps} steps x {repeats} "
                  f"(step 1 untimed), batch {settings.train.batch_size} x accum {settings.train.grad_accum}, "
                  f"max_length {settings.max_length}")
    for column in ("run", "attention", "useful tokens/s", "padding", "samples/s", "peak RSS GiB", "peak GPU GiB",
                   "vs TRL"):
        table.add_column(column, justify="left" if column in ("run", "attention") else "right")
    reference = next((r for r in rows if r.mode == "trl" and r.seconds), None)
    for row in rows:
        if row.note:
            table.add_row(row.label, "", row.note, "", "", "", "", "")
            continue
        ratio = f"{row.tokens_per_s / reference.tokens_per_s:.2f}x" if reference else ""
        gpu = "-" if row.peak_gpu_gib is None else f"{row.peak_gpu_gib:.2f}"
        table.add_row(row.label, row.attention, f"{row.tokens_per_s:,.0f}", f"{row.padding:.1%}",
                      f"{row.samples_per_s:.2f}", f"{row.peak_rss_gib:.2f}", gpu, ratio)
    stdout.print(table)
    packed = next((r for r in rows if r.mode == "packed" and r.seconds), None)
    unpacked = next((r for r in rows if r.mode == "rows" and r.seconds), None)
    if packed and unpacked:
        stdout.print(f"packing on / off: {packed.tokens_per_s / unpacked.tokens_per_s:.2f}x useful tokens/s")


def print_plan(report: dict, stdout: Console) -> None:
    """What `ecomtune plan` measured: tokens, packing, overlong samples and the memory estimate."""
    tokens, image_tokens, memory = report["tokens"], report["image_tokens"], report["memory"]
    stdout.print(f"[bold]{report['stage']}[/bold] on {report['backbone']['name']}: {report['samples']} samples "
                 f"from {report['data']}, images: {report['images']['strategy']}")
    print_mixture(report["mixture"], stdout)
    table = Table(title="tokens per sample (text + image)")
    for column in ("min", "median", "p95", "max", "image tokens (median / max)", "padding"):
        table.add_column(column, justify="right")
    table.add_row(str(tokens["min"]), f"{tokens['median']:g}", str(tokens["p95"]), str(tokens["max"]),
                  f"{image_tokens['median']:g} / {image_tokens['max']}",
                  f"{report['padding']['fraction']:.1%} at batch {report['padding']['batch_size']}"
                  + (" (packed, at most)" if report["padding"]["packed"] else ""))
    stdout.print(table)
    if report.get("packing"):
        packing = report["packing"]
        stdout.print(f"packing: {packing['samples']} samples in {packing['rows']} rows of up to "
                     f"{packing['max_length']} tokens ({packing['samples_per_row']:g} per row, "
                     f"{packing['fill']:.1%} full)")
    if report["over_max_length"]:
        action = "dropped" if report["on_overlong"] == "drop" else "fatal (on_overlong: error)"
        stdout.print(f"[yellow]{report['over_max_length']} sample(s) longer than max_length={report['max_length']}: "
                     f"{action}; never cut[/yellow]")
    if report["over_image_cap"]:
        stdout.print(f"{report['over_image_cap']} sample(s) have more than {report['image_cap']} images: the cap "
                     f"keeps {report['images']['keep']} ones")
    _print_memory(memory, stdout)
    if memory["fits"]:
        stdout.print(f"[green]fits: {memory['terms_gib']['total']:.1f} of {memory['budget_gib']:g} GiB[/green]")
    else:
        stdout.print(f"[red]over budget: {memory['terms_gib']['total']:.1f} of {memory['budget_gib']:g} GiB; "
                     "lower, largest first:[/red]")
        for line in memory["advice"]:
            stdout.print(f"  - {line}")


def _print_memory(memory: dict, stdout: Console) -> None:
    terms = Table(title=f"estimated peak GPU memory (GiB), budget {memory['budget_gib']:g}")
    for name in memory["terms_gib"]:
        terms.add_column(name, justify="right")
    terms.add_row(*(f"{v:.2f}" for v in memory["terms_gib"].values()))
    stdout.print(terms)


def print_fit_plan(report: dict, stdout: Console) -> None:
    """What `ecomtune plan` without data says: the planned sample, the estimate, what fits, and what to change."""
    sample, memory, largest = report["sample"], report["memory"], report["largest"]
    backbone = report["backbone"]
    stdout.print(f"[bold]{report['stage']}[/bold] on {backbone['name']} ({backbone['family']}), no data: a sample of "
                 f"{sample['text_tokens']} text tokens and {sample['images']} photo(s) of "
                 f"{sample['photo'][0]}x{sample['photo'][1]} px")
    if backbone.get("measured_as"):
        stdout.print(f"[dim]{backbone['measured_as']}[/dim]")
    step = memory["step"]
    stdout.print(f"one photo = {sample['image_tokens_per_image']} image tokens (the real processor at the recipe's "
                 f"resolution); a sample = {sample['tokens']} tokens; batch {step['batch_size']}, gradient "
                 f"checkpointing {'on' if step['gradient_checkpointing'] else 'off'}")
    if report["over_max_length"]:
        stdout.print(f"[yellow]the sample is longer than max_length={report['max_length']}: it would be dropped "
                     "(or stop the run); raise max_length or lower the resolution[/yellow]")
    _print_memory(memory, stdout)
    total, budget = memory["terms_gib"]["total"], memory["budget_gib"]
    if memory["fits"]:
        stdout.print(f"[green]fits: {total:.1f} of {budget:g} GiB[/green]")
    else:
        stdout.print(f"[red]does not fit: {total:.1f} of {budget:g} GiB[/red]")

    def shown(value) -> str:
        return "nothing fits" if value is None else f"{value:,}"

    stdout.print(f"largest that fits, the rest as planned: max_length {shown(largest['max_length'])}, "
                 f"photos per sample {shown(largest['images_per_sample'])}, batch_size {shown(largest['batch_size'])}")
    if report["knobs"] and report["turn"]:
        table = Table(title="each setting changed alone (cheapest first)")
        for column in ("setting", "estimate (GiB)", "fits", "costs"):
            table.add_column(column, justify="right" if column == "estimate (GiB)" else "left")
        for knob in report["knobs"]:
            table.add_row(knob["setting"], f"{knob['total_gib']:.1f}", "yes" if knob["fits"] else "no", knob["cost"])
        stdout.print(table)
    if report["turn"]:
        if len(report["turn"]) == 1:
            stdout.print(f"turn first: --set {report['turn'][0].replace(' ', ' --set ')}")
        else:
            stdout.print("no single setting fits: combine, in this order, and plan again: "
                         + "; ".join(report["turn"]))


def print_mixture(sources: list[dict], stdout: Console) -> None:
    """The realised mixture: per source its format, rows available, rule, rows taken, tokens and share."""
    table = Table(title="mixture (rows taken by each source's sampling rule)")
    for column in ("source", "format", "rows", "sampling", "taken", "tokens", "share"):
        table.add_column(column, justify="left" if column in ("source", "format", "sampling") else "right")
    for s in sources:
        table.add_row(s["path"], s["format"], f"{s['available']:,}", s["sampling"], f"{s['taken']:,}",
                      f"{s['tokens']:,}", f"{s['share']:.1%}")
    stdout.print(table)
