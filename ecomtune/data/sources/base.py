"""What every data source is to the stage loader: rows it can count and fetch by index, converted to ecomtune's
canonical record, and a fingerprint that says when its files change.

A source is split in two so that each format is small: a *reader* knows a storage (JSONL lines, a JSON array,
an Arrow dataset) and hands out raw rows with their location; a *row format* (`RowFormat`: canonical, LLaVA,
ShareGPT, alpaca, each one module) knows a row layout: whether a row is written in it, and how to turn one row
into a record. Neither validates: `parse_record` checks
every record afterwards, whatever its origin, so images from bytes and images from files meet the same checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecomtune.errors import Problem

CHUNK = 1 << 20

# (where, record or None, problem or None): the contract of `read_jsonl`, kept by every source.
Triple = tuple[str, Any, Problem | None]
# One raw row and its location -> (canonical record, None) or (None, why the row cannot be converted).
Converter = Callable[[Any, str], tuple[Any, Problem | None]]


@dataclass(frozen=True)
class RowFormat:
    """One way the world writes a JSON row, as one unit: its name (a source's `format:`), whether a row is written
    in it (for `format: auto`), and how a row becomes a canonical record. `ecomtune.data.sources.formats.FORMATS`
    lists them; detection, `open_source` and the names a source may give all read that list."""

    name: str
    claims: Callable[[dict[str, Any]], bool]  # an object row: is it written in this format?
    convert: Converter
    # Detection asks formats in rank order (ties: in list order) and the first that claims a row wins; a format
    # whose keys overlap another's (canonical's `messages` / `prompt`) ranks after the more specific ones.
    detect_rank: int = 1


class RowReader(Protocol):
    """Raw rows of one storage, fetched by 0-based index."""

    rows: int

    def read(self, indices: Sequence[int]) -> Iterator[Triple]:
        """(where, raw row or None, problem or None) for each index, in the order given."""
        ...

    def fingerprint(self) -> str: ...


@dataclass
class OpenedSource:
    """A data source ready to be read: its rows, where its relative image paths start, and its fingerprint."""

    name: str  # the path or hub id as the user gave it
    format: str  # a RowFormat's name, or "hf"
    rows: int
    base_dir: Path  # where relative image paths start (image_root, else the data file's folder)
    root: Path  # folder relative image paths may not leave (same as base_dir)
    reader: RowReader = field(repr=False)
    convert: Converter = field(repr=False)
    notes: list[str] = field(default_factory=list)  # what reading changes or leaves out, said once per stage

    def records(self, indices: Sequence[int]) -> Iterator[Triple]:
        """For each index, in order (an index may repeat): (where, canonical record or None, problem or None)."""
        for where, row, problem in self.reader.read(indices):
            if problem is not None:
                yield where, None, problem
                continue
            record, problem = self.convert(row, where)
            yield where, record, problem

    def fingerprint(self) -> str:
        """sha256 over the source's data (see each reader): it changes when the data changes."""
        return self.reader.fingerprint()


def check_index(index: int, rows: int, name: str) -> int:
    """A row index as an int, or IndexError naming the source: asking for a row that is not there is a bug of
    the caller, not a data problem."""
    if not 0 <= index < rows:
        raise IndexError(f"row {index} of {name}: it has {rows} row(s)")
    return int(index)


def files_digest(files: Iterable[Path], relative_to: Path | None = None) -> str:
    """sha256 over files' bytes, in the order given; with `relative_to`, each file's relative name is hashed too,
    so renaming a shard of a folder changes the digest."""
    digest = hashlib.sha256()
    for path in files:
        if relative_to is not None:
            digest.update(path.relative_to(relative_to).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
