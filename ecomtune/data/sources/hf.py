"""Hugging Face datasets: a folder written by `save_to_disk`, a folder of parquet or arrow files, one such file,
or a hub id. Most public vision-language data (LLaVA-OneVision, The Cauldron, ShareGPT4V) ships this way, with
images stored inside the dataset as bytes.

Images are never decoded by `datasets` (that would decode every picture just to hand it on): rows are read in
Arrow form and decoded by the dataset's own features with every `Image` set to `decode=False`, which gives
`{"bytes", "path"}`. (`cast_column` does the same for an `Image` column, but for a list of images it rewrites
the whole dataset, writing cache files into a `save_to_disk` folder.) The bytes are written once to a
content-addressed file in ecomtune's cache and the record names that file, so `parse_record` checks an image
from bytes exactly as it checks one from disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage

from ecomtune.data.images.load import UNREADABLE
from ecomtune.data.sources.alpaca import convert_alpaca
from ecomtune.data.sources.base import Triple, check_index, files_digest
from ecomtune.data.sources.hf_layout import (
    config_example,
    did_you_mean,
    listed,
    missing_shards,
    read_card,
    subset_folders,
)
from ecomtune.data.sources.turns import conversation_record
from ecomtune.errors import DataError, Problem
from ecomtune.runs.file_modes import write_bytes_atomic
from ecomtune.runtime import cache_root, hub_reachable

if TYPE_CHECKING:
    from datasets import Dataset, Features

HF_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
# Files whose bytes make up a dataset folder, for its fingerprint (images beside it are the rows' business).
DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl")
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what `save_to_disk` leaves in its folder
IMAGE_COLUMNS = ("images", "image")
ROWS_PER_READ = 64
SUFFIX_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg"}
HF_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError)


def _errors() -> tuple[type[BaseException], ...]:
    from datasets.exceptions import DatasetsError

    return (*HF_ERRORS, DatasetsError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def undecoded(features: Features) -> Features:
    """The dataset's features with every `Image` (also inside lists) set to `decode=False`."""
    from datasets import Features

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: visit(value) for key, value in node.items()}
            if node.get("_type") == "Image":
                node["decode"] = False
        elif isinstance(node, list):
            node = [visit(value) for value in node]
        return node

    return Features.from_dict(visit(features.to_dict()))


def _pick_split(loaded: Any, split: str, name: str) -> Dataset:
    from datasets import DatasetDict

    if not isinstance(loaded, DatasetDict):
        return loaded
    if split not in loaded:
        raise DataError(f"{name} has no split {split!r} (splits: {', '.join(loaded)})",
                        fix=f"set the source's split to one of {', '.join(loaded)}")
    return loaded[split]


def load_local(path: Path, name: str, split: str, config: str | None = None) -> tuple[Dataset, list[str]]:
    """A dataset folder or file as a `Dataset`, and notes on what was read (missing shards): `save_to_disk`
    folders with `load_from_disk` (a DatasetDict's `split`), other folders and single parquet / arrow files with
    `load_dataset` (conversions are cached in ecomtune's cache). A single file has one split, whatever `split` says.

    A folder holding several configs (a card listing them, or, without a card, one data folder per subset) is read
    one config at a time, the one `config` names; without it the folder is refused, naming its configs, never read
    as one merged source."""
    import datasets

    cache_dir = str(cache_root() / "datasets")
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
            _no_config(name, config, "a save_to_disk folder")
            return _load_saved(path, split, name), []
        if not path.is_dir():
            _no_config(name, config, f"a single {path.suffix} file")
            if path.suffix.lower() == ".parquet" and _parquet_rows(path) == 0:  # `load_dataset` finds "no data"
                import pyarrow.parquet as pq

                features = datasets.Features.from_arrow_schema(pq.read_schema(path))
                return datasets.Dataset.from_dict({key: [] for key in features}, features=features), []
            return datasets.load_dataset(HF_SUFFIXES[path.suffix.lower()], data_files=str(path), split="train",
                                         cache_dir=cache_dir), []
        if not any(next(path.rglob(f"*{suffix}"), None) for suffix in HF_SUFFIXES):
            raise DataError(f"{name} is a folder without parquet or arrow files, and not a save_to_disk folder",
                            fix="point the data at a .jsonl / .json file, a save_to_disk folder, or a folder of "
                            ".parquet / .arrow files")
        target, args = _config_folder(path, name, config)
        missing, shards = missing_shards(config_data(path, config), split, path)
        dataset = datasets.load_dataset(str(target), *args, split=split, cache_dir=cache_dir,
                                        verification_mode="no_checks" if missing else None)
        return dataset, _shard_notes(path, name, config, split, missing, shards, len(dataset))
    except DataError:
        raise
    except _errors() as exc:
        if type(exc).__name__ == "NonMatchingSplitsSizesError":
            raise DataError(f"{name}{_of(config)}: the rows in its files differ from the split sizes its README.md "
                            f"declares ({_sizes(exc)})",
                            fix="a shard is truncated or the README is of another revision: download the split again "
                            "(`hf download <owner/name> --repo-type dataset --local-dir "
                            f"{path}`), or remove the README's dataset_info if you changed the files on purpose",
                            ) from None
        raise DataError(f"Cannot read {name}{_of(config)} as a Hugging Face dataset: {_first_line(exc)}",
                        fix="check the split (`split:`) and config (`config:`); or write the data with "
                        "Dataset.save_to_disk or Dataset.to_parquet") from None


