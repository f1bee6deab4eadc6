"""LLaVA's data format (LLaVA-1.5, LLaVA-NeXT, OneVision): `{"id", "image": path | [paths], "conversations":
[{"from": "human"|"gpt"|"system", "value": "...<image>..."}]}`, as a JSON array or JSONL.

LLaVA keeps one global image folder, so image paths start at the source's `image_root` (the stage loader passes
`base_dir` to `parse_record`). A row naming images whose text has no `<image>` marker gets them before its first
question by the marker rule every format shares (`ecomtune.data.schema.add_markers`).
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.turns import conversation_record, row_images
from ecomtune.errors import Problem


def convert_llava(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    images = row_images(row) if isinstance(row, dict) else []
    return conversation_record(row, where, images)
