"""Reading JSONL files line by line, with the `file:line` of every record for error messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ecomtune.errors import Problem
from ecomtune.runs.file_modes import write_text_atomic


def is_blank(raw: bytes) -> bool:
    """Whether a raw line holds nothing but whitespace (as `decode_line` sees it): such lines are not records."""
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def decode_line(raw: bytes, where: str) -> tuple[Any, Problem | None]:
    """One non-blank line of a JSONL file as (record, None), or (None, problem) when it is not UTF-8 or not
    JSON. Shared by `read_jsonl` and the data sources that read single lines by their offset."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Problem(f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})", where,
                             "save the file as UTF-8")
    try:
        return orjson.loads(line), None  # a well-kept parser several times faster than json: a million lines add up
    except orjson.JSONDecodeError as exc:
        return None, Problem(f"malformed JSON ({exc.msg} at column {exc.colno})", where,
                             "each line must be one complete JSON object")


def read_jsonl(path: Path) -> Iterator[tuple[str, Any, Problem | None]]:
    """Each non-empty line as (where, record, problem): `record` is the decoded JSON, or None with a
    `problem` when the line is malformed. Reading goes on past bad lines so that all are reported."""
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if is_blank(raw):
            continue
        where = f"{path}:{number}"
        yield where, *decode_line(raw, where)


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    """Write one JSON object per line through a temporary file renamed into place, so a reader never
    sees a half-written file (and a crash leaves the previous file, or none)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
