"""Output folders that never cost the user anything they own.

Every command that writes a folder (training stages, `synth`, `crop`, `demo`) goes through here:
- the folder may not be, hold, or (for folders) sit inside anything the command reads: data, images, the
  recipe, the run it starts from (`Guarded`);
- a non-empty folder is refused unless the user said `--overwrite` (or `--resume` for a run);
- one command at a time: a lock beside the folder (`.NAME.lock`, held through the kernel's `flock`, so a
  crashed command releases it by itself);
- a replaced folder is never deleted first: the new content is written into a sibling (`.NAME.incoming`) and
  swapped in only when it is complete, so an interrupted command leaves the old folder as it was, and no stale
  file of the old folder survives next to the new ones;
- the folder is probed for writing and free space before any model loads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ecomtune.errors import ConfigError, Problem
from ecomtune.runs.file_modes import keep_plain_modes_in_safetensors

MIN_FREE_BYTES = 64 << 20  # below this nothing useful can be written: refuse before any work starts


@dataclass
class Guarded:
    """What an output may not touch. `files`: may not be the output or lie inside it. `folders`: the output may
    not be one, lie inside one, or hold one. Each entry is (what it is, path), for the message."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    folders: list[tuple[str, Path]] = field(default_factory=list)

    def add_images(self, paths: Iterable[str | Path]) -> Guarded:
        """Guard the folders the images live in (which also guards every image in them)."""
        for folder in sorted({Path(p).resolve().parent for p in paths}):
            self.folders.append(("image folder", folder))
        return self


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _forms(path: Path) -> set[Path]:
    """A path as given (made absolute) and with its links resolved: a guard holds for either."""
    return {Path(os.path.abspath(path)), Path(path).resolve()}


def location_problems(output: Path, guarded: Guarded, option: str = "--output") -> list[Problem]:
    """Every way `output` would write over, into or around something the command reads. Paths are compared as
    given and with links resolved, so a link into the data (or a data file that is a link) is caught too."""
    outs = _forms(output)
    problems = []
    for what, path in guarded.files:
        for form in _forms(path):
            hit = next((out for out in outs if _inside(form, out)), None)
            if hit is not None:
                problems.append(Problem(f"{option} {output} {'is' if form == hit else 'holds'} the {what} {path}"))
                break
    seen: set[Path] = set()
    for what, folder in guarded.folders:
        forms = _forms(folder)
        if forms & seen:
            continue
        seen |= forms
        for form in forms:
            if any(_inside(out, form) for out in outs):
                inside = "" if form in outs else "inside "
                problems.append(Problem(f"{option} {output} is {inside}the {what} {folder}"))
                break
            if any(_inside(form, out) for out in outs):
                problems.append(Problem(f"{option} {output} holds the {what} {folder}"))
                break
    return problems


def check_location(output: Path, guarded: Guarded, option: str = "--output") -> None:
    problems = location_problems(output, guarded, option)
    if problems:
        raise ConfigError(f"Refusing to write to {output}: it would mix with what this command reads",
                          problems[:20], fix=f"choose an {option} folder apart from the data, the images, the "
                          "recipe and the run you start from")


def check_file_output(path: Path, overwrite: bool, guarded: Guarded, option: str = "--out") -> None:
    """A results file (bench, plan, profile) may not be any input, sit inside a run or dataset it reads, or replace
    an earlier file unless `overwrite`. Checked before any work, so a long benchmark never ends in a refusal."""
    path = Path(path)
    check_location(path, guarded, option)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder", fix=f"give {option} a file path, e.g. results.json")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists", fix=f"choose another {option}, or pass --overwrite")


def is_empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def refuse_non_empty(output: Path, overwrite: bool, option: str = "--output") -> None:
    """A folder with anything in it is the user's until they say `--overwrite`."""
    if not is_empty(output) and not overwrite:
        raise ConfigError(f"{option} {output} is not empty",
                          fix=f"choose a new {option}, or pass --overwrite to replace what is there")


def real_path(output: Path) -> Path:
    """The folder an output really is: absolute, links resolved, so its siblings (staging, lock) sit beside the
    real folder on its own disk, and `--out .` has a name."""
    return Path(output).resolve()


