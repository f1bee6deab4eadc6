"""Process-level facts shared by every command: which process of a torchrun / accelerate job this is, where
ecomtune's cache folder is, and whether the Hugging Face hub can be reached.

Outputs are written by the main process only. Before the Trainer has set up the process group (on
CPU it does so lazily), the rank comes from the launcher's RANK variable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


def cache_root() -> Path:
    """ecomtune's cache folder: `ECOMTUNE_CACHE`, else ~/.cache/ecomtune. Tiny twins (`tiny/`), sized twins
    (`sized/`), dataset images (`images/`), datasets (`datasets/`) and the preparation cache live under it."""
    return Path(os.environ.get("ECOMTUNE_CACHE") or Path.home() / ".cache" / "ecomtune")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) answers on port 443 within `timeout` seconds; False at once
    when HF_HUB_OFFLINE is set. Checked before a download, so an offline machine fails in seconds, not after
    minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def is_main_process() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def decided_by_main(decide: Callable[[], T]) -> T:
    """Run `decide` on the main process only and hand every process its result, or its user error.

    Decisions about the output folder must be the same on every process of a torchrun / accelerate job, and
    only the main process writes there: a process that looked at the folder a moment later would see the main
    process's first files and decide differently. A single process just calls `decide`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return decide()
    import torch.distributed as dist
    from accelerate import PartialState

    from ecomtune.errors import EcomtuneError

    PartialState()  # the process group the Trainer would set up later, set up now
    box: list[Any] = [None]
    if is_main_process():
        try:
            box = [("result", decide())]
        except EcomtuneError as exc:
            box = [("error", exc)]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
