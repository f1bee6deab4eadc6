"""Conversations as LLaVA and ShareGPT write them, turned into ecomtune's messages: one place for the role names
and turn keys every conversational format shares (LLaVA, ShareGPT, Hugging Face datasets).

A turn is `{"from": ..., "value": ...}` (LLaVA, ShareGPT) or `{"role": ..., "content": ...}` (OpenAI, TRL).
Speaker names map to ecomtune's three roles; any other speaker (tool calls, observations) cannot be trained on
as a chat turn, so the row is reported rather than silently dropped. Content is passed on as it is: checking it
is `parse_record`'s job.
"""

from __future__ import annotations

from typing import Any

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


def conversation_record(row: Any, where: str, images: Any) -> tuple[dict[str, Any] | None, Problem | None]:
    """A conversational row as a canonical record with `images` (already a list); `boxes` are kept when present. A
    `system` column (LLaMA-Factory's sharegpt and alpaca layouts) becomes the first turn, unless the conversation
    already starts with a system turn, which is then a problem: two system prompts are never merged or dropped.
    Image markers are left as written: `parse_record` applies the one marker rule to every format."""
    if not isinstance(row, dict):
        return None, Problem(f"row is a {type(row).__name__}, not an object", where,
                             "each row must be one {...} object")
    messages, problem = convert_turns(row_turns(row), where)
    if messages is None:
        return None, problem
    messages, problem = with_system_column(row, messages, where)
    if messages is None:
        return None, problem
    record = {"images": images, "messages": messages}
    if "boxes" in row:
        record["boxes"] = row["boxes"]
    return record, None


def with_system_column(row: dict[str, Any], messages: list[dict[str, Any]], where: str,
                       ) -> tuple[list[dict[str, Any]] | None, Problem | None]:
    """`messages` with the row's `system` column (a non-empty string) as its first turn."""
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages, None
    if not isinstance(system, str):
        return None, Problem(f"'system' must be a string, got {type(system).__name__}", where,
                             "give the system prompt as text")
    if messages and messages[0]["role"] == "system":
        return None, Problem("the row has both a 'system' column and a system turn", where,
                             "keep the system prompt in one of them")
    return [{"role": "system", "content": system}, *messages], None
