"""LLaVA's data format (LLaVA-1.5, LLaVA-NeXT, OneVision): `{"id", "image": path | [paths], "conversations":
[{"from": "human"|"gpt"|"system", "value": "...<image>..."}]}`, as a JSON array or JSONL.

LLaVA keeps one global image folder, so image paths start at the source's `image_root` (the stage loader passes
`base_dir` to `parse_record`). A row naming images whose text has no `<image>` marker gets them before its first
question by the marker rule every format shares (`ecomtune.data.schema.add_markers`).

A row is LLaVA's when it has `conversations` whose turns are not `role`/`content`, and `image` (or no `images`,
which is ShareGPT's key).
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.base import RowFormat
from ecomtune.data.sources.turns import conversation_record, row_images, row_turns, turn_keys
from ecomtune.errors import Problem


def convert_llava(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    images = row_images(row) if isinstance(row, dict) else []
    return conversation_record(row, where, images)


def is_llava(row: dict[str, Any]) -> bool:
    if "conversations" not in row:
        return False
    turns = row_turns(row)
    keys = turn_keys(turns[0]) if isinstance(turns, list) and turns else None
    return keys != ("role", "content") and ("image" in row or "images" not in row)


LLAVA = RowFormat("llava", is_llava, convert_llava)
