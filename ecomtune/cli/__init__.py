"""The `ecomtune` command line. Each command is thin: parse -> one call -> print; what a command does lives in
the package that owns it.

User mistakes arrive as `EcomtuneError` and are printed as one block with a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from ecomtune.cli import backbones, bench, data, export, recipes, studies, train
from ecomtune.cli.options import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adapt any Hugging Face vision-language model to e-commerce understanding: align -> mid -> sft.")

# Registered in the order `ecomtune --help` lists them.
app.command()(backbones.backbones)
app.command()(recipes.recipes)
app.command()(recipes.validate)
train.register_stages(app)
app.command()(train.plan)
app.command()(train.profile)
app.add_typer(bench.bench_app, name="bench")
app.command()(bench.predict)
app.command()(export.export)
app.command()(data.crop)
app.command()(data.curate)
app.command()(studies.demo)
app.command()(data.synth)


def main() -> None:
    """Run the app. User mistakes and faults of the environment end in one message and exit 2 (see
    `ecomtune.errors.user_facing`); anything else is a bug and keeps its traceback, saying so."""
    from ecomtune.errors import user_facing

    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: a training run can be continued with --resume; finished outputs are intact")
        sys.exit(130)
    except Exception as exc:
        error = user_facing(exc)
        if error is None:
            console.print("[bold red]This is a bug in ecomtune, not something you did; please report it with the "
                          "traceback below.[/bold red]")
            raise
        # Every process of a launch meets the same checks: the first process of each machine prints the message,
        # the others one line, so 8 GPUs do not print it 8 times.
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            console.print("[bold red]error:[/bold red] ", end="")
            console.print(error.render(), markup=False, highlight=False)
        else:
            console.print(f"process {os.environ.get('RANK', '?')}: stopped: {error.title.splitlines()[0]} (the "
                          "machine's first process prints it in full)", markup=False, highlight=False)
        sys.exit(2)
