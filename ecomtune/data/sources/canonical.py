"""ecomtune's own JSONL format: its rows already are canonical records, so they pass through unchanged (and
`parse_record` checks them exactly as it always has).

A row with `messages` or `prompt` is canonical unless a more specific format claims it (ShareGPT's `from`/`value`
messages, alpaca's `instruction` + `output`), so it is detected last.
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.base import RowFormat
from ecomtune.errors import Problem


def convert_canonical(row: Any, where: str) -> tuple[Any, Problem | None]:
    return row, None


def is_canonical(row: dict[str, Any]) -> bool:
    return "messages" in row or "prompt" in row


CANONICAL = RowFormat("canonical", is_canonical, convert_canonical, detect_rank=2)
