"""ShareGPT-style conversations (LLaMA-Factory, Axolotl, OpenAI exports): `messages` or `conversations`, turns
as `role`/`content` or `from`/`value`, images in `images` (a list) or `image`.

A row is ShareGPT's when its `conversations` turns are `role`/`content` or its images are under `images` (not
LLaVA's `image`), or when its `messages` turns are `from`/`value` or its images are under `image` (not
ecomtune's `images`). LLaMA-Factory's `system` column becomes the first turn. Image markers follow the rule every
format shares (`ecomtune.data.schema.add_markers`).
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.base import RowFormat
from ecomtune.data.sources.turns import conversation_record, row_images, row_turns, turn_keys
from ecomtune.errors import Problem


def convert_sharegpt(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    images = row_images(row) if isinstance(row, dict) else []
    return conversation_record(row, where, images)


def is_sharegpt(row: dict[str, Any]) -> bool:
    turns = row_turns(row)
    keys = turn_keys(turns[0]) if isinstance(turns, list) and turns else None
    if "conversations" in row:
        return keys == ("role", "content") or ("image" not in row and "images" in row)
    return "messages" in row and (keys == ("from", "value") or ("image" in row and "images" not in row))


SHAREGPT = RowFormat("sharegpt", is_sharegpt, convert_sharegpt)
