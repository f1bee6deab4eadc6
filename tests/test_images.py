"""Images are read as a person sees them (EXIF orientation, 16-bit depth, transparency on white) and every image
check is shared by training and benchmark data: real files written by Pillow, no model loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecomtune.backbones.registry import aliases
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.data.images.load import image_size, load_rgb
from ecomtune.data.task_records import read_task_records
from ecomtune.errors import DataError
from ecomtune.tasks.registry import TASKS

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def qwen_spec():
    """tiny-qwen2-vl's spec, from the alias table: `resolve_backbone` would build the tiny twin's weights."""
    return aliases()["tiny-qwen2-vl"][0]


def write_training_data(folder: Path, images: list[str]) -> Path:
    """One training record per image, so that line N names images[N - 1]."""
    path = folder / "data.jsonl"
    lines = [{"images": [image], "prompt": "<image>Colour?", "completion": "red"} for image in images]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def refused(path: Path, **kwargs) -> list[str]:
    with pytest.raises(DataError) as caught:
        load_canonical_file(path, **kwargs)
    return [p.render() for p in caught.value.problems]


def test_exif_orientation_6_is_applied_and_image_size_is_the_displayed_one(tmp_path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 20))  # red strip on the stored image's left edge
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)

    shown = load_rgb(tmp_path / "sideways.jpg")
    assert shown.mode == "RGB" and shown.size == (20, 40) == image_size(tmp_path / "sideways.jpg")
    red, _, blue = shown.getpixel((10, 3))  # the left edge turned clockwise is the top edge
    assert red > 200 and blue < 60, shown.getpixel((10, 3))


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.uint16)).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as stored:
        assert stored.mode.startswith("I")  # Pillow holds it as 16-bit greyscale
    white, middle, black = (load_rgb(tmp_path / "grey16.png").getpixel((x, 0)) for x in range(3))
    assert white == (255, 255, 255) and black == (0, 0, 0)
    assert all(abs(v - 128) <= 1 for v in middle), middle


def test_transparent_pixels_come_out_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (*RED, 255))
    image.save(tmp_path / "cutout.png")
    shown = load_rgb(tmp_path / "cutout.png")
    assert shown.mode == "RGB" and shown.getpixel((0, 0)) == (255, 255, 255) and shown.getpixel((1, 0)) == RED


def test_a_truncated_jpeg_is_refused_with_file_line(tmp_path):
    Image.effect_noise((64, 64), 60).convert("RGB").save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])  # its header still opens: only decoding fails
    path = write_training_data(tmp_path, ["whole.jpg", "half.jpg"])
    found = refused(path)
    assert len(found) == 1 and f"{path}:2" in found[0] and "unreadable image" in found[0], found


def test_an_extreme_aspect_ratio_is_refused_for_qwen_only(tmp_path):
    Image.new("RGB", (300, 1), RED).save(tmp_path / "strip.png")
    Image.new("RGB", (200, 1), RED).save(tmp_path / "edge.png")  # exactly 200:1 is what smart_resize still takes
    path = write_training_data(tmp_path, ["edge.png", "strip.png"])
    found = refused(path, spec=qwen_spec())
    assert len(found) == 1 and f"{path}:2" in found[0], found
    assert "aspect ratio 300:1 exceeds the 200:1 that Qwen2-VL takes" in found[0] and "fix:" in found[0]
    assert len(load_canonical_file(path)) == 2


def deep_fashion(images) -> dict:
    """A deep-fashion bench record: the fields its prompt and its score read."""
    return {"id": "item1", "images": images, "attribute": "colour", "options": ["red", "blue"], "answer": "red"}


def test_bench_images_as_one_path_or_a_wrong_type(tmp_path):
    Image.new("RGB", (8, 8), RED).save(tmp_path / "x.png")
    path = tmp_path / "deep-fashion.jsonl"
    path.write_text(json.dumps(deep_fashion("x.png")) + "\n")
    (record,) = read_task_records(path, TASKS["deep-fashion"])
    assert record["images"] == [str((tmp_path / "x.png").resolve())]

    path.write_text(json.dumps(deep_fashion(["x.png"])) + "\n" + json.dumps(deep_fashion(5)) + "\n")
    with pytest.raises(DataError) as caught:
        read_task_records(path, TASKS["deep-fashion"])
    (problem,) = [p.render() for p in caught.value.problems]
    assert f"{path}:2" in problem and "'images' must be a path or a list of paths, got int" in problem, problem


def test_bench_records_get_the_aspect_ratio_limit(tmp_path):
    Image.new("RGB", (1, 300), RED).save(tmp_path / "tall.png")
    path = tmp_path / "deep-fashion.jsonl"
    path.write_text(json.dumps(deep_fashion(["tall.png"])) + "\n")
    assert len(read_task_records(path, TASKS["deep-fashion"])) == 1
    with pytest.raises(DataError, match="aspect ratio 300:1 exceeds the 200:1 that Qwen2-VL takes") as caught:
        read_task_records(path, TASKS["deep-fashion"], spec=qwen_spec())
    assert f"{path}:1" in caught.value.render()
