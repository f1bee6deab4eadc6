"""A stage's samples from its mixture: open each source, take its rows by its sampling rule, convert, validate.

Readers convert (`ecomtune.data.sources`), the mixture rule picks rows (`ecomtune.data.prepare.mixture`), and every
record is checked by the one validator (`parse_record`), whatever format it came from; all problems of all sources are
reported together. Only the rows a rule takes are converted and checked. The samples go to a `SampleStore` on
disk as each batch of records is checked, so a stage of a million samples does not hold them in memory. The result
keeps, per source, what was available and what was taken, for `ecomtune plan` and the manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecomtune.config.sampling import parse_rule
from ecomtune.config.schema import DataSource
from ecomtune.data.images.checks import check_files
from ecomtune.data.images.strategies import ref_paths, ref_size
from ecomtune.data.prepare.cache import PrepCache, opened_cache
from ecomtune.data.prepare.mixture import check_mixture_size, read_onevision_yaml, select_rows
from ecomtune.data.prepare.parallel import progress, worker_count, worker_pool
from ecomtune.data.prepare.sample_store import SampleStore, SampleWriter
from ecomtune.data.schema import (
    MAX_REPORTED,
    Sample,
    forget_folders,
    parse_record,
    presented_with_problems,
    resolve_image_path,
)
from ecomtune.data.sources import open_source
from ecomtune.data.sources.detect import MIXTURE_SUFFIXES
from ecomtune.errors import ConfigError, DataError, Problem

if TYPE_CHECKING:
    import numpy as np

    from ecomtune.backbones.spec import BackboneSpec
    from ecomtune.config.schema import ImageSettings

RECORDS_PER_BATCH = 4096  # records read, their images decoded (in parallel), then parsed, at a time


@dataclass
class SourceUse:
    """One source of a stage's mixture: what it offered and what the stage took."""

    path: str
    format: str
    available: int
    sampling: str
    taken: int
    sha256: str
    tokens: int = 0  # filled once the samples are measured
    share: float = 0.0  # of the stage's tokens


@dataclass
class StageSamples:
    samples: SampleStore  # as the multi-image strategy presents them; their origins index `sources`
    listed_images: array  # images per sample before the strategy (for the image-cap count)
    sources: list[SourceUse] = field(default_factory=list)
    image_folders: list[str] = field(default_factory=list)  # folders of every image the taken records name
    image_roots: list[Path] = field(default_factory=list)  # image folders the sources name explicitly
    notes: list[str] = field(default_factory=list)  # what reading changed in the data, said once per stage

    def fingerprint(self, image_refs: Iterable[list]) -> str:
        """sha256 over every source's fingerprint and the bytes of every image file the samples use (`image_refs`:
        each sample's image references), in path order. The paths are gathered into an Arrow array (compact, where
        a million Python strings would not be)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(f"{source.path}|{source.sampling}|{source.sha256}".encode())
        chunks, batch = [], []
        for refs in image_refs:
            batch.extend(p for ref in refs for p in ref_paths(ref))
            if len(batch) >= RECORDS_PER_BATCH:
                chunks.append(pa.array(batch, pa.string()))
                batch = []
        chunks.append(pa.array(batch, pa.string()))
        paths = pc.unique(pa.chunked_array(chunks, pa.string()))
        ordered = paths.take(pc.sort_indices(paths))
        for start in range(0, len(ordered), RECORDS_PER_BATCH):  # a slice at a time as Python strings
            for image in ordered.slice(start, RECORDS_PER_BATCH).to_pylist():
                digest.update(Path(image).read_bytes())
        return digest.hexdigest()

    def count_tokens(self, lengths: Sequence[int], origins: Sequence[int] | None = None) -> None:
        """Record each source's tokens and share from the measured `lengths` of samples from `origins` (default:
        every sample's)."""
        origins = self.samples.origins if origins is None else origins
        for source in self.sources:
            source.tokens = 0
        for origin, length in zip(origins, lengths, strict=True):
            self.sources[origin].tokens += length
        total = sum(s.tokens for s in self.sources) or 1
        for source in self.sources:
            source.share = source.tokens / total


