"""A stage's samples on disk, so that a million of them do not live in memory as Python objects.

A `Sample` costs about 4-5 KiB as objects (its messages, image paths, token ids). A stage keeps its samples from
the first read to the last training step, so at a million samples that is ~5 GiB held for nothing: each step reads
a handful. A `SampleStore` keeps them as rows of a memory-mapped Arrow file (`mapped_rows`) and in memory only the
per-sample facts every later step reads whole: images per sample and which source it came from. Everything else
is read back a batch at a time (`chunks`) or by index (a `Sample` made on each access).

A store's rows are the trainer's rows (`Sample.to_row`, plus each image's displayed size), so a stage trains on its
store directly, through a `select` of the samples it keeps: no copy.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import orjson

from ecomtune.data.prepare.mapped_rows import RowWriter, view_of
from ecomtune.data.schema import Sample

Size = tuple[int, int]
ROWS_PER_READ = 4096


COLUMNS = ("images", "messages", "source", "text", "sizes")  # `Sample.to_row`'s, then each image's size


def _row(sample: Sample, sizes: Sequence[Size] | None) -> dict[str, str | None]:
    row = sample.to_row()
    row.setdefault("text", None)
    row["sizes"] = None if sizes is None else orjson.dumps(list(sizes)).decode()
    return row


class SampleWriter:
    """Samples appended a batch at a time (`add`); `finish()` gives the `SampleStore` over them."""

    def __init__(self) -> None:
        self._rows = RowWriter()
        self._images = array("I")
        self._origins = array("I")

    def add(self, samples: Sequence[Sample], sizes: Sequence[Sequence[Size] | None] | None = None) -> None:
        """Append `samples`; `sizes`: each one's images' displayed sizes, when known (measured without decoding)."""
        sizes = sizes if sizes is not None else [None] * len(samples)
        self._rows.write([_row(s, z) for s, z in zip(samples, sizes, strict=True)])
        self._images.extend(len(s.images) for s in samples)
        self._origins.extend(s.origin for s in samples)

    def add_columns(self, columns: dict[str, list[str | None]], image_counts: Sequence[int],
                    origins: Sequence[int]) -> None:
        """Append rows as a store's `column_chunks` gives them (the store's columns, as JSON text)."""
        self._rows.write_columns({name: columns.get(name) or [None] * len(image_counts) for name in COLUMNS})
        self._images.extend(image_counts)
        self._origins.extend(origins)

    def finish(self) -> SampleStore:
        return SampleStore(self._rows.finish(), self._images, self._origins)


class SampleStore(Sequence[Sample]):
    """Samples held as memory-mapped rows (see the module docstring); indexing makes a `Sample`."""

    def __init__(self, rows, image_counts: array, origins: array) -> None:
        self.rows = rows  # a datasets.Dataset, columns images, messages, source, text, sizes
        self.image_counts = image_counts
        self.origins = origins

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> SampleStore:
        """A store holding `samples` (any iterable: they are written a batch at a time)."""
        writer = SampleWriter()
        batch: list[Sample] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == ROWS_PER_READ:
                writer.add(batch)
                batch = []
        writer.add(batch)
        return writer.finish()

    def __len__(self) -> int:
        return len(self.image_counts)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return self._samples(range(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return _sample(self.rows[index], self.origins[index])

    def __iter__(self) -> Iterator[Sample]:
        for chunk in self.chunks():
            yield from chunk

    def chunks(self, size: int = ROWS_PER_READ) -> Iterator[list[Sample]]:
        """Every sample, in order, `size` at a time."""
        for samples, _sizes in self.sized_chunks(size):
            yield samples

    def sized_chunks(self, size: int = ROWS_PER_READ) -> Iterator[tuple[list[Sample], list[list[Size] | None]]]:
        """Every sample with its images' displayed sizes (None where the store was not told), `size` at a time."""
        for columns, _counts, origins in self.column_chunks(size):
            samples = _samples_of(columns, origins)
            yield samples, [None if z is None else [tuple(s) for s in orjson.loads(z)] for z in columns["sizes"]]

    def column_chunks(self, size: int = ROWS_PER_READ) -> Iterator[tuple[dict[str, list], array, array]]:
        """Every row as stored, `size` at a time: (columns of JSON text, images per sample, origins)."""
        for start in range(0, len(self), size):
            yield self.rows[start:start + size], self.image_counts[start:start + size], \
                self.origins[start:start + size]

    def _samples(self, indices: Sequence[int]) -> list[Sample]:
        if not indices:
            return []
        return _samples_of(self.rows[list(indices)], [self.origins[i] for i in indices])

    def rows_at(self, indices: Sequence[int]) -> list[dict[str, str | None]]:
        """The trainer's rows (`Sample.to_row`) of the samples at `indices`, in that order, read in one go."""
        if not indices:
            return []
        columns = self.rows.select_columns(["images", "messages", "source", "text"])[list(indices)]
        names = list(columns)
        return [{name: columns[name][i] for name in names if columns[name][i] is not None or name != "text"}
                for i in range(len(indices))]

    def locations(self, indices: Sequence[int]) -> list[str]:
        """Where each sample at `indices` came from (`file:line`), for messages."""
        if not indices:
            return []
        return list(self.rows.select_columns(["source"])[list(indices)]["source"])

    def image_paths(self) -> Iterator[list]:
        """Each sample's image references (paths, or crops and grids of them), read a batch at a time."""
        images = self.rows.select_columns(["images"])
        for start in range(0, len(self), ROWS_PER_READ):
            yield from (orjson.loads(value) for value in images[start:start + ROWS_PER_READ]["images"])

    def select(self, indices: Sequence[int]) -> SampleStore:
        """The samples at `indices` (repeats allowed), as a store over the same file: nothing is copied."""
        picked = list(indices)
        rows = view_of(self.rows, self.rows.select(picked))
        return SampleStore(rows, array("I", (self.image_counts[i] for i in picked)),
                           array("I", (self.origins[i] for i in picked)))


def _sample(row: dict, origin: int) -> Sample:
    sample = Sample.from_row(row)
    sample.origin = origin
    return sample


def _samples_of(columns: dict[str, list], origins: Sequence[int]) -> list[Sample]:
    names = list(columns)
    return [_sample({name: columns[name][i] for name in names}, origin) for i, origin in enumerate(origins)]
