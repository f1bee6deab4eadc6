"""Reading raw listings (JSONL or CSV) into checked `Listing`s, every bad row reported with its file:line.

A listing is one product as a seller put it online: `id`, `title`, `category`, `aspects` (a mapping of aspect
name to value) and `images` (paths relative to the file, or absolute; the first is the primary image). In CSV,
`aspects` is a JSON object or `Name: value; Name: value`, and `images` a JSON list or paths separated by `|`.
Rows are checked the way training data is (images decoded, paths kept inside the file's folder) before any
model loads.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecomtune.data.jsonl import read_jsonl
from ecomtune.data.schema import check_record_images
from ecomtune.errors import ConfigError, DataError, Problem
from ecomtune.tasks.metrics import parse_key_values

MAX_REPORTED = 20
EXAMPLE = ('{"id": "sku1", "title": "Red cotton shirt", "category": "Shirts", "aspects": {"Colour": "red"}, '
           '"images": ["images/sku1.jpg"]}')


@dataclass(frozen=True)
class Listing:
    """One checked listing; `images` are absolute paths, `where` its file:line."""

    id: str
    title: str
    category: str
    aspects: dict[str, str]
    images: list[str]
    where: str = ""

    @property
    def key(self) -> str:
        """What the listing says (not where it is): a step's result for it is reused only while this is equal."""
        body = json.dumps([self.title, self.category, self.aspects, self.images], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class ReadListings:
    listings: list[Listing]
    bad: list[Problem] = field(default_factory=list)  # rows left out (only with skip_bad)


def _value_text(value: Any) -> str | None:
    """An aspect value as text: lists joined, numbers written out; None for what no seller could mean."""
    if isinstance(value, (list, tuple)):
        parts = [_value_text(v) for v in value]
        return ", ".join(p for p in parts if p)
    if value is None or isinstance(value, (str, int, float, bool)):
        return "" if value is None else str(value)
    return None


def _aspects(value: Any, where: str, problems: list[Problem]) -> dict[str, str]:
    if isinstance(value, str):  # CSV: a JSON object, or Name: value pairs
        value = parse_key_values(value) if value.strip() else {}
    if not isinstance(value, dict):
        problems.append(Problem(f"'aspects' must be a mapping of aspect name to value, got {type(value).__name__}",
                                where, 'e.g. "aspects": {"Colour": "red", "Size": "M"}'))
        return {}
    aspects = {}
    for name, raw in value.items():
        text = _value_text(raw)
        if text is None:
            problems.append(Problem(f"aspect {name!r} has a {type(raw).__name__} value", where,
                                    "give each aspect a text value (or a list of them)"))
        else:
            aspects[str(name)] = text
    return aspects


def _images(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, str) and "|" in value:
        return [part.strip() for part in value.split("|") if part.strip()]
    return value


def _text(row: dict, key: str, where: str, problems: list[Problem]) -> str:
    value = row.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        problems.append(Problem(f"'{key}' must be text, got {type(value).__name__}", where))
        return ""
    return str(value).strip()


def _listing(row: Any, base: Path, where: str) -> tuple[Listing | None, list[Problem]]:
    """One row checked; (listing, []) or (None, its problems)."""
    problems: list[Problem] = []
    if not isinstance(row, dict) or row.get("id") in (None, "") or not row.get("images"):
        return None, [Problem("a listing needs an 'id' and at least one image", where, f"e.g. {EXAMPLE}")]
    aspects = _aspects(row.get("aspects", {}), where, problems)
    title, category = _text(row, "title", where, problems), _text(row, "category", where, problems)
    paths, _, image_problems = check_record_images(_images(row["images"]), base, where)
    problems.extend(image_problems)
    if problems:
        return None, problems
    return Listing(str(row["id"]).strip(), title, category, aspects, paths, where), []


def _rows(path: Path) -> list[tuple[str, Any, Problem | None]]:
    """(file:line, row, problem) for every row of a JSONL or CSV file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return list(read_jsonl(path))
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
            reader = csv.DictReader(handle)
            rows, start = [], 2  # line 1 is the header
            for row in reader:
                rows.append((f"{path}:{start}", row, None))
                start = reader.line_num + 1  # a quoted field may span lines: the next row starts after them
            return rows
    raise ConfigError(f"{path}: listings must be a .jsonl or .csv file", fix="save the listings as JSON lines or CSV")


def read_listings(path: Path, skip_bad: bool = False, limit: int | None = None) -> ReadListings:
    """Every listing of `path`, checked. Bad rows are one DataError listing each with its file:line, unless
    `skip_bad` (then they are left out and returned in `bad`). Ids must be unique: resuming skips by id."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Listings file {path} does not exist", fix="pass a .jsonl or .csv file of listings")
    listings, problems, seen = [], [], {}
    for where, row, problem in _rows(path):
        if problem is not None:
            problems.append(problem)
            continue
        listing, found = _listing(row, path.parent, where)
        if listing is not None and listing.id in seen:
            found = [Problem(f"id {listing.id!r} is also the id of {seen[listing.id]}", where,
                             "give every listing a unique id: finished work is found again by id")]
            listing = None
        problems.extend(found)
        if listing is not None:
            seen[listing.id] = where
            listings.append(listing)
    if problems and not skip_bad:
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} problem(s){more}; nothing was curated", problems[:MAX_REPORTED],
                        fix="fix the rows, or pass --skip-bad to curate the others and list these in the report")
    if not listings:
        raise DataError(f"{path}: no listings to curate", fix=f"one listing per line, e.g. {EXAMPLE}")
    return ReadListings(listings[:limit], problems)
