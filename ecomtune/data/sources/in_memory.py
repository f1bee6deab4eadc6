"""Rows a program holds in memory, as a data source: a list of records (dicts), a `datasets.Dataset` or an
`IterableDataset`, the way a notebook holds data.

Nothing is written to a file that would pass for the user's: the rows are held under a name made of their
fingerprint (`in-memory:records-<sha256>`), the stage's `data` names that, and `open_source` reads the rows
through the same converters and the same `parse_record` checks as a file. A problem names the row by its index
(`records[3]`, `dataset[row 3]`) where a file would name file:line. The manifest records the name and the
fingerprint, so two runs on the same rows have the same data record (and a run resumes on the same rows).

    with holding(records) as name:   # `name` goes where a path would: a stage's `data`, `open_source`
        source = open_source(name)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from ecomtune.data.sources.base import Triple, check_index
from ecomtune.errors import DataError, Problem

PREFIX = "in-memory:"
IMAGE_KEYS = ("images", "image")


@dataclass
class HeldRows:
    """Rows held under a name: a list of Python rows, or a `datasets.Dataset` read in Arrow form."""

    name: str
    rows: Any  # list[Any] | datasets.Dataset
    fingerprint: str
    holders: int = 0

    @property
    def is_dataset(self) -> bool:
        return not isinstance(self.rows, list)


_HELD: dict[str, HeldRows] = {}


def is_in_memory(data: Any) -> bool:
    """Whether `data` is rows in memory (a list of records, a Dataset, an IterableDataset) rather than a path."""
    return isinstance(data, list) or _dataset_kind(data) is not None


def _dataset_kind(data: Any) -> str | None:
    """"Dataset" or "IterableDataset" for the `datasets` classes (looked up by name: importing `datasets` to ask
    would cost seconds), else None."""
    for cls in type(data).__mro__:
        if cls.__module__.startswith("datasets.") and cls.__name__ in ("Dataset", "IterableDataset"):
            return cls.__name__
    return None


def _hold(data: Any) -> HeldRows:
    kind = _dataset_kind(data)
    if kind == "IterableDataset":  # read once: a stream has no length and cannot be indexed
        data, label = list(data), "dataset"
    elif kind == "Dataset":
        label = "dataset"
    elif isinstance(data, list):
        label = "records"
    else:
        raise DataError(f"data in memory must be a list of records, a datasets.Dataset or an IterableDataset, not "
                        f"{type(data).__name__}", fix="pass a path, a list of dicts, or a datasets.Dataset")
    digest = _dataset_digest(data) if kind == "Dataset" else _rows_digest(data)
    name = f"{PREFIX}{label}-{digest[:16]}"
    return _HELD.get(name) or HeldRows(name, data, digest)


@contextmanager
def holding(data: Any) -> Iterator[str]:
    """Hold `data` under its name for as long as the block runs (the same rows held twice share one entry)."""
    held = _hold(data)
    _HELD[held.name] = held
    held.holders += 1
    try:
        yield held.name
    finally:
        held.holders -= 1
        if held.holders == 0:
            _HELD.pop(held.name, None)


def held_rows(name: str) -> HeldRows | None:
    """The rows held under `name`, None when `name` names none (a path, or rows no longer held)."""
    return _HELD.get(name) if name.startswith(PREFIX) else None


def not_held(name: str) -> DataError:
    return DataError(f"{name} names rows held in memory by an earlier call, which are no longer held",
                     fix="pass the rows themselves (data=records) in the call that reads them")


def _rows_digest(rows: list[Any]) -> str:
    """sha256 over every row as canonical JSON (keys sorted; image objects and bytes by the sha256 of their
    bytes), so equal rows give equal names in any process."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=_json_value).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tobytes") and hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        return {"image": hashlib.sha256(value.tobytes()).hexdigest(), "size": list(value.size), "mode": value.mode}
    return repr(value)


def _dataset_digest(dataset: Any) -> str:
    """The Dataset's own fingerprint (`datasets` derives it from its data and every transform applied)."""
    return hashlib.sha256(f"dataset\0{dataset._fingerprint}".encode()).hexdigest()


class RecordsReader:
    """Rows of a Python list, by index; `where` is `label[N]` (`records[3]`), or `dataset[row N]` for the rows of an
    IterableDataset. Images held as objects (PIL images, bytes, `{"bytes", "path"}`) become files in ecomtune's
    image cache, content-addressed, so `parse_record` checks them as it checks any image file."""

    def __init__(self, rows: list[Any], label: str, fingerprint: str, cache: Path) -> None:
        self.data, self.label, self.digest, self.cache = rows, label, fingerprint, cache
        self.rows = len(rows)

    def where(self, index: int) -> str:
        return f"dataset[row {index}]" if self.label == "dataset" else f"{self.label}[{index}]"

    def first(self) -> Any:
        return self.data[0] if self.data else None

    def read(self, indices: Sequence[int]) -> Iterator[Triple]:
        for index in indices:
            index = check_index(index, self.rows, self.label)
            where = self.where(index)
            row, problem = self._with_image_files(self.data[index], where)
            yield where, row, problem

    def fingerprint(self) -> str:
        return self.digest

    def _with_image_files(self, row: Any, where: str) -> tuple[Any, Problem | None]:
        if not isinstance(row, dict):
            return row, None
        for key in IMAGE_KEYS:
            value = row.get(key)
            values = value if isinstance(value, list) else [value]
            if value is None or all(isinstance(v, str | Path) for v in values):
                continue
            files = []
            for image in values:
                path, problem = self._image_file(image, where)
                if problem is not None:
                    return None, problem
                files.append(path)
            row = {**row, key: files if isinstance(value, list) else files[0]}
        return row, None

    def _image_file(self, image: Any, where: str) -> tuple[str | None, Problem | None]:
        from ecomtune.data.sources.hf import cache_image

        if isinstance(image, str | Path):
            return str(image), None
        if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: stored as PNG, lossless
            buffer = BytesIO()
            image.save(buffer, format="PNG")
            return str(cache_image(buffer.getvalue(), None, self.cache)), None
        data, original = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
        if isinstance(data, bytes | bytearray) and data:
            return str(cache_image(bytes(data), original, self.cache)), None
        if isinstance(original, str):
            return original, None
        return None, Problem(f"an image is a {type(image).__name__}, not a path, a PIL image or bytes", where,
                             "give each image as a file path, a PIL image or its bytes")
