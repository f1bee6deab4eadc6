"""Conversations as LLaVA and ShareGPT write them, turned into ecomtune's messages: one place for the role names
and turn keys every conversational format shares (LLaVA, ShareGPT, Hugging Face datasets).

A turn is `{"from": ..., "value": ...}` (LLaVA, ShareGPT) or `{"role": ..., "content": ...}` (OpenAI, TRL).
Speaker names map to ecomtune's three roles; any other speaker (tool calls, observations) cannot be trained on
as a chat turn, so the row is reported rather than silently dropped. Content is passed on as it is: checking it
is `parse_record`'s job.
"""

from __future__ import annotations

from typing import Any

from ecomtune.data.schema import IMAGE_MARKER
from ecomtune.errors import Problem

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TURN_KEYS = (("from", "value"), ("role", "content"))
TURNS_FIX = 'write turns as {"from": "human"|"gpt"|"system", "value": ...} or {"role": ..., "content": ...}'


def turn_keys(turn: Any) -> tuple[str, str] | None:
    """The (speaker, text) keys a turn uses, None when it uses neither style."""
    if isinstance(turn, dict):
        for speaker, text in TURN_KEYS:
            if speaker in turn:
                return speaker, text
    return None


def row_turns(row: dict[str, Any]) -> Any:
    """A row's conversation: `conversations` (LLaVA, ShareGPT) or `messages` (OpenAI style)."""
    return row["conversations"] if "conversations" in row else row.get("messages")


def row_images(row: dict[str, Any]) -> Any:
    """A row's images as a list: `images` (a list) or `image` (one path or a list); none for text-only rows.
    Entries are not checked here."""
    value = row["images"] if "images" in row else row.get("image")
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def convert_turns(turns: Any, where: str) -> tuple[list[dict[str, Any]] | None, Problem | None]:
    """Turns as ecomtune messages `{"role", "content"}`, or None and the reason the row cannot be converted."""
    if not isinstance(turns, list):
        return None, Problem(f"the conversation must be a list of turns, got {type(turns).__name__}", where,
                             TURNS_FIX)
    messages = []
    for index, turn in enumerate(turns):
        keys = turn_keys(turn)
        if keys is None:
            return None, Problem(f"turn {index} has neither 'from'/'value' nor 'role'/'content'", where, TURNS_FIX)
        speaker, text = keys
        role = ROLE_NAMES.get(turn[speaker]) if isinstance(turn[speaker], str) else None
        if role is None:
            return None, Problem(
                f"turn {index} is from {turn[speaker]!r}, which is not a chat role ({', '.join(ROLE_NAMES)})", where,
                "only user, assistant and system turns are trained on: drop tool-call and observation turns, or "
                "the row")
        messages.append({"role": role, "content": turn.get(text)})
    return messages, None


def add_missing_markers(messages: list[dict[str, Any]], images: int) -> None:
    """LLaVA's convention: a row with more images than `<image>` markers gets the missing markers at the start
    of its first user turn, one `<image>\\n` each (in place). More markers than images is left to validation."""
    present = sum(m["content"].count(IMAGE_MARKER) for m in messages if isinstance(m["content"], str))
    first_user = next((m for m in messages if m["role"] == "user" and isinstance(m["content"], str)), None)
    if images > present and first_user is not None:
        first_user["content"] = f"{IMAGE_MARKER}\n" * (images - present) + first_user["content"]


def conversation_record(row: Any, where: str, images: Any, markers: bool = False,
                        ) -> tuple[dict[str, Any] | None, Problem | None]:
    """A conversational row as a canonical record with `images` (already a list); `boxes` are kept when present.
    With `markers`, missing `<image>` markers are added the LLaVA way."""
    if not isinstance(row, dict):
        return None, Problem(f"row is a {type(row).__name__}, not an object", where,
                             "each row must be one {...} object")
    messages, problem = convert_turns(row_turns(row), where)
    if messages is None:
        return None, problem
    if markers and isinstance(images, list):
        add_missing_markers(messages, len(images))
    record = {"images": images, "messages": messages}
    if "boxes" in row:
        record["boxes"] = row["boxes"]
    return record, None

