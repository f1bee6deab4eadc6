"""Finished outputs are readable by whoever a plain `open()` would let read them: atomic writes (ours, and the
temp files safetensors >= 0.8 writes through) keep the mode the umask gives, and a replaced file keeps its own."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ecomtune.config.recipe_files import load_recipe
from ecomtune.runs.file_modes import plain_file_mode, write_text_atomic
from ecomtune.runs.manifest import write_json_atomic
from ecomtune.runs.outputs import locked
from tests.conftest import quick_overrides


@contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    with umask(0o002):
        write_text_atomic(tmp_path / "report.html", "<html></html>")
        write_json_atomic(tmp_path / "results.json", {"score": 1})
        (tmp_path / "plain.txt").write_text("x")
        assert mode(tmp_path / "plain.txt") == 0o664
        assert mode(tmp_path / "report.html") == 0o664 and mode(tmp_path / "results.json") == 0o664
        (tmp_path / "results.json").chmod(0o640)  # a file the user restricted keeps its mode when replaced
        write_json_atomic(tmp_path / "results.json", {"score": 2})
        assert mode(tmp_path / "results.json") == 0o640
        assert plain_file_mode(tmp_path / "new") == 0o664


def test_safetensors_files_written_under_an_output_lock_get_the_plain_mode(tmp_path):
    from safetensors.torch import save_file

    with umask(0o022), locked(tmp_path / "out"):
        save_file({"a": torch.zeros(2)}, str(tmp_path / "adapter_model.safetensors"))
    assert mode(tmp_path / "adapter_model.safetensors") == 0o644


@pytest.mark.slow
def test_every_file_of_a_finished_run_is_readable_as_a_plain_open_leaves_it(catalog, tmp_path):
    from ecomtune.train.stages import run_sft

    recipe = load_recipe(None, [f"sft.data={catalog['instruct']}", *quick_overrides("sft", steps=1), "sft.lora.r=2"])
    with umask(0o002):
        run_sft(recipe, tmp_path / "sft")
    files = [p for p in (tmp_path / "sft").rglob("*") if p.is_file()]
    assert {"adapter_model.safetensors", "manifest.json"} <= {p.name for p in files}
    assert any(p.parent.name.startswith("checkpoint-") for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in files if mode(p) != 0o664}
    assert not wrong, wrong
