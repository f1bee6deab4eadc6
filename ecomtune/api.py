"""ecomtune from Python: what the command line does, as functions (`import ecomtune; ecomtune.run_stage(...)`).

The top of the package: each function imports its implementation when it is called, so `import ecomtune` (and
this module) loads neither torch nor transformers. Mistakes raise the typed errors of `ecomtune.errors` (what,
where, the fix), the same ones the command line prints; nothing here exits the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecomtune.config.schema import DataSource, Recipe
from ecomtune.errors import BackboneError, ConfigError, DataError, EcomtuneError, ExportError

if TYPE_CHECKING:
    from ecomtune.export.runner import ExportResult
    from ecomtune.infer.load import LoadedModel
    from ecomtune.train.stages import StageResult

__all__ = ["BackboneError", "ConfigError", "DataError", "EcomtuneError", "ExportError", "Recipe", "export_run",
           "generate", "load_model", "load_recipe", "run_bench", "run_stage"]

RecipeSource = str | Path | Mapping[str, Any] | Recipe | None
# The keys a row of data has and a mixture source has not: a list of dicts with none of them is a mixture.
ROW_KEYS = ("messages", "conversations", "prompt", "instruction", "images", "image")


def load_recipe(source: RecipeSource = None, overrides: Sequence[str] | Mapping[str, Any] | None = None,
                **values: Any) -> Recipe:
    """A typed, validated recipe.

    `source`: a recipe file (YAML), a shipped recipe's name (`"tiny-qwen2-vl"`, found as `--recipe NAME` finds it),
    a dict of the same shape, a `Recipe`, or None for the built-in defaults. `overrides`: `--set` strings
    (`["sft.lora.r=8"]`, values read as YAML) or a dict of dotted keys to values (`{"sft.lora.r": 8}`). `values`:
    whole sections merged in (`sft={"train": {"max_steps": 2}}`). Every problem of the result is reported at once
    in one ConfigError, each at its file:line or dotted key.

        recipe = ecomtune.load_recipe("tiny-qwen2-vl", {"align.train.max_steps": 2})
        recipe.align.train.max_steps  # 2
    """
    from ecomtune.config.recipe_files import apply_overrides, apply_values, read_yaml, validate_recipe_dict

    data, lines, where = _recipe_mapping(source, read_yaml)
    if isinstance(overrides, Mapping):
        data = apply_values(data, dict(overrides))
    elif overrides:
        data = apply_overrides(data, [overrides] if isinstance(overrides, str) else list(overrides))
    for section, value in values.items():
        data[section] = _merged(data.get(section), value)
    if isinstance(source, Recipe) and not overrides and not values:
        return source
    return validate_recipe_dict(data, where, lines)


def _recipe_mapping(source: RecipeSource, read_yaml) -> tuple[dict[str, Any], dict[tuple[str, ...], int], str]:
    """(the recipe as a mapping, the line of each key, what to call it in messages)."""
    import copy

    if source is None:
        return {}, {}, "<defaults>"
    if isinstance(source, Recipe):
        return source.model_dump(exclude_unset=True), {}, "<recipe>"
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), {}, "<dict>"
    if isinstance(source, str | Path):
        data, lines = read_yaml(Path(source))
        return data, lines, str(source)
    raise ConfigError(f"A recipe cannot be a {type(source).__name__}",
                      fix="give a recipe file, a shipped recipe's name, a dict or a Recipe")


def _merged(base: Any, value: Any) -> Any:
    """`value` merged into `base` key by key where both are mappings, else `value`."""
    if isinstance(base, Mapping) and isinstance(value, Mapping):
        return {**base, **{key: _merged(base.get(key), item) for key, item in value.items()}}
    return value


def _recipe_file(source: RecipeSource) -> Path | None:
    """The file a recipe was read from (the output may not hold it), when it was given as one."""
    if not isinstance(source, str | Path):
        return None
    from ecomtune.config.recipe_files import find_recipe

    return find_recipe(Path(source))


def run_stage(stage: str, recipe: RecipeSource, output: str | Path, init_from: str | Path | None = None,
              data: Any = None, resume: bool = False, overwrite: bool = False) -> StageResult:
    """Run one training stage (`"align"`, `"mid"` or `"sft"`) into the run folder `output`, as `ecomtune <stage>`
    does; returns the `StageResult` (`output`, `manifest`, the trained `model`, `complete`).

    `recipe`: anything `load_recipe` takes. `init_from`: the finished run to start from (mid and sft). `data`
    replaces the stage's data for this call: a path (file, dataset folder, hub id, mixture YAML), a list of
    mixture sources, a list of records (dicts) held in memory, or a `datasets.Dataset` / `IterableDataset`.
    Rows in memory meet the same checks as a file, and a problem names its row (`records[3]`, `dataset[row 3]`);
    the manifest records them as `in-memory:records-<fingerprint>` with the sha256 of the rows. `resume`
    continues an interrupted run; `overwrite` replaces a finished one once the new one is complete.
    Raises ConfigError, DataError, BackboneError (and the errors of the machine, e.g. a full disk, as OSError).

        result = ecomtune.run_stage("align", "tiny-qwen2-vl", "runs/align", data="captions.jsonl")
        result.manifest["metrics"]["global_step"]
    """
    from ecomtune.config.stages import stage_info

    stage_info(stage)  # refuses a name that is not a stage, naming those there are
    chosen, recipe_file = load_recipe(recipe), _recipe_file(recipe)
    if data is None:
        return _run_stage(stage, chosen, output, init_from, resume, overwrite, recipe_file)
    from ecomtune.data.sources.in_memory import holding, is_in_memory

    if is_in_memory(data) and not _is_mixture(data):
        with holding(data) as name:
            return _run_stage(stage, _with_data(chosen, stage, name), output, init_from, resume, overwrite,
                              recipe_file)
    given = [s.model_dump(exclude_unset=True) if isinstance(s, DataSource) else s for s in data] \
        if isinstance(data, list) else Path(data)
    return _run_stage(stage, _with_data(chosen, stage, given), output, init_from, resume, overwrite, recipe_file)


def _is_mixture(data: Any) -> bool:
    """A list of mixture sources (DataSource, or dicts with a `path` and none of a row's keys), not of rows."""
    return isinstance(data, list) and bool(data) and all(
        isinstance(item, DataSource) or (isinstance(item, Mapping) and "path" in item and
                                         not any(key in item for key in ROW_KEYS)) for item in data)


def _with_data(recipe: Recipe, stage: str, data: Any) -> Recipe:
    """`recipe` with the stage's data replaced, validated again (a mixture's sources are checked like a file's)."""
    from ecomtune.config.recipe_files import validate_recipe_dict

    mapping = recipe.model_dump(exclude_unset=True)
    mapping[stage] = {**mapping.get(stage, {}), "data": data}
    return validate_recipe_dict(mapping, f"<recipe, {stage}.data>")


def _run_stage(stage: str, recipe: Recipe, output: str | Path, init_from: str | Path | None, resume: bool,
               overwrite: bool, recipe_file: Path | None) -> StageResult:
    from ecomtune.train.stages import run_stage as run

    return run(stage, recipe, Path(output), init_from=Path(init_from) if init_from is not None else None,
               resume=resume, overwrite=overwrite, recipe_file=recipe_file)


def run_bench(model: str | Path, tasks: str | Sequence[str] = "all", data: str | Path | None = None,
              out: str | Path | None = None, limit: int | None = None, batch_size: int = 16,
              judge: str | None = None, load_in_4bit: bool | None = None, images: str | None = None,
              max_images: int | None = None, general: str | None = None, judge_plain_http: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Run the benchmark tasks on `model` (a run folder, an exported folder, a backbone alias or hub id), as
    `ecomtune bench` does; returns the results (`results["tasks"][name]["scores"]`, per-example records, the
    model's fingerprint) and writes them to `out` when given.

    `tasks`: "all", a comma list or a list of task names. `data`: the folder of `<task>.jsonl` files (default: the
    sample benchmark, `data_samples/bench` of the current folder, as for the command). `limit`: at
    most N examples per task. `images` / `max_images`: the multi-image strategy (default: the run's). `judge`:
    the item-intelligence judge (field-match, a URL or a model). `general`: lmms-eval tasks to add
    (`"lmms-eval:mme"`). Raises ConfigError, DataError, BackboneError.

        results = ecomtune.run_bench("runs/sft", tasks="deep-fashion", data="catalog/bench", limit=8)
        results["tasks"]["deep-fashion"]["scores"]["accuracy"]
    """
    from ecomtune.bench.run_options import bench_from_options

    tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
    return bench_from_options(str(model), tasks, Path(data) if data is not None else None,
                              Path(out) if out is not None else None, overwrite, general, images, max_images,
                              limit=limit, batch_size=batch_size, judge=judge, load_in_4bit=load_in_4bit,
                              judge_plain_http=judge_plain_http)


def export_run(run: str | Path, out: str | Path, format: str = "merged", merge_base: str = "dequantized",
               dtype: str = "bfloat16", samples: int = 4, images: Sequence[str | Path] | None = None,
               overwrite: bool = False) -> ExportResult:
    """Export the finished run `run` into `out` as one model folder (`format="merged"`: transformers, vLLM,
    lmms-eval) or vLLM's base + LoRA layout (`"vllm"`), verified against the run before it lands, as
    `ecomtune export` does; returns the `ExportResult` (`model_folder`, `adapter_folder`, `verification`).

    `merge_base`: "dequantized" (the 4-bit base the adapter trained on; reproduces the run) or "pristine".
    `dtype`: bfloat16, float16 or float32. `samples`: rendered images to verify on, or your own `images`.
    Raises ConfigError, ExportError (the export does not reproduce the run; nothing is written).

        result = ecomtune.export_run("runs/sft", "exported")
        result.model_folder
    """
    from typing import get_args

    from ecomtune.export.merge import ExportDtype, MergeBase
    from ecomtune.export.runner import ExportFormat, run_export

    choices = {"format": (format, ExportFormat), "merge_base": (merge_base, MergeBase), "dtype": (dtype, ExportDtype)}
    for name, (value, allowed) in choices.items():
        if value not in get_args(allowed):
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(get_args(allowed))}",
                              fix=f"choose {name} from {', '.join(get_args(allowed))}")
    chosen = [Path(image) for image in images] if images else None
    return run_export(Path(run), Path(out), format, merge_base, dtype, samples, chosen, overwrite)  # type: ignore[arg-type]


def load_model(spec: str | Path, load_in_4bit: bool | None = None) -> LoadedModel:
    """A model ready to generate: a run folder (on the precision it trained on), an exported folder, a PEFT
    adapter folder, or a backbone (alias, hub id, model folder). Returns a `LoadedModel` (`.model`, `.processor`,
    `.info`) for `generate`. Raises ConfigError, BackboneError.

        model = ecomtune.load_model("exported")
        model.info["kind"]
    """
    from ecomtune.infer.load import load_for_inference

    return load_for_inference(str(spec), load_in_4bit)


def generate(model: LoadedModel | str | Path, prompt_or_prompts: str | Sequence[str],
             images: Sequence[Any] | None = None, max_new_tokens: int = 64, batch_size: int = 8) -> str | list[str]:
    """Greedy answers of `model` (a `load_model` result, or anything `load_model` takes), the same generation the
    benchmark uses.

    One prompt gives one answer (a str), `images` being that prompt's images (paths); a list of prompts gives a
    list of answers, `images` then holding one list of images per prompt. Raises DataError when a prompt does not
    fit the model's context with `max_new_tokens`.

        answer = ecomtune.generate(model, "What colour is it?", images=["item.png"])
        answers = ecomtune.generate(model, ["Colour?", "Pattern?"], images=[["a.png"], ["b.png"]])
    """
    from ecomtune.infer.generate import generate as generate_answers

    loaded = model if not isinstance(model, str | Path) else load_model(model)
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    if images is None:
        pictures: list[list[Any]] = [[] for _ in prompts]
    elif single:
        pictures = [[str(image) if isinstance(image, Path) else image for image in images]]
    else:
        pictures = [[str(image) if isinstance(image, Path) else image for image in refs] for refs in images]
    if len(pictures) != len(prompts):
        raise DataError(f"{len(prompts)} prompt(s) but {len(pictures)} list(s) of images",
                        fix="give one list of images per prompt (an empty list for none)")
    answers = generate_answers(loaded, prompts, pictures, max_new_tokens, batch_size, "generating")
    return answers[0] if single else answers

