"""Named registries: the one list of stages (`ecomtune.config.stages.STAGES`) and of benchmark tasks
(`ecomtune.tasks.registry.TASKS`) are each a `Registry`, so adding one of them is one `register` call that refuses a
name twice (a second entry under a name would silently replace the first, and whichever import ran last would win).

It sits at the bottom of the package, with `errors`, so both config and tasks can use it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class Named(Protocol):
    name: str


Entry = TypeVar("Entry", bound=Named)


class Registry(dict[str, Entry]):
    """Entries by name, in the order they were registered. `kind` names what it holds in its messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, entry: Entry) -> Entry:
        """Add `entry` under its name; a name is registered once."""
        if entry.name in self:
            raise ValueError(f"a {self.kind} named {entry.name!r} is registered already")
        self[entry.name] = entry
        return entry