def mixture_sources(data: Path | str | list[DataSource]) -> list[DataSource]:
    """The sources of a stage's `data`: a list as given, a LLaVA-OneVision mixture YAML read, one path alone. A
    LLaMA-Factory dataset_info.json (`FILE#name,...` on the command line, or a source with `dataset:`) becomes the
    sources its named datasets are."""
    if isinstance(data, list):
        return [expanded for source in data for expanded in _llamafactory(source)]
    if Path(data).suffix.lower() in MIXTURE_SUFFIXES:
        try:
            return [expanded for entry in read_onevision_yaml(Path(data)) for expanded in
                    _llamafactory(DataSource(**entry))]
        except ValueError as exc:  # a field the schema refuses
            raise ConfigError(f"Mixture {data}: {exc}") from None
    return _llamafactory(DataSource(path=str(data)))


def _llamafactory(source: DataSource) -> list[DataSource]:
    """A source naming a LLaMA-Factory dataset_info.json, as the sources of its datasets; any other as it is."""
    from ecomtune.data.sources.llamafactory import dataset_sources, is_dataset_info, split_names

    if not is_dataset_info(source.path):
        return [source]
    file, names = split_names(source.path)
    names += [n.strip() for n in (source.dataset or "").split(",") if n.strip()]
    if not Path(file).is_file():
        raise DataError(f"Data not found: {file}", fix="check the path (relative paths start from the current folder)")
    own = source.model_dump(exclude_unset=True, exclude={"path", "dataset"})
    try:
        return [DataSource(**fields) for fields in dataset_sources(Path(file), names, own)]
    except ValueError as exc:  # a field the schema refuses
        raise ConfigError(f"{file}: {exc}") from None


def load_stage_samples(data: Path | str | list[DataSource], spec: BackboneSpec | None = None,
                       images: ImageSettings | None = None, seed: int = 0, title: str = "data",
                       workers: int | None = None, cache: PrepCache | None = None) -> StageSamples:
    """Every source's taken rows, converted, checked and presented by the strategy; one DataError lists every
    problem of every source. Records are read a batch at a time: their images decoded in `workers` processes
    (None: every core) and remembered in the preparation `cache` (default: the shared one), so a second run decodes
    only what changed; the batch's samples then go to a `SampleStore` on disk, with each image's displayed size.
    A row a rule takes more than once is read and stored once."""
    import numpy as np

    forget_folders()  # folders resolved by an earlier read may have moved since
    writer = SampleWriter()
    listed = array("I")
    uses: list[SourceUse] = []
    problems: list[Problem] = []
    folders: set[str] = set()
    orders: list[np.ndarray] = []  # per source: the store position of each taken row, in training order
    stored = 0
    kinds: dict[bool, str] = {}  # with images / text only: the first sample of each kind
    leading: list[str] = []  # samples whose leading assistant turns were dropped
    sources = mixture_sources(data)
    opened_sources = open_all(sources)
    rules = [parse_rule(s.sampling) for s in sources]
    check_mixture_size([(s.path, rule, o.rows) for s, o, rule in zip(sources, opened_sources, rules, strict=True)],
                       title)
    taken = [select_rows(rule, o.rows, seed, f"{i}:{s.path}")
             for i, (s, o, rule) in enumerate(zip(sources, opened_sources, rules, strict=True))]
    distincts = [_first_occurrences(rows) for rows in taken]
    records = sum(len(distinct) for distinct in distincts)
    pool_size = worker_count(workers, records)
    with opened_cache(cache) as store, worker_pool(pool_size) as pool, \
            progress(f"checking {title}", records, "records") as advance:
        for origin, (_source, opened, rows, distinct, rule) in enumerate(zip(sources, opened_sources, taken,
                                                                             distincts, rules, strict=True)):
            read = zip(distinct.tolist(), opened.records(distinct.tolist()), strict=True)
            while batch := list(itertools.islice(read, RECORDS_PER_BATCH)):
                decoded = check_files(_image_paths(batch, opened), store, pool, pool_size)
                folders.update(os.path.dirname(path) for path in decoded)
                samples = []
                for _index, (where, record, problem) in batch:
                    if problem is not None:
                        problems.append(problem)
                        continue
                    sample, found = parse_record(record, opened.base_dir, where, opened.root, spec=spec,
                                                 checked=decoded)
                    problems.extend(found)
                    if sample is not None:
                        samples.append(_with_origin(sample, origin))
                listed.extend(len(s.images) for s in samples)
                for sample in samples:
                    kinds.setdefault(bool(sample.images), sample.source)
                    if sample.leading_dropped:
                        leading.append(sample.source)
                presented, found = presented_with_problems(samples, spec, images) if spec is not None or \
                    images is not None else (samples, [])
                problems.extend(found)
                if not problems:  # once the read has failed, nothing more is stored
                    sizes = {path: size for path, (size, bad) in decoded.items() if bad is None and size}
                    writer.add(presented, [[ref_size(ref, sizes) for ref in s.images] for s in presented])
                advance(len(batch))
            orders.append(stored + _ranks(rows, distinct))
            stored += len(distinct)
            uses.append(SourceUse(opened.name, opened.format, opened.rows, str(rule), len(rows), opened.fingerprint()))
    if spec is not None and spec.text_only_refusal and len(kinds) == 2:
        problems.insert(0, Problem(f"{spec.title} cannot train samples without an image beside samples with images: "
                                   f"{spec.text_only_refusal} (first with an image: {kinds[True]})", kinds[False],
                                   "train the text-only rows in a stage of their own, or leave them out of this "
                                   "mixture"))
    if problems:
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{title}: {len(problems)} problem(s) in the data{more}; nothing was trained",
                        problems[:MAX_REPORTED])
    if not stored:
        empty = ", ".join(f"{u.path} ({u.available} rows, {u.sampling})" for u in uses)
        raise DataError(f"{title}: the mixture gives no samples: {empty}", fix="add data, or take more rows")
    roots = [Path(s.image_root) for s in sources if s.image_root is not None]
    samples = writer.finish()
    order = np.concatenate(orders)
    if len(order) != stored:  # some rows are taken more than once
        samples = samples.select(order.tolist())
        listed = array("I", (listed[i] for i in order.tolist()))
    notes = [note for opened in opened_sources for note in opened.notes]
    notes += [f"{len(leading)} conversation(s) began with the assistant: the answer(s) before the first user turn "
             f"were dropped, not learnt (first: {leading[0]})"] if leading else []
    return StageSamples(samples, listed, uses, sorted(folders), roots, notes)