def _load_saved(path: Path, split: str, name: str) -> Dataset:
    """A `save_to_disk` folder's dataset (a DatasetDict's `split`). An empty dataset is saved without any arrow file,
    which `load_from_disk` cannot open (IndexError): it is read as zero rows with its saved features, so that it
    meets the same "no samples" message as an empty JSONL file."""
    import json

    import datasets

    folder = path
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise DataError(f"{name} has no split {split!r} (splits: {', '.join(splits)})",
                            fix=f"set the source's split to one of {', '.join(splits)}")
        folder = path / split
    state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").is_file() else {}
    if state and not state.get("_data_files"):
        info = json.loads((folder / "dataset_info.json").read_text()) if (folder / "dataset_info.json").is_file() \
            else {}
        features = datasets.Features.from_dict(info["features"]) if info.get("features") else None
        return datasets.Dataset.from_dict({key: [] for key in features or {}}, features=features)
    return _pick_split(datasets.load_from_disk(str(path)), split, name)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _of(config: str | None) -> str:
    return f" (config {config!r})" if config else ""


def _no_config(name: str, config: str | None, what: str) -> None:
    if config is not None:
        raise DataError(f"{name} is {what}, which has no configs, but the source names config {config!r}",
                        fix="remove `config:` from the source, or point it at the folder that holds the configs")


def _config_folder(path: Path, name: str, config: str | None) -> tuple[Path, tuple[str, ...]]:
    """What `load_dataset` reads for `config` of a folder: (folder, extra arguments)."""
    card = read_card(path)
    if card is not None and card.configs:
        if config is None and len(card.configs) > 1:
            raise DataError(
                f"{name} holds {len(card.configs)} configs (subsets) listed in its README.md: "
                f"{listed(card.configs)}; ecomtune never reads them merged as one source",
                fix=f"name one per data source with `config:`, e.g. {config_example(name, card.configs[0])}; each "
                "config then takes its own sampling rule" + (
                    f"; or point the data at one config's folder ({path / card.configs[0]})"
                    if (path / card.configs[0]).is_dir() else ""))
        if config is not None and config not in card.configs:
            raise DataError(f"{name} has no config {config!r}{did_you_mean(config, card.configs)}",
                            fix=f"its README.md lists: {listed(card.configs)}")
        return path, (config,) if config is not None else ()
    subsets = subset_folders(path)
    if config is not None:
        if not (path / config).is_dir():
            raise DataError(f"{name} has no config {config!r}: there is no folder {path / config}"
                            f"{did_you_mean(config, subsets)}",
                            fix=f"its data folders: {listed(subsets)}" if subsets else "remove `config:`")
        return path / config, ()
    if subsets:
        raise DataError(
            f"{name} holds {len(subsets)} subsets, each in a folder of its own ({listed(subsets)}), and no README.md "
            "listing them (what `hf download --include` leaves); ecomtune never reads them merged as one source",
            fix=f"name one per data source with `config:` (its folder), e.g. {config_example(name, subsets[0])}; "
            f"or point the data at one subset's folder ({path / subsets[0]})")
    return path, ()


