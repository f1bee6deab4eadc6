"""User-facing errors.

Every mistake a user can make (a bad recipe, a broken data file, an unknown backbone, no network) is
raised as an `EcomtuneError`: the CLI prints it in one block and exits non-zero, with no traceback.
Each error says what was wrong, where (file, line, key) and how to fix it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass


@dataclass
class Problem:
    """One thing that is wrong, with its location and the fix."""

    what: str
    where: str = ""
    fix: str = ""

    def render(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}\n    fix: {self.fix}" if self.fix else head


class EcomtuneError(Exception):
    """An error caused by the user's input; carries one or more problems, all reported at once."""

    def __init__(self, title: str, problems: list[Problem] | None = None, fix: str = "") -> None:
        self.title = title
        self.problems = problems or []
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.title]
        lines += [f"  - {p.render()}".replace("\n", "\n  ") for p in self.problems]
        if self.fix:
            lines.append(f"fix: {self.fix}")
        lines += [f"note: {note}" for note in getattr(self, "__notes__", ())]  # what else went wrong on the way
        return "\n".join(lines)


class ConfigError(EcomtuneError):
    """A recipe or command-line override is invalid."""


class DataError(EcomtuneError):
    """A data file has records that cannot be trained on."""


class BackboneError(EcomtuneError):
    """A backbone cannot be resolved, downloaded, or its module roles cannot be found."""


class ExportError(EcomtuneError):
    """An exported model does not reproduce the run it came from, or lacks a file that serving needs."""


# Faults of the machine rather than of ecomtune, by errno: (what happened, the fix).
_OS_FAULTS = {
    errno.ENOSPC: ("the disk is full", "free some space (or write to another disk); a training run continues from "
                   "its last complete checkpoint with --resume"),
    errno.EDQUOT: ("the disk quota is used up", "free some space, or write to another disk"),
    errno.EROFS: ("the file system is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "check the file's permissions, or use another path"),
    errno.EPERM: ("operation not permitted", "check the file's permissions, or use another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EISDIR: ("it is a folder, not a file", "give the path of a file"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EEXIST: ("a file is in the way of a folder", "check the path: a part of it is a file"),
    errno.EBUSY: ("the file or folder is busy (a mount point, or in use)", "use a folder inside it, or another path"),
    errno.EXDEV: ("a rename would cross file systems", "keep the output on one disk (not a mount point)"),
}


def user_facing(exc: BaseException) -> EcomtuneError | None:
    """The user-facing error an exception stands for, by category, or None when it is a bug. The CLI calls this
    once at its boundary, so no command needs a `try` per case."""
    error = _user_facing(exc)
    if error is not None and error is not exc:
        for note in getattr(exc, "__notes__", ()):  # e.g. a log file that stopped on the way (`capture_to`)
            error.add_note(note)
    return error


def _user_facing(exc: BaseException) -> EcomtuneError | None:
    if isinstance(exc, EcomtuneError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _OS_FAULTS:
        what, fix = _OS_FAULTS[exc.errno]
        where = " ".join(str(p) for p in (exc.filename, exc.filename2) if p)
        return EcomtuneError(f"Cannot go on: {what}" + (f" ({where})" if where else ""), fix=fix)
    if isinstance(exc, UnicodeDecodeError):
        return EcomtuneError(f"A file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                             fix="save data and recipe files as UTF-8")
    hub = _hub_error(exc)
    if hub is not None:
        return hub
    if type(exc).__name__ == "SafetensorError":
        return EcomtuneError(f"A weights file is damaged or truncated: {exc}",
                             fix="copy or train it again; a run's outputs are listed in its manifest.json")
    if type(exc).__name__ == "OutOfMemoryError":
        return EcomtuneError(f"Out of GPU memory: {str(exc).splitlines()[0]}",
                             fix="`ecomtune plan RECIPE` estimates the memory and says what to lower first "
                             "(batch_size, max_length, resolution); gradient_checkpointing: true saves most")
    return None


def _hub_error(exc: BaseException) -> EcomtuneError | None:
    """Hub files that cannot be fetched (missing repo or file, gated, offline) as one message."""
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    if isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return BackboneError(f"Could not fetch from the Hugging Face hub: {str(exc).splitlines()[0]}",
                             fix="check the model id and revision, log in (`hf auth login`) for gated models, or "
                             "use a local folder saved by save_pretrained")
    return None
