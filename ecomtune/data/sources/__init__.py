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

from ecomtune.data.sources.base import FORMATS, Converter, OpenedSource
from ecomtune.data.sources.canonical import convert_canonical
from ecomtune.data.sources.detect import FORMAT_FIX, JSON_SUFFIXES, MIXTURE_SUFFIXES, detect_rows, looks_like_hub_id
from ecomtune.data.sources.files import JsonArrayReader, JsonLinesReader
from ecomtune.data.sources.hf import (
    HF_SUFFIXES,
    HfConverter,
    HfReader,
    ecomtune_cache,
    folder_digest,
    hub_digest,
    load_hub,
    load_local,
)
from ecomtune.data.sources.llava import convert_llava
from ecomtune.data.sources.sharegpt import convert_sharegpt
from ecomtune.errors import DataError

__all__ = ["FORMATS", "OpenedSource", "open_source"]

CONVERTERS: dict[str, Converter] = {"canonical": convert_canonical, "llava": convert_llava,
                                    "sharegpt": convert_sharegpt}


def _image_root(image_root: Path | None, default: Path) -> Path:
    """Where relative image paths start: `image_root` when given (it must exist), else `default`."""
    if image_root is None:
        return default.resolve()
    if not Path(image_root).is_dir():
        raise DataError(f"Image folder not found: {image_root}",
                        fix="set image_root to the folder the data's relative image paths start from")
    return Path(image_root).resolve()


def _open_hf(path: Path | None, name: str, image_root: Path | None, split: str) -> OpenedSource:
    if path is None:  # a hub id
        dataset = load_hub(name, split)
        base, digest = _image_root(image_root, Path.cwd()), hub_digest(name, split, dataset)
    else:
        dataset = load_local(path, name, split)
        base = _image_root(image_root, path if path.is_dir() else path.parent)
        digest = folder_digest(path)
    reader = HfReader(dataset, name, digest)
    converter = HfConverter(base, ecomtune_cache() / "images")
    return OpenedSource(name, "hf", reader.rows, base, base, reader, converter.convert)


def open_source(path: str | Path, format: str = "auto", image_root: Path | None = None,
                split: str = "train") -> OpenedSource:
    """Open a data source: a JSONL or JSON file, a Hugging Face dataset folder or parquet / arrow file, or a hub
    id (`owner/name`). `format` is "auto" (detected) or one of FORMATS; `image_root` is where relative image
    paths start (default: the data file's folder); `split` picks a split of a DatasetDict, folder or hub id.
    Raises DataError when the source cannot be opened or its format cannot be told."""
    name = str(path)
    location = Path(path)
    suffix = location.suffix.lower()
    if format not in ("auto", *FORMATS):
        raise DataError(f"Unknown data format {format!r} for {name}", fix=f"use auto, {', '.join(FORMATS)}")
    if suffix in MIXTURE_SUFFIXES:
        raise DataError(f"{name} is a YAML file, not a data source",
                        fix="a mixture YAML lists data sources: give it where the stage takes a mixture, and give "
                        "single sources as .jsonl / .json files, dataset folders, parquet / arrow files or hub ids")
    if not location.exists():
        if format in ("auto", "hf") and looks_like_hub_id(name):
            return _open_hf(None, name, image_root, split)
        raise DataError(f"Data not found: {name}",
                        fix="check the path (relative paths start from the current folder); a hub dataset is "
                        "named owner/name")
    if location.is_dir() or suffix in HF_SUFFIXES:
        if format not in ("auto", "hf"):
            raise DataError(f"{name} is a {'folder' if location.is_dir() else suffix + ' file'}, which format "
                            f"{format!r} does not read", fix="use format hf (or auto) for dataset folders and "
                            "parquet / arrow files")
        return _open_hf(location, name, image_root, split)
    if suffix not in JSON_SUFFIXES:
        raise DataError(f"Cannot tell the format of {name} from its suffix {suffix or '(none)'!r}",
                        fix="give a .jsonl or .json file, a dataset folder, or a .parquet / .arrow file")
    if format == "hf":
        raise DataError(f"{name} is a {suffix} file; format hf reads dataset folders, parquet / arrow files and "
                        "hub ids", fix=f"use auto; or {FORMAT_FIX}")
    reader = JsonLinesReader(location, name) if suffix == ".jsonl" else JsonArrayReader(location, name)
    resolved = detect_rows(reader.first(), name) if format == "auto" else format
    base = _image_root(image_root, location.parent)
    return OpenedSource(name, resolved, reader.rows, base, base, reader, CONVERTERS[resolved])
