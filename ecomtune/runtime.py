"""Process-level facts shared by every command: which process of a torchrun / accelerate job this is.

Outputs are written by the main process only. Before the Trainer has set up the process group (on
CPU it does so lazily), the rank comes from the launcher's RANK variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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
