"""Data sources: the formats the world writes vision-language data in (ecomtune's JSONL, LLaVA, ShareGPT,
Hugging Face datasets), each opened as rows that convert to ecomtune's canonical record.

Sources only convert; they never validate. The stage loader passes every record through `parse_record` with the
source's `base_dir` and `root`, so a record is checked the same way whichever format it came from. A row that
cannot be converted at all (not an object, a tool-call turn, an image with neither bytes nor a file) is a
`Problem` with its location, reported with the rest.

    source = open_source("llava_v1_5_mix665k.json", image_root=Path("images"))
    for where, record, problem in source.records(range(source.rows)):
        ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecomtune.data.sources.base import Converter, OpenedSource
from ecomtune.data.sources.detect import JSON_SUFFIXES, MIXTURE_SUFFIXES, detect_rows, format_fix, looks_like_hub_id
from ecomtune.data.sources.files import JsonArrayReader, JsonLinesReader
from ecomtune.data.sources.formats import HF, format_names, named_format
from ecomtune.data.sources.hf import (
    HF_SUFFIXES,
    HfConverter,
    HfReader,
    config_data,
    folder_digest,
    hub_digest,
    load_hub,
    load_local,
    row_layout,
)
from ecomtune.data.sources.in_memory import PREFIX as IN_MEMORY
from ecomtune.data.sources.in_memory import HeldRows, RecordsReader, held_rows, not_held
from ecomtune.data.sources.llamafactory import TAG_DEFAULTS, retagged_turns
from ecomtune.errors import DataError, Problem
from ecomtune.runtime import cache_root

__all__ = ["OpenedSource", "format_names", "open_source"]


def _image_root(image_root: Path | None, default: Path) -> Path:
    """Where relative image paths start: `image_root` when given (it must exist), else `default`."""
    if image_root is None:
        return default.resolve()
    if not Path(image_root).is_dir():
        raise DataError(f"Image folder not found: {image_root}",
                        fix="set image_root to the folder the data's relative image paths start from")
    return Path(image_root).resolve()


def _open_hf(path: Path | None, name: str, image_root: Path | None, split: str, config: str | None,
             columns: dict[str, str] | None, tags: dict[str, str] | None = None) -> OpenedSource:
    notes: list[str] = []
    if path is None:  # a hub id
        dataset = load_hub(name, split, config)
        base, digest = _image_root(image_root, Path.cwd()), hub_digest(name, split, dataset, config)
    else:
        dataset, notes = load_local(path, name, split, config)
        base = _image_root(image_root, path if path.is_dir() else path.parent)
        digest = folder_digest(config_data(path, config))
    shown = f"{name} (config {config})" if config else name
    return _dataset_source(dataset, shown, shown, digest, base, columns, tags, notes)


def _dataset_source(dataset, shown: str, label: str, digest: str, base: Path, columns: dict[str, str] | None,
                    tags: dict[str, str] | None, notes: list[str] | None = None) -> OpenedSource:
    """A `datasets.Dataset`, from disk, the hub or memory, as a source: its columns (through the source's `columns`
    mapping, checked against them) say the layout. `label` names its rows in problems."""
    mapped = [next((ours for ours, theirs in (columns or {}).items() if theirs == c), c) for c in dataset.column_names]
    missing = [theirs for theirs in (columns or {}).values() if theirs not in dataset.column_names]
    if missing:
        raise DataError(f"{shown}: the source's columns mapping names {', '.join(missing)}, which it does not have "
                        f"(its columns: {', '.join(dataset.column_names)})", fix="map to columns the data has")
    layout = row_layout(mapped, shown) if len(dataset) else "conversation"  # no rows: the "no samples" message
    reader = HfReader(dataset, label, digest)
    converter = HfConverter(base, cache_root() / "images", layout)
    return OpenedSource(shown, HF, reader.rows, base, base, reader, renamed(converter.convert, columns, tags),
                        notes or [])


def _open_held(held: HeldRows, format: str, image_root: Path | None, columns: dict[str, str] | None,
               tags: dict[str, str] | None) -> OpenedSource:
    """Rows held in memory (`in_memory`): a Dataset read like one from disk (its columns say the layout), a list of
    rows like a JSON file (its first row says the format). Relative image paths start from `image_root`, else the
    current folder."""
    base = _image_root(image_root, Path.cwd())
    if held.is_dataset:
        if format not in ("auto", HF):
            raise DataError(f"{held.name} is a datasets.Dataset, which format {format!r} does not read",
                            fix="use format hf (or auto) for a Dataset")
        return _dataset_source(held.rows, held.name, "dataset", held.fingerprint, base, columns, tags)
    label = held.name.removeprefix(IN_MEMORY).partition("-")[0]
    rows = RecordsReader(held.rows, label, held.fingerprint, cache_root() / "images")
    first = rows.first()
    if isinstance(first, dict):
        first = with_our_columns(first, columns)
    resolved = detect_rows(first, held.name) if format in ("auto", HF) else format
    convert = renamed(named_format(resolved).convert, columns, tags)
    return OpenedSource(held.name, resolved, rows.rows, base, base, rows, convert)


def renamed(convert: Converter, columns: dict[str, str] | None, tags: dict[str, str] | None = None) -> Converter:
    """`convert` applied to rows whose mapped columns carry ecomtune's names (`columns`: ecomtune name -> the data's
    column) and whose turns use `from`/`value` when `tags` names other keys (LLaMA-Factory's sharegpt tags); the one
    place a source's `columns:` and `tags:` act, for every format."""
    if not columns and not tags:
        return convert
    def convert_renamed(row: Any, where: str) -> tuple[Any, Problem | None]:
        if isinstance(row, dict):
            row = with_our_columns(row, columns)
            if tags:
                row = {**row, **{key: retagged_turns(row[key], {**TAG_DEFAULTS, **tags})
                                 for key in ("conversations", "messages") if key in row}}
        return convert(row, where)

    return convert_renamed


def with_our_columns(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    """`row` with the data's columns renamed to ecomtune's (`columns`: ecomtune name -> the data's column)."""
    if not columns:
        return row
    theirs = set(columns.values())
    return {**{k: v for k, v in row.items() if k not in theirs},
            **{ours: row[column] for ours, column in columns.items() if column in row}}


def open_source(path: str | Path, format: str = "auto", image_root: Path | None = None,
                split: str = "train", config: str | None = None,
                columns: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> OpenedSource:
    """Open a data source: a JSONL or JSON file, a Hugging Face dataset folder or parquet / arrow file, or a hub
    id (`owner/name`). `format` is "auto" (detected) or one of `format_names()`; `image_root` is where relative image
    paths start (default: the data file's folder); `split` and `config` pick a split and a config (subset) of a
    Hugging Face dataset; `columns` maps ecomtune's names to the data's columns, `tags` names the turn keys and
    speakers of ShareGPT data written otherwise (LLaMA-Factory's tags).
    Raises DataError when the source cannot be opened or its format cannot be told."""
    name = str(path)
    if format not in ("auto", *format_names()):
        raise DataError(f"Unknown data format {format!r} for {name}", fix=f"use auto, {', '.join(format_names())}")
    if name.startswith(IN_MEMORY):
        held = held_rows(name)
        if held is None:
            raise not_held(name)
        return _open_held(held, format, image_root, columns, tags)
    location = Path(path)
    suffix = location.suffix.lower()
    if suffix in MIXTURE_SUFFIXES:
        raise DataError(f"{name} is a YAML file, not a data source",
                        fix="a mixture YAML lists data sources: give it where the stage takes a mixture, and give "
                        "single sources as .jsonl / .json files, dataset folders, parquet / arrow files or hub ids")
    if not location.exists():
        if format in ("auto", HF) and looks_like_hub_id(name):
            return _open_hf(None, name, image_root, split, config, columns, tags)
        raise DataError(f"Data not found: {name}",
                        fix="check the path (relative paths start from the current folder); a hub dataset is "
                        "named owner/name")
    if location.is_dir() or suffix in HF_SUFFIXES:
        if format not in ("auto", HF):
            raise DataError(f"{name} is a {'folder' if location.is_dir() else suffix + ' file'}, which format "
                            f"{format!r} does not read", fix="use format hf (or auto) for dataset folders and "
                            "parquet / arrow files")
        return _open_hf(location, name, image_root, split, config, columns, tags)
    if suffix not in JSON_SUFFIXES:
        raise DataError(f"Cannot tell the format of {name} from its suffix {suffix or '(none)'!r}",
                        fix="give a .jsonl or .json file, a dataset folder, or a .parquet / .arrow file")
    if format == HF:
        raise DataError(f"{name} is a {suffix} file; format hf reads dataset folders, parquet / arrow files and "
                        "hub ids", fix=f"use auto; or {format_fix()}")
    if config is not None:
        raise DataError(f"{name} is a {suffix} file, which has no configs, but the source names config {config!r}",
                        fix="remove `config:` (configs are subsets of Hugging Face datasets)")
    reader = JsonLinesReader(location, name) if suffix == ".jsonl" else JsonArrayReader(location, name)
    first = reader.first()
    if isinstance(first, dict):  # the format is told from the row the converter will get
        first = with_our_columns(first, columns)
    resolved = detect_rows(first, name) if format == "auto" else format
    base = _image_root(image_root, location.parent)
    convert = renamed(named_format(resolved).convert, columns, tags)
    return OpenedSource(name, resolved, reader.rows, base, base, reader, convert)
