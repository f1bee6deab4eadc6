"""What the libraries print, kept out of the terminal unless asked for.

transformers, peft, TRL, accelerate, datasets and bitsandbytes print weight-loading bars, warnings that are
known and harmless here, and raw metric dicts. ecomtune's own output (tables, one progress display per stage,
errors) is what a user reads; the libraries' messages go to a log file in the run folder (`capture_to`), and
`--verbose` (or ECOMTUNE_VERBOSE=1) shows everything as the libraries print it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

LIBRARY_LOGGERS = ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "huggingface_hub",
                   "DeepSpeed", "torch", "py.warnings")
VERBOSE_ENV = "ECOMTUNE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0", "false", "False")


def set_verbose(on: bool) -> None:
    """Remember --verbose for the rest of the process (and the processes a launcher starts from it)."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """Unless verbose: no library progress bars, library log records only at ERROR on the terminal, Python
    warnings routed to logging (a log file, when `capture_to` holds one, keeps them)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose():
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").propagate = False  # kept for the log file, not the terminal
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # DeepSpeed sets its logger's level and a stdout handler of its own when imported (it warns on every CPU-only
    # machine that it found no GPU); a filter, unlike a level, outlives that.
    logging.getLogger("DeepSpeed").addFilter(_errors_only)
    # transformers 5.23 renames gradient_checkpointing; TRL 1.16 still reads the old name, so it stays.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)


class QuietFileHandler(logging.FileHandler):
    """A FileHandler that stops at its first failed write instead of printing "--- Logging error ---" and a
    traceback for every later record (a full disk fails every record). The failure is kept (`failure`) for the
    one message that ends the command."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failure: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failure = sys.exc_info()[1]
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self.close()

    def note(self) -> str | None:
        """What to tell the user about the log, when a write to it failed."""
        if self.failure is None:
            return None
        return (f"the libraries' log {self.baseFilename} stopped being written at the first failed write "
                f"({self.failure}); records after it were dropped")


@contextlib.contextmanager
def capture_to(path: Path) -> Iterator[None]:
    """Write every library log record (INFO and up) and warning to `path` for the duration of the block; the
    terminal keeps what `quiet_libraries` lets through. When a write to the log fails (a full disk), the log
    stops there, quietly, and the command's final message says so: an exception leaving the block carries it as
    a note; a block that ends well prints it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = QuietFileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    levels, propagates = {}, {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        levels[name], propagates[name] = logger.level, logger.propagate
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        if not verbose():
            logger.propagate = False  # an application's root handler would print them on the terminal
    console_levels = _terminal_handlers_at(logging.ERROR) if not verbose() else {}
    try:
        yield
    except BaseException as exc:
        if handler.note() is not None:
            exc.add_note(handler.note())
        raise
    else:
        if handler.note() is not None:
            print(f"note: {handler.note()}", file=sys.stderr)
    finally:
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(levels[name])
            logger.propagate = propagates[name]
        for terminal, level in console_levels.items():
            terminal.setLevel(level)
        with contextlib.suppress(OSError):  # a last flush onto a full disk: the run's outcome is decided
            handler.close()


def _terminal_handlers_at(level: int) -> dict[logging.Handler, int]:
    """Raise the library loggers' own terminal handlers to `level` (their records now pass at INFO for the file);
    returns the levels to restore."""
    changed = {}
    for name in LIBRARY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                changed[handler] = handler.level
                handler.setLevel(max(level, handler.level))
    return changed
