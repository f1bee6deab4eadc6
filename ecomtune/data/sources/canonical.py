"""ecomtune's own JSONL format: its rows already are canonical records, so they pass through unchanged (and
`parse_record` checks them exactly as it always has)."""

from __future__ import annotations

from typing import Any

from ecomtune.errors import Problem


def convert_canonical(row: Any, where: str) -> tuple[Any, Problem | None]:
    return row, None
