"""Rows stored as JSON: one object per line (JSONL) or one array (a `.json` file), the two ways LLaVA, ShareGPT
and ecomtune's own data are written.

A JSONL file is indexed once (the byte offset and line number of every non-blank line) and only the lines a
stage asks for are read and parsed: a mixture taking 1% of a 10 GB file reads 1% of it. A JSON array has no
such shortcut; it is parsed whole when opened.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ecomtune.data.jsonl import decode_line, is_blank
from ecomtune.data.sources.base import Triple, check_index, files_digest
from ecomtune.errors import DataError, Problem


class JsonLinesReader:
    """The non-blank lines of a JSONL file, by index; `where` is `name:line`."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.offsets, self.lines = array("q"), array("q")
        offset = 0
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not is_blank(raw):
                    self.offsets.append(offset)
                    self.lines.append(number)
                offset += len(raw)
        self.rows = len(self.offsets)

    def first(self) -> Any:
        """The first non-blank line that is valid JSON, to detect the format from; None when no line is."""
        for _where, row, problem in self.read(range(self.rows)):
            if problem is None:
                return row
        return None

    def read(self, indices: Sequence[int]) -> Iterator[Triple]:
        with self.path.open("rb") as handle:
            for index in indices:
                index = check_index(index, self.rows, self.name)
                handle.seek(self.offsets[index])
                where = f"{self.name}:{self.lines[index]}"
                yield where, *decode_line(handle.readline(), where)

    def fingerprint(self) -> str:
        return files_digest([self.path])


class JsonArrayReader:
    """The elements of a JSON array file, by index; `where` is `name[row N]`."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{name} is not UTF-8 text (at byte {exc.start})", fix="save the file as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} is not valid JSON", [Problem(exc.msg, f"{name}:{exc.lineno}:{exc.colno}")],
                            fix="a .json data file holds one array of rows; for one row per line use .jsonl") from None
        if not isinstance(data, list):
            seen = f"an object with keys {sorted(data)}" if isinstance(data, dict) else f"a {type(data).__name__}"
            raise DataError(f"{name} holds {seen}, not an array of rows",
                            fix="write the rows as one JSON array [{...}, {...}], or one per line in a .jsonl file")
        self.data: list[Any] = data
        self.rows = len(data)

    def first(self) -> Any:
        return self.data[0] if self.data else None

    def read(self, indices: Sequence[int]) -> Iterator[Triple]:
        for index in indices:
            index = check_index(index, self.rows, self.name)
            yield f"{self.name}[row {index}]", self.data[index], None

    def fingerprint(self) -> str:
        return files_digest([self.path])
