"""A data source's sampling rule, LLaVA-OneVision's grammar: which rows of the source a stage takes.

- `all`: every row;
- `first:N` / `end:N`: the first / last N rows; `random:N`: N rows drawn without replacement, seeded;
- N is a count or a percentage (`first:10%`, rounded up as OneVision does); a percentage above 100% repeats the
  source, at most MAX_PASSES times.

A recipe's rules are parsed as it is read, so a typo names its line; taking the rows is
`ecomtune.data.prepare.mixture`'s.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

MAX_PASSES = 100  # a rule may take its source this many times over (first:10000%)
RULE = re.compile(r"^(first|end|random):(\d+(?:\.\d+)?)(%?)$")
RULES_HELP = "all, first:N, end:N or random:N, with N a count (first:1000) or a percentage (first:10%)"


@dataclass(frozen=True)
class SamplingRule:
    """A parsed rule: `kind` and either a `count` or a `percent`."""

    kind: Literal["all", "first", "end", "random"]
    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        return f"{self.kind}:{self.count}" if self.count is not None else f"{self.kind}:{self.percent:g}%"

    def rows_taken(self, available: int) -> int:
        """How many rows the rule yields from `available` rows (repeats included)."""
        if self.kind == "all":
            return available
        if self.count is not None:
            return min(self.count, available)
        return math.ceil(Fraction(str(self.percent)) * available / 100)  # exact: 16.1% of 1000 is 161


def parse_rule(text: str) -> SamplingRule:
    """A sampling rule from its text; ValueError naming the rules there are for anything else."""
    text = str(text).strip()
    if text == "all":
        return SamplingRule("all")
    match = RULE.match(text)
    if not match:
        raise ValueError(f"unknown sampling rule {text!r}: use {RULES_HELP}")
    kind, number, percent = match.groups()
    if percent:
        value = float(number)
        if value <= 0:
            raise ValueError(f"sampling rule {text!r} takes no rows: the percentage must be above 0")
        if value > MAX_PASSES * 100:
            raise ValueError(f"sampling rule {text!r} would repeat the source {math.ceil(value / 100):,} times; at "
                             f"most {MAX_PASSES} ({kind}:{MAX_PASSES * 100}%) are allowed")
        return SamplingRule(kind, percent=value)  # type: ignore[arg-type]
    if "." in number or int(number) <= 0:
        raise ValueError(f"sampling rule {text!r}: a count must be a whole number above 0 (or write a percentage)")
    return SamplingRule(kind, count=int(number))  # type: ignore[arg-type]
