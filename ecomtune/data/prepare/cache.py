"""What data preparation already knows, kept between runs: image checks and sample lengths.

Checking every image (decoding its pixels) and measuring every sample (text and image tokens) is the price of
never cutting through image tokens; paying it again at every stage, every `plan` and every `--resume` is not.
This cache remembers both, in one SQLite file:

- an image check by the file's identity (absolute path, byte size, modification time in ns): a changed or
  replaced file is a new key, so it is checked again;
- a sample's length by the processor's fingerprint (its settings, tokenizer, chat template, and ecomtune's way of
  counting) and the sample's content (messages, image references) with the identity of every image it uses: a new
  resolution setting, an edited record or a changed image misses exactly what it affects. A new way of counting
  is a new `lengths.COUNTING`, which is part of that fingerprint, so old lengths are then never looked up.

The file lives in ecomtune's cache folder (`$ECOMTUNE_CACHE`, else `~/.cache/ecomtune`, where tiny twins are
built too); `ECOMTUNE_PREPARE_CACHE=off` turns it off. It holds nothing that cannot be computed again: a cache
that cannot be opened or read is reported once and ignored, never a reason to stop a run. Only the main process
writes (workers send their results back), in batches, with SQLite's own locking for runs that share the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import orjson

from ecomtune.runtime import cache_root

FILE_NAME = "prepare.sqlite"
_LOOKUP_CHUNK = 900  # SQLite's default limit on bound parameters is 999


def cache_folder() -> Path | None:
    """Where the cache lives, or None when `ECOMTUNE_PREPARE_CACHE=off`."""
    if os.environ.get("ECOMTUNE_PREPARE_CACHE", "").strip().lower() in ("off", "0", "false", "no"):
        return None
    return cache_root()


def file_identity(path: str | Path) -> str | None:
    """`path|bytes|mtime_ns` of a file, or None when it cannot be stat'ed (then nothing about it is cached)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def digest(*parts: str) -> str:
    """A short, stable key over text parts (sha256, 32 hex digits)."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:32]


class PrepCache:
    """Key -> JSON value tables in one SQLite file (see the module docstring). `PrepCache(None)` remembers nothing."""

    TABLES = ("images", "lengths")

    def __init__(self, folder: Path | None) -> None:
        self.connection: sqlite3.Connection | None = None
        self.where = None if folder is None else Path(folder) / FILE_NAME
        if folder is None:
            return
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.where, timeout=60)
            connection.execute("PRAGMA journal_mode=WAL")
            for table in self.TABLES:
                connection.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            connection.commit()
            self.connection = connection
        except (sqlite3.Error, OSError) as exc:
            self._give_up(exc)

    @classmethod
    def default(cls) -> PrepCache:
        return cls(cache_folder())

    def _give_up(self, exc: Exception) -> None:
        print(f"ecomtune: the preparation cache {self.where} cannot be used ({exc}); every image is checked and "
              "every sample measured from scratch (set ECOMTUNE_CACHE to another folder, or "
              "ECOMTUNE_PREPARE_CACHE=off)", file=sys.stderr)
        with contextlib.suppress(sqlite3.Error):
            if self.connection is not None:
                self.connection.close()
        self.connection = None

    def get_many(self, table: str, keys: Sequence[str]) -> dict[str, object]:
        """The cached values of those `keys` that have one."""
        if self.connection is None or not keys:
            return {}
        found: dict[str, object] = {}
        try:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = list(keys[start:start + _LOOKUP_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self.connection.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk)
                found.update((key, orjson.loads(value)) for key, value in rows)
        except (sqlite3.Error, ValueError) as exc:
            self._give_up(exc)
            return {}
        return found

    def put_many(self, table: str, items: Iterable[tuple[str, object]]) -> None:
        """Remember `(key, value)` pairs (values as JSON); one transaction."""
        if self.connection is None:
            return
        try:
            with self.connection:
                self.connection.executemany(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)",
                                            ((key, orjson.dumps(value).decode()) for key, value in items))
        except sqlite3.Error as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@contextlib.contextmanager
def opened_cache(cache: PrepCache | None = None) -> Iterator[PrepCache]:
    """`cache` as given, or the default one for the duration (closed after)."""
    if cache is not None:
        yield cache
        return
    made = PrepCache.default()
    try:
        yield made
    finally:
        made.close()