def config_data(path: Path, config: str | None) -> Path:
    """Where a config's files lie: its own folder in the multi-config layout, else the whole folder."""
    return path / config if config and (path / config).is_dir() else path


def _shard_notes(path: Path, name: str, config: str | None, split: str, missing: list[str], shards: int,
                 rows: int) -> list[str]:
    if not missing:
        return []
    card = read_card(path)
    declared = (card.split_rows.get(config or "default", {}).get(split) if card else None) or None
    of_card = f" of the {declared} its README.md declares" if declared else ""
    command = ("hf download <owner/name> --repo-type dataset --local-dir " + str(path) + " "
               + " ".join(f"--include '{m}'" for m in missing[:3]) + (" ..." if len(missing) > 3 else ""))
    return [f"{name}{_of(config)}: {len(missing)} of the {shards} shards of split {split!r} are missing "
            f"({listed(missing, 5)}): read {rows} rows{of_card}. To train on all of it: {command}"]


def _sizes(exc: BaseException) -> str:
    """`split 'train': N declared, M found` from a NonMatchingSplitsSizesError, whose text is a list of SplitInfo
    reprs (never shown to the user as they are)."""
    import re

    pairs = re.findall(r"'expected': SplitInfo\(name='([^']*)'.*?num_examples=(\d+).*?'recorded': SplitInfo\("
                       r".*?num_examples=(\d+)", str(exc))
    return "; ".join(f"split {name!r}: {declared} declared, {found} found" for name, declared, found in pairs) \
        or "split sizes differ"


def load_hub(repo_id: str, split: str, config: str | None = None) -> Dataset:
    """`datasets.load_dataset(repo_id, config, split=split)`, failing at once with one message when the hub cannot
    be reached. A process started with HF_HUB_OFFLINE=1 still gets datasets already in the local cache."""
    import datasets

    named = f"'{repo_id}', '{config}'" if config else f"'{repo_id}'"
    saved = (f"where there is network, run python -c \"import datasets; datasets.load_dataset({named}, "
             f"split='{split}').save_to_disk('DIR')\", copy DIR here and point the source's path at DIR"
             + (" (no config: the folder holds that config alone)" if config else ""))

    what = f"the dataset '{repo_id}'" + (f", config '{config}'," if config else "")
    if not datasets.config.HF_HUB_OFFLINE and not hub_reachable():  # checked the way backbones are: seconds
        raise DataError(f"Cannot load {what} split '{split}': it is not a local path, and the Hugging Face hub is "
                        "not reachable from this machine (HF_HUB_OFFLINE is set, or there is no network)", fix=saved)
    try:
        return datasets.load_dataset(repo_id, config, split=split)
    except _errors() as exc:
        if "Config name is missing" in str(exc):
            raise DataError(f"{repo_id} has several configs and the source names none: {' '.join(str(exc).split())}",
                            fix=f"name one per data source with `config:`, e.g. "
                            f"{config_example(repo_id, '<config>', split)}") from None
        raise DataError(f"Cannot load {what} split '{split}' from the Hugging Face hub: {_first_line(exc)}",
                        fix=f"check the id, config and split, log in (`hf auth login`) for gated datasets; or "
                        f"{saved}") from None


def image_suffix(data: bytes, original: str | None) -> str:
    """The file suffix for image bytes: from the format Pillow reads in their header, else the original name's."""
    try:
        with PILImage.open(BytesIO(data)) as image:
            found = image.format
    except UNREADABLE:
        found = None
    if found:
        return SUFFIX_OF_FORMAT.get(found, found.lower())
    suffix = Path(original).suffix.lstrip(".").lower() if original else ""
    return suffix if suffix.isalnum() else "bin"


