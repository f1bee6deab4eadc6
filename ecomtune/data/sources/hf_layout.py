"""How a Hugging Face dataset folder is laid out: which configs (subsets) it holds, which split sizes its card
declares, and which parquet shards of a split are missing.

A repository downloaded with `hf download` (or `huggingface-cli download --include ...`) keeps the hub's layout:
a README.md whose front matter lists `configs:` (each a `config_name` with `data_files`) and `dataset_info:` (per
config: features and split sizes), and parquet shards named `<split>-<i>-of-<n>.parquet`. Multi-config releases
such as lmms-lab/LLaVA-OneVision-Data put each config in its own folder (`<config>/train-00000-of-00002.parquet`).
`datasets.load_dataset` on such a folder without its README would read every parquet file below it as one split:
many subsets silently merged. These helpers let the reader refuse that and name the configs instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHARD = re.compile(r"^(?P<split>[\w.]+?)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
DATA_SUFFIXES = (".parquet", ".arrow")
# folder names `datasets` reads as a split or as the plain data folder, not as a subset
SPLIT_FOLDERS = {"data", "train", "test", "validation", "valid", "val", "dev", "eval", "training", "testing"}


@dataclass(frozen=True)
class Card:
    """What a dataset card's front matter says: its configs (in order) and, per config, its split sizes."""

    configs: tuple[str, ...]
    split_rows: dict[str, dict[str, int]]


def read_card(folder: Path) -> Card | None:
    """The README.md front matter of a dataset folder, None when there is none (or it is not YAML)."""
    import yaml

    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    configs = tuple(str(c["config_name"]) for c in meta.get("configs") or [] if isinstance(c, dict)
                    and "config_name" in c)
    infos = meta.get("dataset_info") or []
    infos = [infos] if isinstance(infos, dict) else infos
    split_rows: dict[str, dict[str, int]] = {}
    for info in infos:
        if isinstance(info, dict):
            split_rows[str(info.get("config_name", "default"))] = {
                str(s.get("name")): int(s.get("num_examples", 0)) for s in info.get("splits") or []
                if isinstance(s, dict)}
    return Card(configs, split_rows)


def subset_folders(folder: Path) -> list[str]:
    """First-level folders holding data files, when there are several and they are not split folders: the layout
    of a multi-config download whose README is missing."""
    found = sorted({p.relative_to(folder).parts[0] for suffix in DATA_SUFFIXES for p in folder.rglob(f"*{suffix}")
                    if len(p.relative_to(folder).parts) > 1 and not p.relative_to(folder).parts[0].startswith(".")})
    if len(found) < 2 or all(name.lower() in SPLIT_FOLDERS for name in found):
        return []
    return found


def missing_shards(folder: Path, split: str, root: Path) -> tuple[list[str], int]:
    """The shards of `split` named `<split>-<i>-of-<n>.parquet` under `folder` that are absent (relative to the
    dataset's `root`, as `--include` takes them), and how many shards the split has (0 when its files are not named
    that way)."""
    present: dict[tuple[Path, int], set[int]] = {}
    for path in folder.rglob("*.parquet"):
        match = SHARD.match(path.name)
        if match and match["split"] == split:
            present.setdefault((path.parent, int(match["total"])), set()).add(int(match["index"]))
    missing, total = [], 0
    for (parent, count), indices in sorted(present.items()):
        total += count
        missing += [(parent / f"{split}-{i:05d}-of-{count:05d}.parquet").relative_to(root).as_posix()
                    for i in range(count) if i not in indices]
    return missing, total


def did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def listed(names: tuple[str, ...] | list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def config_example(name: str, config: str, split: str = "train") -> str:
    """How a data source names one config, as a recipe writes it."""
    extra = f", split: {split}" if split != "train" else ""
    return f"`- {{path: {name}, config: {config!r}{extra}}}`"


