"""Shared fixtures: one tiny-twin cache per test session, a small synthetic catalog, and quick recipes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The suite must stay within 20 minutes on 2 cores. Tests marked `budget` (the heaviest end-to-end runs, each
# also shown by a command in README) run last, and only while the suite is inside this budget; past it they are
# skipped with the command that runs them alone.
SUITE_BUDGET_S = float(os.environ.get("ECOMTUNE_TEST_BUDGET_S", 17 * 60))
_SESSION_STARTED = time.monotonic()


def pytest_collection_modifyitems(config, items) -> None:
    budgeted = [item for item in items if item.get_closest_marker("budget")]
    items[:] = [item for item in items if not item.get_closest_marker("budget")] + budgeted


def pytest_runtest_setup(item) -> None:
    used = time.monotonic() - _SESSION_STARTED
    if item.get_closest_marker("budget") and used > SUITE_BUDGET_S:
        pytest.skip(f"the suite used {used / 60:.1f} of its {SUITE_BUDGET_S / 60:.0f} minutes; run this test "
                    f"alone: pytest {item.nodeid}")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory) -> Path:
    """Tiny twins are built once per session into a private cache (never the user's)."""
    cache = tmp_path_factory.mktemp("ecomtune-cache")
    os.environ["ECOMTUNE_CACHE"] = str(cache)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return cache


@pytest.fixture(scope="session")
def catalog(tmp_path_factory) -> dict[str, Path]:
    from ecomtune.synth.catalog import write_catalog

    return write_catalog(tmp_path_factory.mktemp("catalog"), 24, seed=3)


def quick_overrides(stage: str, steps: int = 4, save_steps: int | None = None) -> list[str]:
    """Recipe overrides that keep a stage to a few CPU steps."""
    return [
        f"{stage}.train.max_steps={steps}",
        f"{stage}.train.save_steps={save_steps or steps}",
        f"{stage}.train.batch_size=2",
        f"{stage}.train.grad_accum=1",
        f"{stage}.train.logging_steps=1",
        f"{stage}.train.gradient_checkpointing=false",
    ]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run the real `ecomtune` CLI in a subprocess (python -m ecomtune)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}  # rich wraps at 80 columns off a terminal
    return subprocess.run([sys.executable, "-m", "ecomtune", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
