"""The data formats ecomtune reads, in one list: what `format: auto` detects, what `open_source` converts with, and
the names a source's `format:` may give (with `hf`, Hugging Face datasets, whose rows are told by their columns).

A format is one module under `ecomtune.data.sources` defining a `RowFormat` (its name, which rows it claims, how
a row converts); listing it in `FORMATS` is all it takes for every source, mixture and stage to read it.
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.alpaca import ALPACA
from ecomtune.data.sources.base import RowFormat
from ecomtune.data.sources.canonical import CANONICAL
from ecomtune.data.sources.llava import LLAVA
from ecomtune.data.sources.sharegpt import SHAREGPT

# In the order they are named to users; detection follows each format's detect_rank.
FORMATS: list[RowFormat] = [CANONICAL, LLAVA, SHAREGPT, ALPACA]
HF = "hf"  # a Hugging Face dataset (folder, parquet / arrow file, hub id): a storage, its columns say the layout
# What a source holding no readable row is taken for: canonical, whose checks then say why no row can be read.
UNREADABLE_DEFAULT = CANONICAL


def format_names() -> tuple[str, ...]:
    """Every name a source's `format:` may give besides `auto`: the row formats, then `hf`."""
    return (*(f.name for f in FORMATS), HF)


def named_format(name: str) -> RowFormat:
    """The row format called `name` (one of `format_names()` other than `hf`)."""
    return next(f for f in FORMATS if f.name == name)


def row_format(row: Any) -> str | None:
    """The format one JSON row is written in, None when it is none of them."""
    if not isinstance(row, dict):
        return None
    ranked = sorted(FORMATS, key=lambda f: f.detect_rank)  # stable: ties keep the list's order
    return next((f.name for f in ranked if f.claims(row)), None)
