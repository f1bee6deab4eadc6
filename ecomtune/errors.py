"""User-facing errors.

Every mistake a user can make (a bad recipe, a broken data file, an unknown backbone, no network) is
raised as an `EcomtuneError`: the CLI prints it in one block and exits non-zero, with no traceback.
Each error says what was wrong, where (file, line, key) and how to fix it.
"""

from __future__ import annotations

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
        return "\n".join(lines)


class ConfigError(EcomtuneError):
    """A recipe or command-line override is invalid."""


class DataError(EcomtuneError):
    """A data file has records that cannot be trained on."""


class BackboneError(EcomtuneError):
    """A backbone cannot be resolved, downloaded, or its module roles cannot be found."""
