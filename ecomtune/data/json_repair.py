"""Reading JSON out of model answers: the first object or array, repaired where the damage is the usual
kind (code fences, prose around it, single quotes, trailing commas, generation cut off mid-way)."""

from __future__ import annotations

import json
import re


def _balance(text: str) -> str:
    """Close unclosed strings, objects and arrays: the usual damage when generation stops early."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    repaired = text + ('"' if in_string else "")
    repaired = re.sub(r"[,:]\s*$", "", repaired.rstrip())
    return repaired + "".join(reversed(stack))


def parse_json_value(text: str, kind: type = dict) -> dict | list | None:
    """The first JSON object (kind=dict) or array (kind=list) in a model's answer, repaired when possible
    (code fences, single quotes, trailing commas, truncation). None when nothing usable is there."""
    opener, closer = ("{", "}") if kind is dict else ("[", "]")
    if not text:
        return None
    body = re.sub(r"```(?:json)?", "", text).strip()
    start = body.find(opener)
    if start < 0:
        return None
    body = body[start:]
    candidates = [body]
    end = body.rfind(closer)
    if end >= 0:
        candidates.insert(0, body[: end + 1])
    for candidate in candidates:
        for attempt in (candidate, _balance(candidate)):
            fixed = re.sub(r",\s*([}\]])", r"\1", attempt)
            for variant in (fixed, fixed.replace("'", '"')):
                try:
                    value = json.loads(variant)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, kind):
                    return value
    return None
