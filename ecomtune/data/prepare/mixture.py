"""Mixtures: which rows of each data source a stage takes, by LLaVA-OneVision's sampling rules.

Rules (pure functions of the row count and the seed, so every process of a distributed run takes the same rows):
- `all`: every row;
- `first:N` / `end:N`: the first / last N rows; `random:N`: N rows drawn without replacement, seeded;
- N is a count or a percentage (`first:10%`, rounded up as OneVision does). A count above the rows available
  takes them all (as OneVision does); a percentage above 100% repeats the source: `first:250%` is every row
  twice and then the first half.
An unknown rule is an error: OneVision silently reads a typo as `all`.

The rules' grammar (`SamplingRule`, `parse_rule`) is the recipe's, in `ecomtune.config.sampling`, which checks
each rule as the recipe is read. Bounds, so that a typo cannot start unbounded work: a rule repeats its source at
most MAX_PASSES times (a percentage up to MAX_PASSES * 100%), and a stage's realised mixture holds at most
MAX_MIXTURE_ROWS rows. Both are known from the rules and the sources' row counts alone (`check_mixture_size`),
before a single row is read.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecomtune.config.sampling import SamplingRule, parse_rule

if TYPE_CHECKING:
    import numpy as np

MAX_MIXTURE_ROWS = 100_000_000  # rows of one stage's realised mixture; each costs ~100 bytes of memory, far more
# while the rows are selected, and no published recipe comes near it (the paper's largest stage: ~4M rows)


def select_rows(rule: SamplingRule, available: int, seed: int = 0, salt: str = "") -> np.ndarray:
    """The row indices `rule` takes from `available` rows, in training order (int64). `random` draws with a
    generator seeded by `seed` and `salt` (the stage loader passes the source's place in the mixture and its
    path), so sources of one mixture draw independently and every process draws the same rows."""
    import numpy as np

    wanted = rule.rows_taken(available)
    if available == 0 or wanted == 0:
        return np.zeros(0, dtype=np.int64)
    whole, rest = divmod(wanted, available)
    if rule.kind in ("all", "first"):
        tail = np.arange(rest, dtype=np.int64)
    elif rule.kind == "end":
        tail = np.arange(available - rest, available, dtype=np.int64)
    else:
        tail = np.asarray(sorted(random.Random(f"{seed}:{salt}").sample(range(available), rest)), dtype=np.int64)
    return np.concatenate([np.tile(np.arange(available, dtype=np.int64), whole), tail])


def check_mixture_size(planned: list[tuple[str, SamplingRule, int]], title: str) -> None:
    """Refuse a mixture whose rules realise more than MAX_MIXTURE_ROWS rows; `planned` is (source, rule, rows
    available) per source. It needs the row counts only, so it runs before any row is read or selected."""
    from ecomtune.errors import DataError, Problem

    taken = [rule.rows_taken(rows) for _, rule, rows in planned]
    if sum(taken) <= MAX_MIXTURE_ROWS:
        return
    raise DataError(
        f"{title}: the mixture would realise {sum(taken):,} rows, more than the {MAX_MIXTURE_ROWS:,} a stage "
        "takes (each row is kept, ordered and measured in memory); nothing was read",
        [Problem(f"{rule} of {rows:,} rows takes {n:,}", source) for (source, rule, rows), n
         in zip(planned, taken, strict=True)],
        fix="take fewer rows (first:N, random:N, or a smaller percentage), or split the data over several runs")


ONEVISION_KEYS = {"json_path": "path", "sampling_strategy": "sampling", "image_root": "image_root",
                  "image_folder": "image_root", "format": "format", "config": "config", "split": "split"}
TOP_KEYS = ("datasets", "image_folder", "image_root")


def read_onevision_yaml(path: Path) -> list[dict[str, Any]]:
    """A LLaVA-OneVision mixture YAML (`datasets:` of `json_path` + `sampling_strategy`) as source settings, each
    path relative to the YAML's folder. LLaVA keeps one global image folder (its `--image_folder`): a top-level
    `image_folder` (or `image_root`) here is every entry's, unless the entry names its own; ecomtune also reads
    `format`, `config` and `split` per entry. Any other key is an error naming its line (OneVision ignores typos; a
    silently ignored key loses data), and every json_path or image folder that does not exist is reported at once
    (the released YAMLs name their authors' /mnt/... paths)."""
    import yaml

    from ecomtune.data.sources.detect import looks_like_hub_id
    from ecomtune.errors import ConfigError, Problem

    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read the mixture {path}: {str(exc).splitlines()[0]}",
                          fix="a mixture YAML has `datasets:`, a list of {json_path, sampling_strategy}") from None
    fix = "write `datasets:` as a list of entries with json_path and sampling_strategy (LLaVA-OneVision's format)"
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise ConfigError(f"{path} is not a mixture: it needs a non-empty `datasets:` list", fix=fix)
    problems = [Problem(f"unknown top-level key '{key}' (known: {', '.join(TOP_KEYS)})", str(path), fix)
                for key in data if key not in TOP_KEYS]
    folder = Path(path).parent
    shared = data.get("image_folder", data.get("image_root"))
    top = {k.value: k for k, _ in node.value}
    if shared is not None:
        shared = str(folder / str(shared))  # an absolute folder stays as it is
        if not Path(shared).is_dir():
            key = "image_folder" if "image_folder" in data else "image_root"
            problems.append(Problem(f"image folder not found: {shared}", f"{path}:{top[key].start_mark.line + 1}",
                                    "give the folder the data's relative image paths start from (LLaVA's "
                                    "--image_folder)"))
    entries = next(v for k, v in node.value if k.value == "datasets").value
    sources = []
    for entry, entry_node in zip(data["datasets"], entries, strict=True):
        where = f"{path}:{entry_node.start_mark.line + 1}"
        if not isinstance(entry, dict) or "json_path" not in entry:
            problems.append(Problem("entry has no json_path", where, fix))
            continue
        unknown = [k for k in entry if k not in ONEVISION_KEYS]
        problems += [Problem(f"unknown key '{k}' (known: {', '.join(ONEVISION_KEYS)})", where) for k in unknown]
        source = {ONEVISION_KEYS[k]: v for k, v in entry.items() if k in ONEVISION_KEYS}
        for key in ("path", "image_root"):
            relative = key in source and not Path(str(source[key])).is_absolute()
            hub_id = key == "path" and relative and looks_like_hub_id(str(source[key])) \
                and not (folder / str(source[key])).exists()
            if relative and not hub_id:
                source[key] = str(folder / str(source[key]))
        if "image_root" not in source and shared is not None:
            source["image_root"] = shared
        located = str(source["path"]).split("#", 1)[0]
        if not Path(located).exists() and not looks_like_hub_id(str(entry["json_path"])):
            problems.append(Problem(f"json_path not found: {located}", where,
                                    "download the file, or write json_path relative to the YAML's folder"))
        if "image_root" in source and source["image_root"] != shared and not Path(source["image_root"]).is_dir():
            problems.append(Problem(f"image folder not found: {source['image_root']}", where,
                                    "give the folder the entry's relative image paths start from"))
        try:
            parse_rule(source.get("sampling", "all"))
        except ValueError as exc:
            problems.append(Problem(str(exc), where))
        sources.append(source)
    if problems:
        raise ConfigError(f"Mixture {path} has {len(problems)} problem(s)", problems)
    return sources
