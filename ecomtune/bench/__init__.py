"""The compact benchmark suite: tasks, pure metrics, judges, the runner and reports (`ecomtune bench`).

The runner (which imports torch) is not imported here, so that prompts and metrics stay light to use.
"""

from ecomtune.bench.tasks import HEADLINE, TASKS

__all__ = ["HEADLINE", "TASKS"]
