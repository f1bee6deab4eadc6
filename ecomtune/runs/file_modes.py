"""Files written atomically get the mode a plain `open()` would give them.

An atomic write goes through a temporary file renamed into place. `tempfile.mkstemp` (and the tempfile crate
that safetensors >= 0.8 writes through, safetensors issue #782) creates that file `-rw-------`, and the rename
keeps it: under the usual umask 0022 a finished run's adapter, manifest, results JSON or HTML report would be
readable by its owner only, so a serving container or a colleague could not read it. Here:

- `write_bytes_atomic` / `write_text_atomic` is the one atomic-write helper: temp file, fsync, the plain mode,
  rename. The plain mode is the existing file's permission bits when it is replaced, else 0o666 less the umask.
- `keep_plain_modes_in_safetensors` gives every file safetensors writes (PEFT's adapter, transformers'
  checkpoints and exports, ecomtune's projector) that same mode. Every command that writes an output applies it
  when it takes the output's lock (`ecomtune.runs.outputs.locked`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_MARK = "_ecomtune_plain_modes"


def current_umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux 4.7+)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the usual read-by-setting, restored at once
    os.umask(mask)
    return mask


def plain_file_mode(path: Path | str) -> int:
    """The permission bits `open(path, "w")` would leave: an existing file keeps its own, a new one gets
    0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def write_bytes_atomic(path: Path | str, data: bytes, sync: bool = True) -> None:
    """Write `data` through a temp file renamed into place: readers see the old file or the new one, never half
    of either, and the file has the mode a plain `open()` would give it. `sync`: fsync before the rename (off for
    caches that can be rebuilt, where a sync per file would cost more than a lost file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = plain_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    """`text` as UTF-8, written atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def keep_plain_modes_in_safetensors() -> None:
    """Make every `safetensors.torch.save_file` (whoever imported it: PEFT, transformers, ecomtune) leave the
    file with the mode a plain `open()` would give it. Idempotent; a safetensors that already does so is
    untouched in effect (the mode it leaves is the one set here)."""
    import safetensors.torch as st

    original = st.serialize_file
    if getattr(original, _MARK, False):
        return

    def serialize_file(tensors, filename, *args, **kwargs):
        mode = plain_file_mode(filename)  # before the write: a replaced file keeps its own mode
        result = original(tensors, filename, *args, **kwargs)
        if os.stat(filename).st_mode & 0o7777 != mode:
            os.chmod(filename, mode)
        return result

    setattr(serialize_file, _MARK, True)
    st.serialize_file = serialize_file  # `save_file` looks it up in its module at every call
