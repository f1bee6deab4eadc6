"""What a stage's output folder may not touch: every input of the stage. `run_stage` checks the output against
them (`ecomtune.runs.outputs.check_location`) before anything is written."""

from __future__ import annotations

from pathlib import Path

from ecomtune.config.schema import StageSettings
from ecomtune.data.prepare.stage_samples import StageSamples
from ecomtune.data.sources.detect import MIXTURE_SUFFIXES
from ecomtune.runs.outputs import Guarded


def guarded_inputs(stage: StageSettings, read: StageSamples, recipe_file: Path | None,
                   init_from: Path | None) -> Guarded:
    """What a stage's output may not touch: its data (files, dataset folders, a mixture YAML), the folders of every
    image its records name (before the strategy picks some), the image roots it names, the recipe and the run it
    starts from."""
    guarded = Guarded(files=[("recipe", recipe_file)] if recipe_file else [],
                      folders=[("--init-from run", Path(init_from))] if init_from else [])
    if not isinstance(stage.data, list) and Path(stage.data).suffix.lower() in MIXTURE_SUFFIXES:
        guarded.files.append(("mixture", Path(stage.data)))
    for source in read.sources:
        path = Path(source.path)
        if path.is_dir():
            guarded.folders.append(("dataset folder", path))
        elif path.exists():
            guarded.files.append(("data file", path))
    guarded.folders += [("image folder", root) for root in read.image_roots]
    guarded.folders += [("image folder", Path(folder)) for folder in read.image_folders]
    held_out = stage.eval_data if isinstance(stage.eval_data, list) else \
        ([] if stage.eval_data is None else [stage.eval_data])
    for source in held_out:
        path = Path(getattr(source, "path", source))
        if path.exists():
            (guarded.folders if path.is_dir() else guarded.files).append(("eval data", path))
    if stage.probe is not None:
        guarded.folders.append(("probe data", Path(stage.probe.data)))
    return guarded
