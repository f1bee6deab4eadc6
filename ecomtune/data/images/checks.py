"""Every image a stage uses, decoded once: `decode_check` over many files, in worker processes, remembered in the
preparation cache by each file's identity (path, bytes, modification time), so a second run over the same images
decodes none of them and a replaced image is decoded again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from ecomtune.data.images.load import decode_check
from ecomtune.data.prepare.cache import PrepCache, digest, file_identity
from ecomtune.data.prepare.parallel import batches_of, run_batches
from ecomtune.errors import Problem

# displayed (width, height), or None with what makes the file unusable
Checked = tuple[tuple[int, int] | None, Problem | None]
TABLE = "images"


def _decode_batch(_state: object, paths: Sequence[str]) -> list[Checked]:
    return [decode_check(path) for path in paths]


def _as_cached(result: Checked) -> object:
    size, problem = result
    return list(size) if problem is None and size is not None else {"what": problem.what, "fix": problem.fix}


def _from_cached(value: object) -> Checked:
    if isinstance(value, list):
        return (int(value[0]), int(value[1])), None
    return None, Problem(value["what"], fix=value["fix"])


def check_files(paths: Sequence[str], cache: PrepCache, pool: Executor | None = None, workers: int = 1,
                advance: Callable[[int], None] = lambda _n: None) -> dict[str, Checked]:
    """`decode_check` of every path (each once), from the cache where it has the file's current identity; the rest
    decoded in `pool`'s `workers` processes (or here) and remembered. A file that cannot be stat'ed is checked,
    never cached."""
    unique = list(dict.fromkeys(paths))
    keys = {path: digest(identity) for path in unique if (identity := file_identity(path)) is not None}
    known = cache.get_many(TABLE, list(keys.values()))
    results = {path: _from_cached(known[keys[path]]) for path in unique if keys.get(path) in known}
    advance(len(results))
    todo = [path for path in unique if path not in results]
    batches = batches_of(todo, workers, 512)
    for batch, checked in zip(batches, run_batches(pool, _decode_batch, None, batches, advance), strict=True):
        results.update(zip(batch, checked, strict=True))
    cache.put_many(TABLE, ((keys[path], _as_cached(results[path])) for path in todo if path in keys))
    return results
