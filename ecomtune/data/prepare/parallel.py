"""Worker processes and a progress bar for data preparation (image checks, sample measurement).

Work goes out in batches to forked processes: forking lets a worker inherit what the main process already built
(a processor, its tokenizer), which could not be pickled cheaply, and the batches and their results are small.
Each worker runs torch on one thread, so N workers use N cores. Small jobs run in the main process: starting
workers costs more than it saves. Results come back in submission order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

from ecomtune.runtime import is_main_process

T = TypeVar("T")
R = TypeVar("R")

# Below this many items per worker, work stays in the main process.
MIN_ITEMS_PER_WORKER = 256
_STATE: Any = None  # what a forked worker was given (see `worker_pool`)


def usable_cores() -> int:
    """Cores this process may run on, shared among the processes of a distributed launch on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, per_machine))


def worker_count(requested: int | None, items: int) -> int:
    """How many processes prepare `items` items: `requested` (None: every usable core), never more than the work
    can keep busy; 1 means the main process alone."""
    wanted = usable_cores() if requested is None else requested
    return max(1, min(wanted, items // MIN_ITEMS_PER_WORKER))


def _start_worker(state: Any) -> None:
    global _STATE
    import torch

    torch.set_num_threads(1)
    _STATE = state


def _call(function: Callable[[Any, Any], Any], batch: Any) -> Any:
    return function(_STATE, batch)


@contextlib.contextmanager
def worker_pool(workers: int, state: Any = None) -> Iterator[Executor | None]:
    """A pool of `workers` forked processes that hold `state` (None when `workers` is 1: run in this process)."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(state,)) as pool:
        yield pool


def run_batches(pool: Executor | None, function: Callable[[Any, Sequence[T]], list[R]], state: Any,
                batches: Sequence[Sequence[T]], advance: Callable[[int], None]) -> Iterator[list[R]]:
    """`function(state, batch)` for every batch, in order, in `pool`'s workers (or here when `pool` is None);
    `advance(len(batch))` as each one is done. `function` must be a module-level function (it is pickled)."""
    if pool is None:
        for batch in batches:
            result = function(state, batch)
            advance(len(batch))
            yield result
        return
    futures = [pool.submit(_call, function, batch) for batch in batches]
    for batch, future in zip(batches, futures, strict=True):
        result = future.result()
        advance(len(batch))
        yield result


def batches_of(items: Sequence[T], workers: int, largest: int = 2048) -> list[Sequence[T]]:
    """`items` cut into batches: several per worker (so a slow batch does not leave others idle), at most
    `largest` items each."""
    size = max(1, min(largest, -(-len(items) // (workers * 4))))
    return [items[start:start + size] for start in range(0, len(items), size)]


@contextlib.contextmanager
def progress(description: str, total: int, unit: str = "samples") -> Iterator[Callable[[int], None]]:
    """A transient progress bar (count, rate in `unit`/s, time left) on stderr, main process only; yields
    `advance(n)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    rate = TextColumn("{task.fields[rate]}")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), rate,
                   TextColumn("eta"), TimeRemainingColumn(), transient=True,
                   console=Console(stderr=True, quiet=not is_main_process()), disable=total < 2)
    with bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(count: int) -> None:
            bar.advance(task, count)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")

        yield advance
