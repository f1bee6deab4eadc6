"""Which format a data source is in, from what it is (a folder, a file suffix, a hub id) and, for JSON, from its
first row: users point at data as they downloaded it, without saying which of the common layouts it uses. Which
row format claims a row is each format's own rule (`ecomtune.data.sources.formats`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ecomtune.data.sources.formats import UNREADABLE_DEFAULT, format_names, row_format
from ecomtune.data.sources.hf import HF_SUFFIXES
from ecomtune.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json")
MIXTURE_SUFFIXES = (".yaml", ".yml")
# owner/name as the hub spells it; a path with a data-file suffix is a missing file, not a hub id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    suffix = Path(text).suffix.lower()
    return bool(HUB_ID.match(text)) and suffix not in (*JSON_SUFFIXES, *MIXTURE_SUFFIXES, *HF_SUFFIXES)


def format_fix() -> str:
    """How to name a format by hand, listing every format."""
    *formats, last = format_names()
    return (f"name the format explicitly ({', '.join(formats)} or {last}); the layouts are in "
            "docs/data-formats.md#layouts-read")


def detect_rows(first: Any, name: str) -> str:
    """The format of a JSON source from its first row (`None`: no row could be read, canonical reports why)."""
    if first is None:
        return UNREADABLE_DEFAULT.name
    found = row_format(first)
    if found is None:
        seen = f"keys: {sorted(first)}" if isinstance(first, dict) else f"a {type(first).__name__}, not an object"
        raise DataError(f"Cannot tell the format of {name} from its first row ({seen})",
                        fix=f"rows need 'messages', 'prompt'+'completion', 'conversations' or 'instruction'+'output'; "
                        f"or {format_fix()}; or map your keys with the source's `columns:`")
    return found
