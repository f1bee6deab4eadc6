"""Which format a data source is in, from what it is (a folder, a file suffix, a hub id) and, for JSON, from its
first row: users point at data as they downloaded it, without saying which of the common layouts it uses.

Rules for a JSON row: `conversations` with `from`/`value` turns is LLaVA when it has `image` (or no `images`),
ShareGPT otherwise; `conversations` with `role`/`content` is ShareGPT; `messages` or `prompt` is ecomtune's
canonical format (a ShareGPT-style role/content format with `images`), unless its turns use `from`/`value` or
its images are under `image`, which is ShareGPT again. `instruction` + `output` is LLaMA-Factory's alpaca.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ecomtune.data.sources.hf import HF_SUFFIXES
from ecomtune.data.sources.turns import row_turns, turn_keys
from ecomtune.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json")
MIXTURE_SUFFIXES = (".yaml", ".yml")
# owner/name as the hub spells it; a path with a data-file suffix is a missing file, not a hub id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FORMAT_FIX = ("name the format explicitly (canonical, llava, sharegpt, alpaca or hf); the layouts are in README.md, "
              "Data format")


def looks_like_hub_id(text: str) -> bool:
    suffix = Path(text).suffix.lower()
    return bool(HUB_ID.match(text)) and suffix not in (*JSON_SUFFIXES, *MIXTURE_SUFFIXES, *HF_SUFFIXES)


def row_format(row: Any) -> str | None:
    """The format one JSON row is written in, None when it is none of them."""
    if isinstance(row, dict) and "instruction" in row and "output" in row and "messages" not in row:
        return "alpaca"
    if not isinstance(row, dict) or not any(key in row for key in ("conversations", "messages", "prompt")):
        return None
    turns = row_turns(row)
    keys = turn_keys(turns[0]) if isinstance(turns, list) and turns else None
    from_value = keys == ("from", "value")
    if "conversations" in row:
        if keys == ("role", "content"):
            return "sharegpt"
        return "llava" if "image" in row or "images" not in row else "sharegpt"
    if "messages" in row and (from_value or ("image" in row and "images" not in row)):
        return "sharegpt"
    return "canonical"


def detect_rows(first: Any, name: str) -> str:
    """The format of a JSON source from its first row (`None`: no row could be read, canonical reports why)."""
    if first is None:
        return "canonical"
    found = row_format(first)
    if found is None:
        seen = f"keys: {sorted(first)}" if isinstance(first, dict) else f"a {type(first).__name__}, not an object"
        raise DataError(f"Cannot tell the format of {name} from its first row ({seen})",
                        fix=f"rows need 'messages', 'prompt'+'completion', 'conversations' or 'instruction'+'output'; "
                        f"or {FORMAT_FIX}; or map your keys with the source's `columns:`")
    return found
