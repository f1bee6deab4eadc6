"""Output folders never cost the user anything they own.

Through the real CLI: a second command writing to a folder is refused while another holds its lock (and a killed
holder never leaves it stuck); a non-empty folder is refused unless `--overwrite`, and a replaced one keeps no
stale file; `crop` and `sft` never write into, over or around their inputs; a failing `--overwrite` run deletes
nothing. And `location_problems` by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_cli

TINY_RECIPE = "recipes/tiny-qwen2-vl.yaml"

# The holder keeps a reference to its lock: a dropped FileLock is released when it is garbage-collected.
HOLD_LOCK = ("from ecomtune.runs.outputs import OutputLock; import time, sys; "
             "lock = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def run_cli_together(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent CLI runs side by side (each is mostly start-up time)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    """The CLI's message with rich's line wrapping undone."""
    return " ".join(text.split())


def refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one message holding every needle, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = one_line(result.stderr)
    for needle in needles:
        assert one_line(needle) in message, (needle, result.stderr[-3000:])


def test_a_second_command_is_refused_while_the_lock_is_held_and_a_killed_holder_releases_it(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = run_cli("synth", "--out", str(out), "--items", "4")
        refused(busy, "Another ecomtune command is writing", str(out))
        assert not (out / "instruct.jsonl").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert holder.returncode == -9  # SIGKILL: no cleanup ran, the kernel dropped the flock
    free = run_cli("synth", "--out", str(out), "--items", "4")
    assert free.returncode == 0, free.stderr[-3000:]
    assert (out / "instruct.jsonl").is_file()


def test_synth_refuses_a_non_empty_folder_and_overwrite_leaves_no_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    out.mkdir()
    (out / "my-notes.txt").write_text("mine")
    result = run_cli("synth", "--out", str(out), "--items", "4")
    refused(result, "not empty", "--overwrite")
    assert snapshot(out) == {"my-notes.txt": b"mine"}

    replaced = run_cli("synth", "--out", str(out), "--items", "4", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (out / "my-notes.txt").exists(), "a stale file of the replaced folder survived"
    assert (out / "instruct.jsonl").is_file() and (out / "bench").is_dir()
    assert not (tmp_path / ".cat.incoming").exists() and not (tmp_path / ".cat.replaced").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cat.lock") == ["cat"]


def _multi_image_items(folder: Path) -> Path:
    """Two items of two real images each, in `folder` (items.jsonl beside images/)."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for item in range(2):
        names = []
        for view in range(2):
            name = f"images/item{item}_{view}.png"
            image = Image.new("RGB", (96, 96), (40 + 90 * item, 200 - 80 * view, 60))
            image.paste((250, 250, 250), (10 + 20 * view, 10, 50 + 20 * view, 70 - 10 * item))
            image.save(folder / name)
            names.append(name)
        lines.append(json.dumps({"images": names, "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}))
    items = folder / "items.jsonl"
    items.write_text("\n".join(lines) + "\n")
    return items


def test_crop_never_writes_into_or_around_its_inputs(tmp_path: Path) -> None:
    from ecomtune.data.images.item_crops import crop_file
    from ecomtune.errors import ConfigError

    data = tmp_path / "shop" / "data"
    items = _multi_image_items(data)
    before = snapshot(tmp_path)
    result = run_cli("crop", str(items), "--out", str(data), "--overwrite")
    refused(result, "Refusing to write to", f"--out {data} holds the items file")
    assert snapshot(tmp_path) == before
    for out, what in ((data, "holds the items file"), (data / "images", "is the image folder"),
                      (tmp_path / "shop", "holds the items file")):  # the same check in-process, every case
        with pytest.raises(ConfigError) as raised:
            crop_file(items, out, None, None, overwrite=True)
        assert what in raised.value.render()
        assert snapshot(tmp_path) == before, f"--out {out} changed an input"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop"]


def test_crop_boxes_file_of_the_wrong_shape_is_refused_naming_the_entry(tmp_path: Path) -> None:
    from ecomtune.data.images.item_crops import boxes_from_file
    from ecomtune.errors import DataError

    items = _multi_image_items(tmp_path / "data")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"images/item0_0.png": [[1, 2, 30, 40]], "a.png": [1, 2]}))
    result = run_cli("crop", str(items), "--out", str(tmp_path / "cropped"), "--boxes", str(boxes))
    refused(result, str(boxes), "'a.png': [1, 2] is not a list of [x0, y0, x1, y1] boxes")
    assert "item0_0" not in result.stderr  # only the wrong entry is named
    assert not (tmp_path / "cropped").exists()

    boxes.write_text(json.dumps([[1, 2, 30, 40]]))
    with pytest.raises(DataError) as raised:
        boxes_from_file(boxes)
    assert str(boxes) in raised.value.render() and "holds a JSON list, not an object" in raised.value.render()


