"""Append-only JSONL files that survive a kill: the shared mechanics of every resumable command.

A long job (predictions, curation steps, a generation cache) appends its results a batch at a time, flushed and
synced, so a kill loses at most the batch in flight. The line being written when the kill came may be torn: it
is not JSON, so readers drop it, and the next writer rewrites the file without it (through a temporary file
renamed into place) before appending again. A record of what made the file (`settings`) is kept beside it so a
later run resumes only work made the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ecomtune.runs.file_modes import write_text_atomic


def complete_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, object) for every complete JSON-object line of `path`, in order; a torn or foreign line is left
    out. A missing file has none."""
    found: list[tuple[str, dict[str, Any]]] = []
    if not Path(path).is_file():
        return found
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append((line, value))
    return found


def lines_by_key(path: Path, field: str = "id") -> dict[str, str]:
    """`field` value -> line, for every complete line that has the field (a later line wins over an earlier one
    with the same value)."""
    return {str(record[field]): line for line, record in complete_records(path) if field in record}


def rewrite(path: Path, lines: Iterable[str]) -> None:
    """Replace `path` with exactly `lines` (a torn tail is thus dropped), through a temporary file renamed into
    place: a kill leaves the old file or the new one, never half of either."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def append_synced(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record, then flush and fsync: once this returns, the batch survives a kill."""
    for record in records:
        handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


@contextmanager
def appending(path: Path) -> Iterator[IO[str]]:
    """Open `path` for appending after dropping a torn tail left by a killed writer (complete lines are kept as
    they are, in order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        rewrite(path, [line for line, _ in complete_records(path)])
    with path.open("a", encoding="utf-8") as handle:
        yield handle


def recorded_settings(path: Path) -> dict[str, Any] | None:
    """The settings record at `path`, None when it is missing or unreadable."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def settings_differences(before: dict[str, Any], now: dict[str, Any], shown_not_compared: str = "model",
                         fingerprint: str = "model_fingerprint") -> list[str]:
    """What differs between two runs' settings, as `key: old -> new` lines. `shown_not_compared` (the model
    argument as typed) is listed only when its `fingerprint` differs: the fingerprint says whether it is the
    same model."""
    changed = [key for key in sorted(set(before) | set(now))
               if key != shown_not_compared and before.get(key) != now.get(key)]
    if fingerprint in changed:
        changed.insert(0, shown_not_compared)
    return [f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed]


class AppendOnlyFile:
    """A JSONL file that is appended to while held open (`opened`); `_handle` is the open file inside the block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None

    @contextmanager
    def opened(self) -> Iterator[Any]:
        """Hold the file open for appending (a torn tail dropped once, on opening)."""
        with appending(self.path) as handle:
            self._handle = handle
            try:
                yield self
            finally:
                self._handle = None