def cache_image(data: bytes, original: str | None, folder: Path) -> Path:
    """The content-addressed cache file holding `data` (`<sha256>.<suffix>`), written once, atomically."""
    target = folder / f"{hashlib.sha256(data).hexdigest()}.{image_suffix(data, original)}"
    if not target.is_file():
        write_bytes_atomic(target, data, sync=False)
    return target


class HfReader:
    """Rows of a `Dataset` by index, images left as `{"bytes", "path"}`; `where` is `name[row N]`."""

    def __init__(self, dataset: Dataset, name: str, fingerprint: str) -> None:
        self.table = dataset.with_format("arrow")
        self.features = undecoded(dataset.features)
        self.name, self.rows, self.digest = name, len(dataset), fingerprint

    def read(self, indices: Sequence[int]) -> Iterator[Triple]:
        pending = iter(indices)
        while chunk := [check_index(i, self.rows, self.name) for i in islice(pending, ROWS_PER_READ)]:
            for index, raw in zip(chunk, self.table[chunk].to_pylist(), strict=True):
                yield f"{self.name}[row {index}]", self.features.decode_example(raw), None

    def fingerprint(self) -> str:
        return self.digest


LAYOUTS_HELP = ("`conversations` (from/value: LLaVA, LLaVA-OneVision) or `messages` (role/content: TRL), `prompt` + "
                "`completion` (TRL), or `instruction` + `output` (LLaMA-Factory alpaca)")


def row_layout(columns: list[str], name: str) -> str:
    """How a dataset's rows hold their conversation, from its columns, checked once per source: "conversation",
    "prompt-completion" or "alpaca"; a DataError naming the columns found and the ways to map them otherwise."""
    found = set(columns)
    if found & {"conversations", "messages"}:
        return "conversation"
    if {"prompt", "completion"} <= found:
        return "prompt-completion"
    if {"instruction", "output"} <= found:
        return "alpaca"
    raise DataError(f"{name} has no columns ecomtune reads a conversation from: its columns are "
                    f"{', '.join(sorted(found)) or '(none)'}; expected {LAYOUTS_HELP}",
                    fix="name your columns with the source's `columns:` mapping, e.g. columns: {messages: "
                    "<conversation column>, images: <image column>} (or {instruction: ..., output: ...})")


class HfConverter:
    """Rows of a Hugging Face dataset as canonical records: image bytes become cache files, text comes from the
    columns `layout` names (see `row_layout`)."""

    def __init__(self, base_dir: Path, cache: Path, layout: str = "conversation") -> None:
        self.base_dir, self.cache, self.layout = base_dir, cache, layout

    def image_path(self, value: Any, where: str) -> tuple[str | None, Problem | None]:
        if isinstance(value, str):  # a plain path column: resolved and checked by parse_record like any path
            return value, None
        data, original = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, None)
        if data:
            return str(cache_image(data, original, self.cache)), None
        if original and (self.base_dir / original).is_file():
            return original, None
        return None, Problem(f"an image has no bytes and no file at its path {original!r}", where,
                             "store the image bytes in the dataset (cast the column to datasets.Image() before "
                             "saving), or set image_root to the folder its paths start from")

    def convert(self, row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
        column = next((c for c in IMAGE_COLUMNS if isinstance(row, dict) and row.get(c) is not None), None)
        value = row[column] if column else []
        paths = []
        for entry in value if isinstance(value, list) else [value]:
            path, problem = self.image_path(entry, where)
            if problem is not None:
                return None, problem
            paths.append(path)
        if self.layout == "prompt-completion":
            record = {"images": paths, "prompt": row["prompt"], "completion": row["completion"]}
            return record, None
        if self.layout == "alpaca":
            record, problem = convert_alpaca(row, where)
            return ({**record, "images": paths} if record is not None else None), problem
        return conversation_record(row, where, paths)


def folder_digest(path: Path) -> str:
    """sha256 over a dataset folder's data files (sorted by relative name), or over one file."""
    if path.is_file():
        return files_digest([path])
    files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    return files_digest(files, relative_to=path)


def hub_digest(repo_id: str, split: str, dataset: Dataset, config: str | None = None) -> str:
    return hashlib.sha256(f"{repo_id}\0{config or ''}\0{split}\0{dataset._fingerprint}".encode()).hexdigest()