def staging_path(output: Path) -> Path:
    """Where new content for `output` is written before it is swapped in (deterministic: every process of a
    distributed run agrees on it)."""
    output = real_path(output)
    return output.parent / f".{output.name}.incoming"


def _replaced_path(output: Path) -> Path:
    output = real_path(output)
    return output.parent / f".{output.name}.replaced"


def recover_interrupted_swap(output: Path) -> None:
    """If a swap was killed between its two renames, `output` is missing and the old folder waits aside: put it
    back, so the user's folder is never lost to the next command."""
    old = _replaced_path(output)
    if old.exists() and not real_path(output).exists():
        old.rename(real_path(output))


def swap_in(staging: Path, output: Path) -> None:
    """Replace `output` with the finished `staging` folder: rename the old one aside, rename the new one in,
    then delete the old one. A kill between the renames leaves the old one aside, and the next command puts it
    back (`recover_interrupted_swap`) before anything else."""
    output = real_path(output)
    if os.path.ismount(output):
        raise ConfigError(f"{output} is a mount point: it cannot be replaced by renaming",
                          fix="write to a folder inside it, or to a new folder")
    recover_interrupted_swap(output)
    old = _replaced_path(output)
    if old.exists():  # a finished swap whose clean-up was killed: output is there, this is the stale old copy
        shutil.rmtree(old)
    if output.exists():
        output.rename(old)
    staging.rename(output)
    if old.exists():
        shutil.rmtree(old)


def check_writable(folder: Path, needed: int = MIN_FREE_BYTES, option: str = "--output") -> None:
    """Create `folder` and prove it can be written (a probe file written, synced and removed), and that it has
    `needed` bytes free: a read-only or full disk is found before any model loads."""
    fix = f"free some space, or choose an {option} on another disk"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ecomtune-write-probe"
        with probe.open("wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"Cannot write to {folder}: {exc.strerror or exc}",
                          fix=f"make it writable, {fix}") from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(f"Not enough free space for {folder}: {free / 2**20:.0f} MiB free, about "
                          f"{needed / 2**20:.0f} MiB needed", fix=fix)


class OutputLock:
    """An exclusive lock on an output folder, beside it (`.NAME.lock`): a second command writing there is
    refused at once. It is an `flock`, so the kernel drops it when the holder exits, however it exits."""

    def __init__(self, output: Path, what: str = "output folder") -> None:
        from filelock import FileLock

        self.what = what
        output = real_path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.path = output.parent / f".{output.name}.lock"
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> OutputLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise ConfigError(f"Another ecomtune command is writing to {self.output} right now",
                              fix=f"wait for it to finish, or choose another {self.what} (a command that "
                              f"crashed has already released its lock, {self.path})") from None
        return self

    def release(self) -> None:
        self._lock.release()


@contextmanager
def locked(output: Path, enabled: bool = True, what: str = "output folder") -> Iterator[None]:
    """Hold the output's lock for the block (no-op when `enabled` is false, e.g. on non-main processes); `what`
    the output is, for the refusal's fix. Every command that writes an output passes here, so this is where files
    written through safetensors are given the mode a plain `open()` gives (`keep_plain_modes_in_safetensors`)."""
    keep_plain_modes_in_safetensors()
    lock = OutputLock(output, what).acquire() if enabled else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def replacing_folder(output: Path, overwrite: bool, guarded: Guarded, option: str = "--out",
                     needed: int = MIN_FREE_BYTES) -> Iterator[Path]:
    """For commands that write a whole folder (datasets, crops): check, lock, and yield the staging folder to
    write into; it is swapped in for `output` only when the block ends without an error. A non-empty `output`
    is refused unless `overwrite`."""
    output = Path(output)
    check_location(output, guarded, option)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{option} {output} is a file, not a folder", fix=f"give {option} a folder path")
    if overwrite and os.path.ismount(real_path(output)):
        raise ConfigError(f"{option} {output} is a mount point: it cannot be replaced whole",
                          fix=f"give {option} a folder inside it")
    with locked(output):
        recover_interrupted_swap(output)
        refuse_non_empty(output, overwrite, option)
        staging = staging_path(output)
        if staging.exists():
            shutil.rmtree(staging)  # left by an interrupted command of ours
        try:
            check_writable(staging, needed, option)  # inside: a refused staging folder is not left behind
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(staging, output)
