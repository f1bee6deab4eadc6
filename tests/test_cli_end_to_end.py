"""The real command line, end to end: align -> sft with the shipped tiny recipe, and sft under torchrun."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

TINY = "recipes/tiny-qwen2-vl.yaml"


def short(stage: str, steps: int = 3) -> list[str]:
    return ["--set", f"{stage}.train.max_steps={steps}", "--set", f"{stage}.train.save_steps={steps}"]


@pytest.fixture(scope="module")
def align_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "align"
    result = run_cli("align", "--recipe", TINY, "--output", str(out), *short("align"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "align on tiny-qwen2-vl: trained projector" in result.stdout
    assert "projector" in result.stderr and "frozen" in result.stderr  # the parameter table
    return out


def test_align_then_sft_with_the_shipped_sample_data(align_run):
    out = align_run.parent / "sft"
    result = run_cli("sft", "--recipe", TINY, "--init-from", str(align_run), "--output", str(out), *short("sft"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained projector" in result.stdout and "lora" in result.stdout and str(out) in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["init_from"] == str(align_run)
    sources = manifest["data"]["sources"]  # the shipped mixture: instructions, compliance, general replay
    assert [s["path"] for s in sources] == ["data_samples/instruct.jsonl", "data_samples/compliance.jsonl",
                                            "data_samples/general-train.jsonl"]
    assert sources[1]["sampling"] == "first:400%" and sources[1]["taken"] == 44, "400% takes every row 4 times"
    assert sources[2]["sampling"] == "all" and sources[2]["taken"] == 120, "every replay row once"
    assert (out / "adapter_model.safetensors").is_file()


def test_three_stages_through_the_command_line(align_run):
    mid = align_run.parent / "mid"
    result = run_cli("mid", "--recipe", "tiny-qwen2-vl", "--init-from", str(align_run), "--output", str(mid),
                     *short("mid", steps=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mid on tiny-qwen2-vl" in result.stdout
    manifest = json.loads((mid / "manifest.json").read_text())
    assert manifest["stage"] == "mid" and manifest["data"]["sources"][0]["path"] == "data_samples/mid.jsonl"
    assert manifest["data"]["sources"][1]["path"] == "data_samples/general-train.jsonl"
    sft = align_run.parent / "sft-from-mid"
    result = run_cli("sft", "--recipe", TINY, "--init-from", str(mid), "--output", str(sft), *short("sft", steps=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sft / "manifest.json").read_text())["init_from"] == str(mid)


def test_existing_output_is_not_clobbered(align_run):
    result = run_cli("align", "--recipe", TINY, "--output", str(align_run), *short("align"))
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr


def test_resume_on_a_finished_run_does_nothing_and_says_so(align_run):
    before = (align_run / "manifest.json").read_bytes()
    result = run_cli("align", "--recipe", TINY, "--output", str(align_run), "--resume", *short("align"))
    assert result.returncode == 0 and "nothing to resume" in result.stderr, result.stderr[-2000:]
    assert (align_run / "manifest.json").read_bytes() == before


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
@pytest.mark.parametrize("packing", [False, True], ids=["rows", "packed"])
def test_sft_under_torchrun_two_processes(align_run, tmp_path, packing):
    """Same command, 2-process DDP on CPU (gloo): trains, and only rank 0 writes outputs; packed rows are
    shared out between the processes like samples."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "ecomtune", "sft", "--recipe", TINY,
           "--init-from", str(align_run), "--output", str(out), *short("sft", steps=4),
           "--set", f"sft.packing={str(packing).lower()}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["global_step"] == 4
    # 2 processes x the recipe's batch per step: an epoch is half the steps it would be in one process
    batch = manifest["recipe"]["sft"]["train"]["batch_size"]
    rows = manifest["data"]["tokens"]["packing"]["rows"] if packing else manifest["data"]["tokens"]["samples"]
    assert manifest["metrics"]["epoch"] == pytest.approx(4 / math.ceil(rows / (2 * batch)), rel=1e-6)
    assert result.stdout.count("sft on tiny-qwen2-vl") == 1, "only rank 0 reports"
    assert (out / "adapter_model.safetensors").is_file()
