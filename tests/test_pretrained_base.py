"""The general base's cache: same seed same bytes, a version bump rebuilds, two processes build it once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ecomtune.backbones import pretrained
from ecomtune.backbones.families import QWEN2_VL
from tests.conftest import REPO

SMALL = pretrained.Pretraining(steps=2, batch_size=4, warmup=1)
ALIAS, TWIN = "tiny-qwen2-vl-general", "tiny-qwen2-vl"


def build(cache: Path, seed: int = 0, messages: list | None = None) -> Path:
    return pretrained.ensure_pretrained(ALIAS, TWIN, QWEN2_VL.tiny, seed, cache, SMALL,
                                        on_build=(messages.append if messages is not None else None))


def test_same_seed_same_bytes_and_trained_weights(tmp_path):
    one, two = build(tmp_path / "a"), build(tmp_path / "b")
    assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    start = tmp_path / "a" / json.loads((one / pretrained.DONE_FILE).read_text())["start"]
    assert (one / "model.safetensors").read_bytes() != (start / "model.safetensors").read_bytes(), "it trained"
    record = json.loads((one / pretrained.DONE_FILE).read_text())
    assert record["plan"]["steps"] == 2 and record["scenes"] == 8 and record["version"] == pretrained.PRETRAINED_VERSION
    other = build(tmp_path / "a", seed=1)
    assert other != one and (other / "model.safetensors").read_bytes() != (one / "model.safetensors").read_bytes()


def test_a_version_bump_rebuilds_and_a_cached_base_is_not_rebuilt(tmp_path, monkeypatch):
    messages: list[str] = []
    first = build(tmp_path, messages=messages)
    assert build(tmp_path, messages=messages) == first and len(messages) == 1, "the second call uses the cache"
    monkeypatch.setattr(pretrained, "PRETRAINED_VERSION", pretrained.PRETRAINED_VERSION + 1)
    bumped = build(tmp_path, messages=messages)
    assert bumped != first and len(messages) == 2
    assert json.loads((bumped / pretrained.DONE_FILE).read_text())["version"] == pretrained.PRETRAINED_VERSION


def test_two_processes_build_it_once(tmp_path):
    script = ("import sys; from pathlib import Path; from tests.test_pretrained_base import build\n"
              "messages = []\nprint(build(Path(sys.argv[1]), messages=messages), len(messages))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    lines = [out.split()[-2:] for out, _ in outputs]
    assert lines[0][0] == lines[1][0], "both use the same folder"
    assert sorted(int(built) for _, built in lines) == [0, 1], "one built it, the other waited and used it"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{ALIAS}-") and p.is_dir()], \
        "no half-built folder is left"
