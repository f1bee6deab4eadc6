"""Rows held on disk as a memory-mapped Arrow file: paged in as they are read, never all in memory.

`datasets.Dataset.from_list` builds its table in memory, so a stage of a million samples would hold every row's
JSON for the whole run. Here rows are written in batches to an Arrow stream file in a private temporary folder and
opened with `Dataset.from_file`, which maps it. The folder is deleted when the last dataset over that file goes
away, or when the process ends. A view `datasets` makes of a dataset (`select`) maps the file anew and does not
know the folder, so views made here go through `view_of`, which hands the folder on.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

ROWS_PER_BATCH = 4096

Row = dict[str, str | None]


class _TemporaryFolder:
    """A private folder, deleted when the last object holding this goes (or when the process ends)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ecomtune-rows-"))
        weakref.finalize(self, shutil.rmtree, str(self.path), True)


_HOLDS = "_ecomtune_folder"  # the attribute by which a dataset holds its file's folder


def view_of(dataset, view):
    """`view` (a dataset `datasets` made from `dataset`: a selection of rows or columns), holding the folder of
    `dataset`'s file for as long as it lives."""
    setattr(view, _HOLDS, getattr(dataset, _HOLDS, None))
    return view


class RowWriter:
    """Appends rows of string columns (named by the first rows written; a missing value is null) to a new Arrow
    file; `finish()` maps it as a `datasets.Dataset`. A writer that is never finished leaves nothing behind."""

    def __init__(self) -> None:
        self._folder = _TemporaryFolder()
        self._path = self._folder.path / "rows.arrow"
        self._sink = None
        self._writer = None
        self._columns: list[str] = []
        self._schema = None

    def write(self, rows: list[Row]) -> None:
        """Append a batch of rows."""
        if rows:
            names = self._columns or list(rows[0])
            self.write_columns({name: [row.get(name) for row in rows] for name in names})

    def write_columns(self, columns: dict[str, list[str | None]]) -> None:
        """Append a batch of rows given as columns (each a list, all of one length)."""
        import pyarrow as pa

        if not columns or not len(next(iter(columns.values()))):
            return
        if self._writer is None:
            self._columns = list(columns)
            self._schema = pa.schema([(name, pa.string()) for name in self._columns])
            self._sink = pa.OSFile(str(self._path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, self._schema)
        self._writer.write_batch(pa.RecordBatch.from_pydict({name: columns[name] for name in self._columns},
                                                            schema=self._schema))

    def finish(self):
        """The rows written, as a memory-mapped `datasets.Dataset` (no rows: an empty dataset)."""
        from datasets import Dataset

        if self._writer is None:
            return Dataset.from_dict({})
        self._writer.close()
        self._sink.close()
        dataset = Dataset.from_file(str(self._path))
        setattr(dataset, _HOLDS, self._folder)
        return dataset


def mapped_dataset(rows: Iterable[Row]):
    """A `datasets.Dataset` over `rows` (string columns, named by the first row; a missing value is null), memory
    mapped from a temporary Arrow file."""
    writer = RowWriter()
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, ROWS_PER_BATCH)):
        writer.write(batch)
    return writer.finish()
