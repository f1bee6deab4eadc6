"""The documentation: the site builds with --strict (no broken link or anchor), the generated reference pages say
what the code says, README stays short and its links land, every file the pages name exists, and every
`docs/<page>.md#<anchor>` that ecomtune's messages cite is a real page and anchor."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
README_LIMIT = 12 * 1024  # bytes: README is the front page; the rest belongs in docs/
# Files the pages name before they exist on this branch (written alongside); drop an entry once its file exists.
PENDING_FILES = {"tests/test_layers.py"}
NAMED_FILE = re.compile(r"(?<![\w/.-])((?:ecomtune|tests|benchmarks|recipes|data_samples)/[\w./-]*?"
                        r"\.(?:py|yaml|yml|jsonl|json|txt|jinja|md|png))(?![\w/])")
NAMED_MODULE = re.compile(r"`(ecomtune(?:\.\w+)+)`")  # a module, or a name in one: `ecomtune.runs.outputs`
CITATION = re.compile(r"docs/([\w./-]+\.md)#([\w-]+)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `make docs` builds it (strict: a warning, such as a missing page or anchor, fails)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed (run `make docs`):\n{done.stdout}{done.stderr}"
    return out


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _anchors(site: Path, page: str) -> set[str] | None:
    """The element ids of a docs page (`training.md`) in the built site, None when there is no such page."""
    stem = page[: -len(".md")]
    html = site / ("index.html" if stem == "index" else f"{stem}/index.html")
    if not html.exists():
        return None
    parser = _Ids()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser.ids


def test_site_builds_strict(site: Path) -> None:
    assert (site / "index.html").exists()


def test_reference_pages_match_the_code() -> None:
    stale = [path.relative_to(REPO).as_posix() for path, text in _generator().render().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert not stale, (f"generated pages differ from the code: {', '.join(stale)}; regenerate them with "
                       "`make docs-reference` (python docs/gen_reference.py) and commit the result")


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, (f"README.md is {size} bytes, over {README_LIMIT}: move the detail to a page "
                                 "under docs/ and link it")


def test_readme_links_land(site: Path) -> None:
    broken = []
    for target in MARKDOWN_LINK.findall(README.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if not (REPO / path).exists():
            broken.append(target)
        elif anchor:
            ids = _anchors(site, Path(path).relative_to("docs").as_posix()) if path.startswith("docs/") else None
            if ids is None or anchor not in ids:
                broken.append(target)
    assert not broken, f"README.md links to what does not exist: {broken}"


def test_pages_name_existing_files() -> None:
    missing = sorted({f"{page.relative_to(REPO)}: {name}"
                      for page in [README, *DOCS.rglob("*.md")]
                      for name in NAMED_FILE.findall(page.read_text(encoding="utf-8"))
                      if not (REPO / name).exists() and name not in PENDING_FILES})
    assert not missing, "pages name files that do not exist (moved or renamed?):\n" + "\n".join(missing)


def _module_file(dotted: str) -> Path | None:
    path = REPO.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _names_something(dotted: str) -> bool:
    """A module that exists, or a name its parent module defines or imports."""
    if _module_file(dotted) is not None:
        return True
    parent, _, name = dotted.rpartition(".")
    source = _module_file(parent)
    return source is not None and re.search(
        rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]|^\s*from\s.+\bimport\b.*\b{name}\b|^\s+{name},?\s*$",
        source.read_text(encoding="utf-8"), re.M) is not None


def test_pages_name_existing_modules() -> None:
    """Pages name code by its dotted path, as imports do, so a module that moves is found here."""
    missing = sorted({f"{page.relative_to(REPO)}: {name}"
                      for page in [README, *DOCS.rglob("*.md")]
                      for name in NAMED_MODULE.findall(page.read_text(encoding="utf-8"))
                      if not _names_something(name)})
    assert not missing, "pages name modules that do not exist (moved or renamed?):\n" + "\n".join(missing)


def test_cited_pages_and_anchors_exist(site: Path) -> None:
    """Messages that send the user to the docs cite `docs/<page>.md#<anchor>`; each must land. (Until messages
    cite the docs this way there is nothing to check, and the test passes.)"""
    broken = []
    for source in sorted((REPO / "ecomtune").rglob("*.py")):
        for page, anchor in CITATION.findall(source.read_text(encoding="utf-8")):
            ids = _anchors(site, page)
            if ids is None or anchor not in ids:
                broken.append(f"{source.relative_to(REPO)}: docs/{page}#{anchor}")
    assert not broken, "messages cite docs pages or anchors that do not exist:\n" + "\n".join(broken)