def open_all(sources: list[DataSource]) -> list:
    """Every source opened; when some cannot be, one DataError naming each of them (not the first only)."""
    opened, problems = [], []
    for source in sources:
        try:
            opened.append(open_source(source.path, source.format, source.image_root, source.split, source.config,
                                      source.columns, source.tags))
        except DataError as exc:
            if len(sources) == 1:
                raise
            problems.append(Problem(exc.title, source.path, exc.fix))
    if problems:
        raise DataError(f"{len(problems)} of the mixture's {len(sources)} sources cannot be opened", problems)
    return opened


def _first_occurrences(rows: np.ndarray) -> np.ndarray:
    """The distinct values of `rows`, in order of first appearance."""
    import numpy as np

    _values, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]


def _ranks(rows: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """For each of `rows`, its place in `distinct`."""
    import numpy as np

    if len(rows) == len(distinct):
        return np.arange(len(rows), dtype=np.int64)
    place = np.empty(int(rows.max()) + 1, dtype=np.int64)
    place[distinct] = np.arange(len(distinct), dtype=np.int64)
    return place[rows]


def _image_paths(batch: list, opened) -> list[str]:
    """The resolved paths of every image a batch of records names (those that are paths inside their dataset)."""
    paths = []
    for _index, (_where, record, _problem) in batch:
        value = record.get("images") if isinstance(record, dict) else None
        for image in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(image, str):
                path, escape = resolve_image_path(image, opened.base_dir, opened.root)
                if escape is None:
                    paths.append(path)
    return paths


def _with_origin(sample: Sample, origin: int) -> Sample:
    from dataclasses import replace

    return replace(sample, origin=origin) if sample.origin != origin else sample


def mixture_table(sources: list[SourceUse]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(s) for s in sources]
