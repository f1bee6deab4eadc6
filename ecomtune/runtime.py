"""Process-level facts shared by every command: which process of a torchrun / accelerate job this is.

Outputs are written by the main process only. Before the Trainer has set up the process group (on
CPU it does so lazily), the rank comes from the launcher's RANK variable.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
