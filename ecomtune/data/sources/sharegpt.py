"""ShareGPT-style conversations (LLaMA-Factory, Axolotl, OpenAI exports): `messages` or `conversations`, turns
as `role`/`content` or `from`/`value`, images in `images` (a list) or `image`.

LLaMA-Factory's `system` column becomes the first turn. Image markers follow the rule every format shares
(`ecomtune.data.schema.add_markers`).
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.sources.turns import conversation_record, row_images
from ecomtune.errors import Problem


def convert_sharegpt(row: Any, where: str) -> tuple[dict[str, Any] | None, Problem | None]:
    images = row_images(row) if isinstance(row, dict) else []
    return conversation_record(row, where, images)
