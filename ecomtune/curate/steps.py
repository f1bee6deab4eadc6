"""One curation step's results file: one JSON line per listing, appended a chunk at a time (synced), read back
with a torn tail dropped; a listing counts as finished only while what it was asked is what it would be asked
now (its `key`), so edited listings and changed prompts are done again and finished ones never are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecomtune.curate.generation import GenerationCache, Generator, Request
from ecomtune.curate.listings import Listing
from ecomtune.runs.appendlog import AppendOnlyFile, append_synced, complete_records

CHUNK_BATCHES = 4  # listings per appended chunk: this many generation batches' worth


def step_key(listing: Listing, requests: list[Request]) -> str:
    """What a listing's result depends on: the listing and every question asked about it."""
    body = json.dumps([listing.key, [[r.prompt, list(r.images)] for r in requests]])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class StepLog(AppendOnlyFile):
    """The results file of one step (`path`): id -> its latest complete line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lines: dict[str, dict[str, Any]] = {str(r["id"]): r for _, r in complete_records(self.path)
                                                 if "id" in r}

    def finished(self, listing_id: str, key: str) -> dict[str, Any] | None:
        line = self.lines.get(listing_id)
        return line if line is not None and line.get("key") == key else None

    def add(self, lines: list[dict[str, Any]]) -> None:
        append_synced(self._handle, lines)
        self.lines.update((str(line["id"]), line) for line in lines)


def run_generation_step(listings: list[Listing], log: StepLog, cache: GenerationCache, generator: Generator,
                        requests_of: Callable[[Listing], list[Request]],
                        line_of: Callable[[Listing, list[str]], dict[str, Any]], max_new_tokens: int,
                        batch_size: int, on_progress: Callable[[int], None] | None = None) -> int:
    """Ask `generator` the questions of every listing not finished yet and append one line per listing
    (`line_of(listing, answers)` plus id and key), a chunk at a time. Returns how many listings were done now."""
    todo = []
    for listing in listings:
        requests = requests_of(listing)
        key = step_key(listing, requests)
        if log.finished(listing.id, key) is None:
            todo.append((listing, requests, key))
        elif on_progress is not None:
            on_progress(1)
    chunk = max(1, int(batch_size * CHUNK_BATCHES))
    with log.opened(), cache.opened():
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            flat = [r for _, requests, _ in part for r in requests]
            answers = cache.answer(generator, flat, max_new_tokens, batch_size)
            lines, used = [], 0
            for listing, requests, key in part:
                mine = answers[used:used + len(requests)]
                used += len(requests)
                lines.append({"id": listing.id, "key": key, **line_of(listing, mine)})
            log.add(lines)
            if on_progress is not None:
                on_progress(len(part))
    return len(todo)
