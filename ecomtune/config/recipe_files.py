"""Recipe loading: YAML -> dict (with the line of every key) -> `--set` overrides -> typed values -> `Recipe`.

Every problem is collected and reported at once, each with its file:line, its dotted key, and a
"did you mean" for misspelt keys, so a user fixes a recipe in one pass instead of one error per run.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ecomtune.config.schema import RULES_BROKEN, Recipe, RuleProblem
from ecomtune.errors import ConfigError, Problem

MERGE_TAG = "tag:yaml.org,2002:merge"


def _scan_keys(node: yaml.Node, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int],
               repeats: list[tuple[tuple[str, ...], int, int]], open_nodes: frozenset[int] = frozenset()) -> None:
    """Record the 1-based line of each dotted key path of a YAML mapping (list items by their index), and every
    key a mapping repeats.

    PyYAML keeps the last of two equal keys without a word, so a second `lora:` section silently replaces the
    first; repeats are (path, first line, repeating line). Merge keys (`<<: *base`) are meant to be overridden,
    so they are neither recorded nor repeats.
    """
    if id(node) in open_nodes:  # an alias can point back up the tree
        return
    if isinstance(node, yaml.SequenceNode):  # list items by index, so each entry of a mixture has its own line
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            lines[path] = item.start_mark.line + 1
            _scan_keys(item, path, lines, repeats, open_nodes | {id(node)})
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = str(key_node.value)
        path, line = (*prefix, key), key_node.start_mark.line + 1
        if key in first_line:
            repeats.append((path, first_line[key], line))
        else:
            first_line[key] = line
        lines[path] = line
        _scan_keys(value_node, path, lines, repeats, open_nodes | {id(node)})


def _decode(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is a ConfigError at the line of its first bad byte, not a
    UnicodeDecodeError traceback (recipes saved as Latin-1 or UTF-16 by an editor are the usual cause)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError("Recipe is not UTF-8 text", [Problem(
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 ({exc.reason})", f"{path}:{line}",
            "save the file as UTF-8 (most editors offer it under 'Save as' / encoding)")]) from None


SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # inside the package: a wheel has them


def find_recipe(path: Path) -> Path:
    """`path` itself, or a shipped recipe of that name (`tiny-qwen2-vl` or `tiny-qwen2-vl.yaml`) when no such
    file exists, so the shipped recipes work from any folder and from an installed wheel."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    for name in (path.name, f"{path.name}.yaml"):
        if (SHIPPED_RECIPES / name).is_file():
            return SHIPPED_RECIPES / name
    return path


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Read a recipe file; returns the mapping and the line of every key.

    Refuses, each with file:line: bytes that are not UTF-8, invalid YAML, an empty recipe (no bytes, only
    comments, or `{}`: it would silently train with the defaults), and (all at once) keys repeated in the same
    mapping at any depth.
    """
    path = find_recipe(path)
    if not path.is_file():
        raise ConfigError(f"Recipe file not found: {path}", fix="check the path; `ecomtune recipes` lists shipped ones")
    text = _decode(path)
    loader = yaml.SafeLoader(text)
    lines: dict[tuple[str, ...], int] = {}
    repeats: list[tuple[tuple[str, ...], int, int]] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            _scan_keys(node, (), lines, repeats)  # before constructing, which inlines merge keys into the nodes
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError("Recipe is not valid YAML", [Problem(str(exc).splitlines()[0], where)]) from None
    finally:
        loader.dispose()
    if data is None or data == {}:  # zero bytes, only comments, or `{}`: nothing the user meant to set
        raise ConfigError(f"Recipe {path} is empty: it sets nothing, so the run would train with the built-in "
                          "defaults", [Problem("no settings (the file is empty or holds only comments)", str(path),
                                               "check that this is the file you meant and that it was saved; to "
                                               "train with the defaults, leave --recipe out")])
    if not isinstance(data, dict):
        raise ConfigError("Recipe must be a YAML mapping", [Problem(f"got {type(data).__name__}", str(path))])
    launch_keys = [key for key in ("compute_environment", "distributed_type") if key in data]
    if launch_keys:  # one key-by-key "unknown key" list would not say what went wrong
        raise ConfigError(f"{path} is an accelerate launch config, not a recipe (it has {', '.join(launch_keys)})",
                          [Problem("a launch preset says how processes start; a recipe says what trains",
                                   f"{path}:{lines.get((launch_keys[0],), 1)}",
                                   f"accelerate launch --config_file {path} -m ecomtune <stage> --recipe RECIPE ...")],
                          fix="give --recipe a recipe (`ecomtune recipes` lists the shipped ones)")
    if repeats:
        raise ConfigError(f"Recipe {path} repeats {len(repeats)} key(s); YAML would silently keep only the last", [
            Problem(f"key '{'.'.join(key)}' repeats {path}:{first}", f"{path}:{line}",
                    "keep one of them; for two sections, merge them into one")
            for key, first, line in repeats])
    return data, lines


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> str | None:
    """Set `data[a][b][c] = value` for key `a.b.c`, creating missing sections; returns what is wrong, or None."""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"{'.'.join(parts)}: {part} is not a section"
        node = child
    node[parts[-1]] = value
    return None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML: `3`, `true`, `[a, b]`, `null`)."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem(f"override {item!r} is not key=value", "--set", "write e.g. --set sft.lora.r=8"))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if wrong := _set_dotted(data, key, value):
            problems.append(Problem(wrong, "--set"))
    if problems:
        raise ConfigError("Invalid --set override", problems)
    return data


def apply_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Set typed values (`{"sft.data": Path(...)}`) as they are, at dotted keys.

    For values a program already holds typed (a command-line path, a backbone name): written as a `--set`
    string they would be re-read as YAML, where `data #1.jsonl` loses everything after the `#` and `yes`
    becomes True.
    """
    problems = [Problem(wrong, "command line") for key, value in values.items()
                if (wrong := _set_dotted(data, key, value))]
    if problems:
        raise ConfigError("Invalid command-line value", problems)
    return data


