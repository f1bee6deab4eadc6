"""One file of ecomtune's canonical JSONL, read whole into a list of checked samples.

This is how ecomtune reads the files it writes itself and hands on (an items file to crop, a curated or synthetic
catalog): one canonical file, every record checked, the list in memory. A training stage reads its data with
`ecomtune.data.prepare.stage_samples.load_stage_samples` instead: a mixture of sources in any format, each taken by
its sampling rule, images checked in worker processes with the preparation cache, the samples kept on disk. Both
check every record with the same `parse_record`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ecomtune.data.jsonl import read_jsonl
from ecomtune.data.schema import Sample, forget_folders, parse_record, presented_or_raise, raise_if_any
from ecomtune.errors import DataError, Problem

if TYPE_CHECKING:
    from ecomtune.backbones.spec import BackboneSpec
    from ecomtune.config.schema import ImageSettings


def load_canonical_file(path: Path, spec: BackboneSpec | None = None, images: ImageSettings | None = None,
                        root: Path | None = None) -> list[Sample]:
    """Read and check a whole JSONL file; raise one DataError listing every bad record. With `images`, each
    sample is presented by the multi-image strategy; with `spec`, every image and the result are checked against
    the backbone family's limits (aspect ratio, then `presented_or_raise`). Relative image paths must stay inside
    `root` (default: the file's folder)."""
    from rich.progress import track

    path = Path(path)
    forget_folders()
    if not path.is_file():
        raise DataError(f"Data file not found: {path}",
                        fix="check the path (relative paths start from the current folder)")
    records = list(read_jsonl(path))
    samples: list[Sample] = []
    problems: list[Problem] = []
    for where, record, problem in track(records, description=f"checking {path.name}", transient=True,
                                        disable=len(records) < 200):
        if problem is not None:
            problems.append(problem)
            continue
        sample, found = parse_record(record, path.parent, where, root, spec)
        problems.extend(found)
        if sample is not None:
            samples.append(sample)
    raise_if_any(problems, str(path))
    if not samples:
        raise DataError(f"{path} has no records", fix="add at least one JSON line")
    return presented_or_raise(samples, spec, images, str(path)) if spec is not None or images is not None else samples
