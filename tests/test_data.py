"""Data checks: each kind of bad record gets its own error with file:line, before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.errors import DataError
from tests.conftest import run_cli

GOOD_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return tmp_path


def write_jsonl(folder: Path, lines: list[str]) -> Path:
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def good(**changes) -> str:
    record = {"images": ["red.png"], "messages": GOOD_MESSAGES}
    record.update(changes)
    return json.dumps(record)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_canonical_file(path)
    return [p.render() for p in caught.value.problems]


def test_good_record_loads_with_absolute_image_paths(folder):
    samples = load_canonical_file(write_jsonl(folder, [good()]))
    assert len(samples) == 1
    assert samples[0].images == [str((folder / "red.png").resolve())]
    assert samples[0].source.endswith("data.jsonl:1")


def test_prompt_completion_and_image_markers_are_normalised(folder):
    path = write_jsonl(folder, [
        json.dumps({"images": ["red.png"], "prompt": "<image>What colour?", "completion": "red"}),
        json.dumps({"images": ["red.png"], "messages": [{"role": "user", "content": "<image> Colour?"},
                                                        {"role": "assistant", "content": "red"}]}),
    ])
    for sample in load_canonical_file(path):
        assert sample.messages[0]["content"][0] == {"type": "image"}
        assert sample.messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": "red"}]}


@pytest.mark.parametrize(("line", "expected"), [
    ('{"images": ["red.png"], "messages": [', "malformed JSON"),
    (good(images=["missing.png"]), "file not found"),
    (good(images=["broken.png"]), "unreadable image"),
    (good(messages=[{"role": "user", "content": "<image><image>Colour?"}, GOOD_MESSAGES[1]]),
     "2 image placeholder(s) in the messages but 1 path(s)"),
    (good(images=[]), "1 image placeholder(s) in the messages but 0 path(s)"),
    (good(messages=[GOOD_MESSAGES[0], {"role": "assistant", "content": "  "}]), "assistant message 1 is empty"),
    (good(messages=[GOOD_MESSAGES[0]]), "last message is not from the assistant"),
    (good(messages=[{"role": "robot", "content": "x"}]), "needs a role"),
    (json.dumps({"images": [], "text": "hello"}), "neither 'messages' nor 'prompt'+'completion'"),
])
def test_each_bad_record_gets_its_specific_error(folder, line, expected):
    path = write_jsonl(folder, [good(), line])
    found = problems_of(path)
    assert len(found) == 1, found
    assert f"{path}:2" in found[0] and expected in found[0], found[0]
    assert "fix:" in found[0], found[0]


def test_every_bad_record_is_reported_together(folder):
    path = write_jsonl(folder, ["{oops", good(images=["missing.png"]), good(), good(images=[])])
    found = problems_of(path)
    assert [f.split(": ")[0] for f in found] == [f"{path}:1", f"{path}:2", f"{path}:4"]


def test_too_many_images_for_the_backbone(folder):
    from ecomtune.backbones.families import MLLAMA

    record = {"images": ["red.png"] * 3, "prompt": "<image><image><image>Same item?", "completion": "yes"}
    with pytest.raises(DataError, match=r"3 images, but Llama 3\.2 Vision takes at most 1 per sample"):
        load_canonical_file(write_jsonl(folder, [json.dumps(record)]), MLLAMA)


def test_data_is_checked_before_any_model_is_loaded(folder, tmp_path):
    """The hub backbone is never contacted: a data error comes first, in one block, with no traceback."""
    path = write_jsonl(folder, [good(images=["missing.png"])])
    result = run_cli("sft", "--backbone", "qwen2-vl", "--data", str(path), "--output", str(tmp_path / "run"),
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "file not found" in result.stderr and f"{path}:1" in result.stderr
    assert "Traceback" not in result.stderr and "hub" not in result.stderr
    assert not (tmp_path / "run").exists()