# Names other fine-tuning tools use for ecomtune's keys, for "did you mean" where spelling alone cannot tell.
COMMON_NAMES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
    "lr": "learning_rate", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "lr_scheduler", "optim": "optimizer",
    "bnb_4bit_quant_type": "quant_type", "model": "name", "model_name": "name",
    "max_pixels": "resolution", "min_pixels": "resolution", "image_size": "resolution",
}


def _suggest(model: type[BaseModel], loc: tuple[Any, ...], key: str) -> str:
    """A "did you mean" for an unknown key, looked up among the fields of the section it sits in."""
    section: Any = model
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if isinstance(section, type) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        section = field.annotation
    common = COMMON_NAMES.get(key)
    close = [common] if common in section.model_fields else difflib.get_close_matches(
        key, list(section.model_fields), n=1, cutoff=0.5)
    valid = ", ".join(section.model_fields)
    return f"did you mean '{close[0]}'? valid keys: {valid}" if close else f"valid keys: {valid}"


def _line_of(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    """The line of the key at `loc`, or of its nearest section the file has (a default value has no line). A
    part of `loc` the file cannot have (the tag pydantic gives a union's branch: `sft.data.sources.1.sampling`
    is `sft.data.1.sampling` in the file) is passed over."""
    found, path = None, ()
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            found = lines[path]
    return found


def validate_recipe_dict(
    data: dict[str, Any], source: str = "<recipe>", lines: dict[tuple[str, ...], int] | None = None
) -> Recipe:
    """Validate a recipe mapping; raise one ConfigError that lists every problem found.

    A section's broken cross-field rules arrive as one pydantic error (`schema.refuse`); each becomes its own
    Problem at its own dotted key and line, with its fix.
    """
    lines = lines or {}

    def where(loc: tuple[str, ...]) -> str:
        line = _line_of(loc, lines)
        return f"{source}:{line}" if line else source

    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            dotted = ".".join(loc) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(Problem(f"unknown key '{dotted}'", where(loc), _suggest(Recipe, loc, loc[-1])))
            elif err["type"] == RULES_BROKEN:
                for rule in err["ctx"]["problems"]:
                    rule = RuleProblem(*rule)
                    at = (*loc, *rule.key.split(".")) if rule.key else loc
                    problems.append(Problem(f"{'.'.join(at)}: {rule.what}", where(at), rule.fix))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                dotted = dotted.removesuffix(".") or "(top level)"
                got = err.get("input")
                shown = "" if isinstance(got, dict) or err["type"].startswith("value_error") else f" (got {got!r})"
                problems.append(Problem(f"{dotted}: {msg}{shown}", where(loc)))
        raise ConfigError(f"Recipe {source} has {len(problems)} problem(s)", problems) from None


def load_recipe(path: Path | None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
                ) -> Recipe:
    """Load a recipe file (or the defaults when `path` is None), apply `--set` overrides, then typed `values`.

    `values` (`{"sft.data": Path(...), "backbone.name": "..."}`) come last, so a command-line option beats a
    `--set` of the same key, and are set as they are, never parsed as YAML (see `apply_values`).
    """
    data, lines, source = ({}, {}, "<defaults>")
    if path is not None:
        data, lines = read_yaml(path)
        source = str(path)
    data = apply_overrides(data, overrides or [])
    data = apply_values(data, values or {})
    return validate_recipe_dict(data, source, lines)
