"""`ecomtune demo` from an installed wheel (not the checkout), and `ecomtune bench strategies`, at small sizes.

The wheel test proves the shipped recipes are packaged: the demo runs from a folder that has no `recipes/`,
with the checkout kept off the import path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

FEW_STEPS = [f"--set={stage}.train.{key}=2" for stage in ("align", "sft") for key in ("max_steps", "save_steps")]
# The demo's own base is trained for minutes on first use; the wheel test runs the same path on the random twin.
RANDOM_TWIN = ["--set=backbone.name=tiny-qwen2-vl", "--set=mid.train.max_steps=2", "--set=mid.train.save_steps=2"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """ecomtune built as a wheel and installed into a folder of its own (its dependencies come from the venv)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("ecomtune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"ecomtune/recipes/{n}.yaml" for n in ("tiny-qwen2-vl", "qwen2-vl", "qwen2.5-vl")} <= set(names)
    site = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "ecomtune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.budget
def test_the_demo_runs_from_an_installed_wheel(installed, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import ecomtune; print(ecomtune.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(installed)), "the test must run the installed copy"
    listed = run_installed(installed, tmp_path, "recipes")
    assert listed.returncode == 0 and "tiny-qwen2-vl.yaml" in listed.stdout

    result = run_installed(installed, tmp_path, "demo", "--output", "demo", "--items", "12", *FEW_STEPS, *RANDOM_TWIN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "beat" in result.stdout and "deep-fashion colour" in result.stdout
    assert "base 4-bit" in result.stdout and "general probe" in result.stdout and "general skill kept" in result.stdout
    after = json.loads((tmp_path / "demo" / "bench-after.json").read_text())
    assert after["model"]["kind"] == "adapter" and set(after["tasks"]) >= {"deep-fashion", "item-intelligence"}
    probes = {}
    for stage in ("align", "mid", "sft"):
        manifest = json.loads((tmp_path / "demo" / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["metrics"]["global_step"] == 2
        probes[stage] = manifest["probe"]
    # every stage's guard measures from align's step 0 (baseline: chain), not from where it began itself
    assert probes["align"]["baseline_from"] == "step 0"
    align_start = f"step 0 of {(tmp_path / 'demo' / 'align').resolve()}"
    assert probes["mid"]["baseline_from"] == probes["sft"]["baseline_from"] == align_start
    assert probes["mid"]["baseline_general"] == probes["sft"]["baseline_general"] == probes["align"]["baseline_general"]
    exported = json.loads((tmp_path / "demo" / "export" / "manifest.json").read_text())
    assert exported["kind"] == "export" and exported["verification"]["ok"] and "verified against" in result.stdout
    assert "<h1>ecomtune bench report</h1>" in (tmp_path / "demo" / "report.html").read_text()

    again = run_installed(installed, tmp_path, "demo", "--output", "demo", "--items", "12", *FEW_STEPS, *RANDOM_TWIN)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_bench_strategies_compares_two_strategies(tmp_path):
    out = tmp_path / "study"
    result = run_cli("bench", "strategies", "--output", str(out), "--items", "12", "--steps", "2",
                     "--strategies", "all,primary", *FEW_STEPS[:2])
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    rows = study["strategies"]
    assert set(rows) == {"all", "primary"}
    assert rows["primary"]["images_per_item"]["max"] == 1 < rows["all"]["images_per_item"]["max"]
    assert rows["primary"]["visual_tokens_per_item"]["median"] < rows["all"]["visual_tokens_per_item"]["median"]
    for row in rows.values():
        assert 0.0 <= row["scores"]["f1"] <= 1.0 and row["predict_items_per_second"] > 0
