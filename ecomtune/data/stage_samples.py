"""A stage's samples from its mixture: open each source, take its rows by its sampling rule, convert, validate.

Readers convert (`ecomtune.data.sources`), the mixture rule picks rows (`ecomtune.data.mixture`), and every record
is checked by the one validator (`parse_record`), whatever format it came from; all problems of all sources are
reported together. Only the rows a rule takes are converted and checked. The result keeps, per source, what was
available and what was taken, for `ecomtune plan` and the manifest.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecomtune.config.schema import DataSource
from ecomtune.data.image_checks import check_files
from ecomtune.data.mixture import parse_rule, read_onevision_yaml, select_rows
from ecomtune.data.parallel import progress, worker_count, worker_pool
from ecomtune.data.prep_cache import PrepCache, opened_cache
from ecomtune.data.schema import (
    MAX_REPORTED,
    Sample,
    forget_folders,
    parse_record,
    present_samples,
    resolve_image_path,
)
from ecomtune.data.sources import open_source
from ecomtune.data.sources.detect import MIXTURE_SUFFIXES
from ecomtune.errors import ConfigError, DataError, Problem

if TYPE_CHECKING:
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
    samples: list[Sample]  # as the multi-image strategy presents them; `origin` indexes `sources`
    listed_images: list[int]  # images per sample before the strategy (for the image-cap count)
    sources: list[SourceUse] = field(default_factory=list)
    image_files: list[str] = field(default_factory=list)  # every image the taken records name, before the strategy
    image_roots: list[Path] = field(default_factory=list)  # image folders the sources name explicitly
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # displayed size of every usable image

    def fingerprint(self, image_paths: list[str]) -> str:
        """sha256 over every source's fingerprint and every image file the samples use."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(f"{source.path}|{source.sampling}|{source.sha256}".encode())
        for image in sorted(set(image_paths)):
            digest.update(Path(image).read_bytes())
        return digest.hexdigest()

    def count_tokens(self, lengths: list[int], samples: list[Sample] | None = None) -> None:
        """Record each source's tokens and share from the measured lengths of `samples` (default: all)."""
        samples = self.samples if samples is None else samples
        for source in self.sources:
            source.tokens = 0
        for sample, length in zip(samples, lengths, strict=True):
            self.sources[sample.origin].tokens += length
        total = sum(s.tokens for s in self.sources) or 1
        for source in self.sources:
            source.share = source.tokens / total


def mixture_sources(data: Path | str | list[DataSource]) -> list[DataSource]:
    """The sources of a stage's `data`: a list as given, a LLaVA-OneVision mixture YAML read, one path alone."""
    if isinstance(data, list):
        return data
    if Path(data).suffix.lower() in MIXTURE_SUFFIXES:
        try:
            return [DataSource(**entry) for entry in read_onevision_yaml(Path(data))]
        except ValueError as exc:  # a field the schema refuses
            raise ConfigError(f"Mixture {data}: {exc}") from None
    return [DataSource(path=str(data))]


def load_stage_samples(data: Path | str | list[DataSource], spec: BackboneSpec | None = None,
                       images: ImageSettings | None = None, seed: int = 0, title: str = "data",
                       workers: int | None = None, cache: PrepCache | None = None) -> StageSamples:
    """Every source's taken rows, converted and checked; one DataError lists every problem of every source.
    Images are decoded in `workers` processes (None: every core), a batch of records at a time, and remembered in
    the preparation `cache` (default: the shared one), so a second run decodes only what changed."""
    forget_folders()  # folders resolved by an earlier read may have moved since
    samples: list[Sample] = []
    uses: list[SourceUse] = []
    problems: list[Problem] = []
    sizes: dict[str, tuple[int, int]] = {}
    sources = mixture_sources(data)
    opened_sources = [open_source(s.path, s.format, s.image_root, s.split) for s in sources]
    rules = [parse_rule(s.sampling) for s in sources]
    taken = [select_rows(rule, o.rows, seed, f"{i}:{s.path}")
             for i, (s, o, rule) in enumerate(zip(sources, opened_sources, rules, strict=True))]
    records_taken = sum(len(rows) for rows in taken)
    pool_size = worker_count(workers, records_taken)
    with opened_cache(cache) as store, worker_pool(pool_size) as pool, \
            progress(f"checking {title}", records_taken, "records") as advance:
        for origin, (source, opened, rows, rule) in enumerate(zip(sources, opened_sources, taken, rules,
                                                                   strict=True)):
            checked: dict[int, Sample | None] = {}  # a repeated row is converted and checked once
            records = zip(rows, opened.records(rows), strict=True)
            while batch := list(itertools.islice(records, RECORDS_PER_BATCH)):
                decoded = check_files(_image_paths(batch, opened), store, pool, pool_size)
                for index, (where, record, problem) in batch:
                    if index not in checked:
                        if problem is not None:
                            problems.append(problem)
                            checked[index] = None
                        else:
                            sample, found = parse_record(record, opened.base_dir, where, opened.root, spec=spec,
                                                         checked=decoded)
                            problems.extend(found)
                            checked[index] = sample
                    if checked[index] is not None:
                        samples.append(_with_origin(checked[index], origin))
                sizes.update((path, size) for path, (size, bad) in decoded.items() if bad is None and size)
                advance(len(batch))
            uses.append(SourceUse(source.path, opened.format, opened.rows, str(rule), len(rows), opened.fingerprint()))
    if problems:
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{title}: {len(problems)} problem(s) in the data{more}; nothing was trained",
                        problems[:MAX_REPORTED])
    if not samples:
        empty = ", ".join(f"{u.path} ({u.available} rows, {u.sampling})" for u in uses)
        raise DataError(f"{title}: the mixture gives no samples: {empty}", fix="add data, or take more rows")
    listed = [len(s.images) for s in samples]
    files = list(dict.fromkeys(p for s in samples for p in s.images if isinstance(p, str)))
    roots = [Path(s.image_root) for s in sources if s.image_root is not None]
    presented = present_samples(samples, spec, images, title) if spec is not None or images is not None else samples
    return StageSamples(presented, listed, uses, files, roots, sizes)


def _image_paths(batch: list, opened) -> list[str]:
    """The resolved paths of every image a batch of records names (those that are paths inside their dataset)."""
    paths = []
    for _index, (_where, record, _problem) in batch:
        value = record.get("images") if isinstance(record, dict) else None
        for image in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(image, str):
                path, escape = resolve_image_path(image, opened.base_dir, opened.root)
                if escape is None:
                    paths.append(str(path))
    return paths


def _with_origin(sample: Sample, origin: int) -> Sample:
    from dataclasses import replace

    return replace(sample, origin=origin) if sample.origin != origin else sample


def mixture_table(sources: list[SourceUse]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(s) for s in sources]
