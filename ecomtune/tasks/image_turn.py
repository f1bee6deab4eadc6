"""The one way a user turn that shows images is written: one image block per image, then the question's text.

Training records (`ecomtune.tasks.prompts.chat_record`), generation, the collator's image-token count, the
benchmark records' image strategy and the chat-endpoint client all build their turns here, so a prompt is laid out
the same way wherever a model sees it. It sits with the task vocabulary, below every layer that writes a turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def image_turn(images: int | Sequence[Any], text: str | None = None,
               block: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A user message: each of `images` (the images themselves, or how many there are) as a `{"type": "image"}`
    placeholder, or as `block(image)` (an OpenAI `image_url` part), then `text` when there is one."""
    shown = range(images) if isinstance(images, int) else images
    content = [block(image) if block is not None else {"type": "image"} for image in shown]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}
