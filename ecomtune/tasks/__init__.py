"""The task vocabulary shared by synthesis, curation, the benchmark and the training probe: the benchmark tasks
(`registry`: one entry per task), their prompts, answer parsers, scorers and judges, the metrics they use, and the
general world the `general` task asks about.

Pure: nothing here loads a model or imports torch, so every layer above can use it.
"""

from ecomtune.tasks.registry import TASKS, Task, register, resolve_tasks, task

__all__ = ["TASKS", "Task", "register", "resolve_tasks", "task"]
