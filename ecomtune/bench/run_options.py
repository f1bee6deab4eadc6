"""What `ecomtune bench` and `ecomtune predict` do with their options: the default data folder, the image strategy
(the run's own, changed by `--images` / `--max-images`), bench with or without the general-skill harness, and the
tables a finished bench prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.table import Table

from ecomtune.bench.result_tables import attribute_table, results_table
from ecomtune.bench.runner import run_bench
from ecomtune.config.schema import ImageSettings
from ecomtune.errors import ConfigError
from ecomtune.infer.load import run_images
from ecomtune.tasks.registry import TASKS

# The repository's sample benchmark, relative to the current folder as a checkout's commands run from its root.
DEFAULT_DATA = Path("data_samples/bench")


def image_settings(model: str, strategy: str | None, max_images: int | None) -> ImageSettings | None:
    """The strategy for bench / predict: the run's (or the default), with the command line's changes; None when
    the command line changes nothing (the run's own is used)."""
    if strategy is None and max_images is None:
        return None
    changes = {k: v for k, v in (("strategy", strategy), ("max_images", max_images)) if v is not None}
    try:
        return ImageSettings(**{**run_images(model).model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(f"--images {strategy}: {exc.errors()[0]['msg']}",
                          fix="choose all, primary, grid or crops") from None


def bench_from_options(model: str, tasks: str, data: Path | None, out: Path | None, overwrite: bool,
                       general: str | None, images: str | None, max_images: int | None,
                       **settings: Any) -> dict[str, Any]:
    """Bench `model` on `data` (default: the sample benchmark), and the lmms-eval tasks of `general` too when
    given; `settings` are `run_bench`'s (limit, batch size, judge, precision)."""
    data = data or DEFAULT_DATA
    settings = {**settings, "images": image_settings(model, images, max_images)}
    if general:
        from ecomtune.bench.general_harness import run_bench_with_general

        return run_bench_with_general(general, model, tasks, data, out=out, overwrite=overwrite, **settings)
    return run_bench(model, tasks, data, out=out, overwrite=overwrite, **settings)


def bench_tables(results: dict[str, Any], general: bool) -> list[Table]:
    """What a finished bench prints: the headline per task, the per-attribute table of each task whose entry asks
    for one (`Task.attribute_table`), and the harness's scores when it ran (`general`)."""
    tables = [results_table(results)]
    tables += [attribute_table(results, name) for name in results["tasks"]
               if name in TASKS and TASKS[name].attribute_table]
    if general:
        from ecomtune.bench.general_harness import general_table

        tables.append(general_table(results))
    return tables
