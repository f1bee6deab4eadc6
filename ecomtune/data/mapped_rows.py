"""The rows a trainer reads, as a memory-mapped Arrow file: held on disk, paged in as the steps read them.

`datasets.Dataset.from_list` builds its table in memory, so a stage of a million samples would hold every row's
JSON twice over (the samples, and the table) for the whole run. Here the rows are written in batches to an Arrow
stream file in a private temporary folder and opened with `Dataset.from_file`, which maps it; the folder is deleted
when the dataset object goes away (or the process ends).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

ROWS_PER_BATCH = 4096


def mapped_dataset(rows: Iterable[dict[str, str | None]]):
    """A `datasets.Dataset` over `rows` (string columns, named by the first row; a missing value is null), memory
    mapped from a temporary Arrow file."""
    import pyarrow as pa
    from datasets import Dataset

    folder = Path(tempfile.mkdtemp(prefix="ecomtune-rows-"))
    path = folder / "rows.arrow"
    iterator = iter(rows)
    first = list(itertools.islice(iterator, ROWS_PER_BATCH))
    columns = list(first[0]) if first else []
    schema = pa.schema([(name, pa.string()) for name in columns])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch = first
        while batch:
            writer.write_batch(pa.RecordBatch.from_pylist([{c: row.get(c) for c in columns} for row in batch],
                                                          schema=schema))
            batch = list(itertools.islice(iterator, ROWS_PER_BATCH))
    dataset = Dataset.from_file(str(path))
    weakref.finalize(dataset, shutil.rmtree, str(folder), True)
    return dataset
