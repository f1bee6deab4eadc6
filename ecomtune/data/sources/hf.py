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
import os
import tempfile
from collections.abc import Iterator, Sequence
from io import BytesIO
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image as PILImage

from ecomtune.data.images import UNREADABLE
from ecomtune.data.sources.base import Triple, check_index, files_digest
from ecomtune.data.sources.turns import conversation_record
from ecomtune.errors import DataError, Problem

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


def ecomtune_cache() -> Path:
    """ecomtune's cache folder (`ECOMTUNE_CACHE`, else ~/.cache/ecomtune): the one tiny twins are built in."""
    from ecomtune.backbones.tiny import default_cache_dir

    return default_cache_dir().parent


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


def load_local(path: Path, name: str, split: str) -> Dataset:
    """A dataset folder or file as a `Dataset`: `save_to_disk` folders with `load_from_disk` (a DatasetDict's
    `split`), other folders and single parquet / arrow files with `load_dataset` (conversions are cached in
    ecomtune's cache). A single file has one split, whatever `split` says."""
    import datasets

    cache_dir = str(ecomtune_cache() / "datasets")
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
            return _pick_split(datasets.load_from_disk(str(path)), split, name)
        if path.is_dir():
            if not any(next(path.rglob(f"*{suffix}"), None) for suffix in HF_SUFFIXES):
                raise DataError(f"{name} is a folder without parquet or arrow files, and not a save_to_disk folder",
                                fix="point the data at a .jsonl / .json file, a save_to_disk folder, or a folder of "
                                ".parquet / .arrow files")
            return datasets.load_dataset(str(path), split=split, cache_dir=cache_dir)
        return datasets.load_dataset(HF_SUFFIXES[path.suffix.lower()], data_files=str(path), split="train",
                                     cache_dir=cache_dir)
    except DataError:
        raise
    except _errors() as exc:
        raise DataError(f"Cannot read {name} as a Hugging Face dataset: {_first_line(exc)}",
                        fix="write it with Dataset.save_to_disk or Dataset.to_parquet, or check the split") from None


def load_hub(repo_id: str, split: str) -> Dataset:
    """`datasets.load_dataset(repo_id, split=split)`, failing at once with one message when the hub cannot be
    reached. A process started with HF_HUB_OFFLINE=1 still gets datasets already in the local cache."""
    import datasets

    saved = (f"where there is network, run python -c \"import datasets; datasets.load_dataset('{repo_id}', "
             f"split='{split}').save_to_disk('DIR')\", copy DIR here and point the data at DIR")
    from ecomtune.backbones.loading import _hub_reachable

    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():  # checked the way backbones are: seconds
        raise DataError(f"Cannot load the dataset '{repo_id}': it is not a local path, and the Hugging Face hub is "
                        "not reachable from this machine (HF_HUB_OFFLINE is set, or there is no network)", fix=saved)
    try:
        return datasets.load_dataset(repo_id, split=split)
    except _errors() as exc:
        raise DataError(f"Cannot load the dataset '{repo_id}' from the Hugging Face hub: {_first_line(exc)}",
                        fix=f"check the id and the split, log in (`hf auth login`) for gated datasets; or {saved}",
                        ) from None


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
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
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


class HfConverter:
    """Rows of a Hugging Face dataset as canonical records: image bytes become cache files, text comes from
    `conversations` (from/value) or `messages` (role/content)."""

    def __init__(self, base_dir: Path, cache: Path) -> None:
        self.base_dir, self.cache = base_dir, cache

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
        return conversation_record(row, where, paths)


def folder_digest(path: Path) -> str:
    """sha256 over a dataset folder's data files (sorted by relative name), or over one file."""
    if path.is_file():
        return files_digest([path])
    files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    return files_digest(files, relative_to=path)


def hub_digest(repo_id: str, split: str, dataset: Dataset) -> str:
    return hashlib.sha256(f"{repo_id}\0{split}\0{dataset._fingerprint}".encode()).hexdigest()