def test_a_refused_sft_run_deletes_nothing(catalog: dict[str, Path], tmp_path: Path) -> None:
    """--overwrite of a run folder is checked whole before anything is deleted: bad data, and an --output that
    holds the data file and its images (checked after the data, before any model loads)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("the user's")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"images": [], "messages": [\n')

    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    lines = catalog["instruct"].read_text().splitlines()[:3]
    for line in lines:
        for image in json.loads(line)["images"]:
            shutil.copy(catalog["instruct"].parent / image, data / image)
    (data / "x.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(data)

    bad_data, holds_data = run_cli_together(
        ("sft", "--recipe", TINY_RECIPE, "--data", str(bad), "--output", str(run), "--overwrite"),
        ("sft", "--recipe", TINY_RECIPE, "--data", str(data / "x.jsonl"), "--output", str(data), "--overwrite"))
    refused(bad_data, f"{bad}:1", "malformed JSON")
    assert snapshot(run) == {"keep.txt": b"the user's"}
    refused(holds_data, "Refusing to write to", f"holds the data file {data / 'x.jsonl'}", "image folder")
    assert snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["bad.jsonl", "d", "run"]


def test_location_problems_by_hand(tmp_path: Path) -> None:
    from ecomtune.errors import ConfigError
    from ecomtune.runs.outputs import Guarded, check_location, location_problems

    data_file = tmp_path / "data" / "train.jsonl"
    images = tmp_path / "pictures" / "images"
    guarded = Guarded(files=[("data file", data_file)], folders=[("image folder", images)])

    def said(output: Path) -> list[str]:
        return [p.what for p in location_problems(output, guarded)]

    assert said(data_file) == [f"--output {data_file} is the data file {data_file}"]
    assert said(data_file.parent) == [f"--output {data_file.parent} holds the data file {data_file}"]
    assert said(images) == [f"--output {images} is the image folder {images}"]
    assert said(images / "run") == [f"--output {images / 'run'} is inside the image folder {images}"]
    assert said(images.parent) == [f"--output {images.parent} holds the image folder {images}"]
    assert len(said(tmp_path)) == 2  # holds both
    assert said(tmp_path / "runs" / "sft") == []
    assert said(tmp_path / "pictures" / "images2") == []  # a shared name prefix is not "inside"
    assert said(tmp_path / "data" / "train.jsonl.d") == []
    assert location_problems(tmp_path / "x", Guarded()) == []
    check_location(tmp_path / "runs" / "sft", guarded)  # apart from everything: no error
    try:
        check_location(images, guarded, "--out")
    except ConfigError as exc:
        assert "--out" in exc.render() and exc.problems
    else:
        raise AssertionError("check_location let --out be the image folder")


def test_crop_boxes_keys_are_image_paths_as_the_items_file_writes_them(tmp_path: Path) -> None:
    """The boxes file sits elsewhere (not beside the items): its keys still mean what the items file writes. A key
    that names no image is reported with the count; a file none of whose keys names one is refused."""
    from ecomtune.backbones.model_loading import load_processor
    from ecomtune.backbones.registry import resolve_backbone
    from ecomtune.data.canonical_file import load_canonical_file
    from ecomtune.data.images.item_crops import boxes_from_file, crop_file
    from ecomtune.errors import DataError

    items = _multi_image_items(tmp_path / "data")
    boxes = tmp_path / "elsewhere" / "boxes.json"
    boxes.parent.mkdir()
    boxes.write_text(json.dumps({"images/item0_1.png": [[20, 20, 60, 60]],
                                 str(items.parent / "images" / "item1_0.png"): [[5, 5, 40, 40]],
                                 "images/item9_9.png": [[1, 1, 9, 9]]}))
    result = run_cli("crop", str(items), "--out", str(tmp_path / "cropped"), "--boxes", str(boxes))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: 1 of 3 key(s) of {boxes} name no image of {items} and are ignored: 'images/item9_9.png'" \
        in one_line(result.stderr)
    cropped = [s.images for s in load_canonical_file(tmp_path / "cropped" / "items.jsonl")]
    assert any(p.endswith("_crop1.png") for p in cropped[0]) and any(p.endswith("_crop0.png") for p in cropped[1])

    boxes.write_text(json.dumps({"item0_1.png": [[20, 20, 60, 60]], "../images/item1_0.png": [[5, 5, 40, 40]]}))
    processor = load_processor(resolve_backbone("tiny-qwen2-vl"))
    with pytest.raises(DataError) as raised:
        crop_file(items, tmp_path / "none", boxes_from_file(boxes), processor, boxes_file=boxes)
    text = raised.value.render()
    assert f"none of its 2 key(s) names an image of {items}, so nothing would be cropped" in text
    assert "'item0_1.png' is" in text and "as the items file writes it" in text
    assert not (tmp_path / "none").exists()
