"""Reading JSON out of model answers: the first object or array, repaired where the damage is the usual
kind (code fences, prose around it, single quotes, trailing commas, unquoted values, generation cut off
mid-way). The repair itself is the `json-repair` library's; this module only picks the value of the kind the
caller wants."""

from __future__ import annotations

import json_repair


def parse_json_value(text: str, kind: type = dict) -> dict | list | None:
    """The first JSON object (kind=dict) or array (kind=list) in a model's answer, repaired when possible.
    None when nothing usable is there."""
    opener = "{" if kind is dict else "["
    start = text.find(opener) if text else -1
    if start < 0:
        return None
    try:
        value = json_repair.loads(text[start:])
    except (ValueError, RecursionError):
        return None
    if kind is dict and isinstance(value, list):  # several objects in a row: the first one
        value = next((item for item in value if isinstance(item, dict)), None)
    return value if isinstance(value, kind) and value is not None else None
