"""Data sources: LLaVA, ShareGPT, Hugging Face datasets and ecomtune's JSONL open as canonical records that
`parse_record` then checks exactly as it checks ecomtune's own files (readers convert, they never validate)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from ecomtune.data.jsonl import read_jsonl
from ecomtune.data.schema import Sample, parse_record
from ecomtune.data.sources import OpenedSource, open_source
from ecomtune.errors import DataError


def image_bytes(colour: str, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An image folder apart from the data files, as LLaVA keeps it."""
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    (folder / "coco" / "a.png").write_bytes(image_bytes("red"))
    (folder / "coco" / "b.jpg").write_bytes(image_bytes("blue", "JPEG"))
    return folder


LLAVA_ROWS = [
    {"id": "two", "image": ["coco/a.png", "coco/b.jpg"],
     "conversations": [{"from": "human", "value": "<image>\nSame product?"}, {"from": "gpt", "value": "yes"}]},
    {"id": "one", "image": "coco/a.png",
     "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}]},
    {"id": "text", "conversations": [{"from": "system", "value": "Be brief."},
                                     {"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "hi"}]},
]


def parsed(source: OpenedSource, indices: list[int]) -> list[tuple[str, Sample | None, list]]:
    """Each record through parse_record, the way the stage loader checks it."""
    out = []
    for where, record, problem in source.records(indices):
        assert problem is None, problem
        sample, problems = parse_record(record, source.base_dir, where, source.root)
        out.append((where, sample, problems))
    return out


def check_llava_samples(source: OpenedSource, images: Path) -> list[str]:
    results = parsed(source, [0, 1, 2])
    assert all(not problems for _, _, problems in results), results
    two, one, text = (sample for _, sample, _ in results)
    assert two.images == [str(images / "coco" / "a.png"), str(images / "coco" / "b.jpg")]
    assert [b["type"] for b in two.messages[0]["content"]].count("image") == 2
    assert one.images == [str(images / "coco" / "a.png")]
    assert one.messages[0]["content"][0] == {"type": "image"}
    assert text.images == [] and [m["role"] for m in text.messages] == ["system", "user", "assistant"]
    return [where for where, _, _ in results]


def test_llava_json_array_with_an_image_root_apart(tmp_path, images):
    data = tmp_path / "annotations" / "llava.json"
    data.parent.mkdir()
    data.write_text(json.dumps(LLAVA_ROWS))
    source = open_source(data, image_root=images)
    assert (source.format, source.rows, source.base_dir, source.root) == ("llava", 3, images, images)
    assert check_llava_samples(source, images) == [f"{data}[row {i}]" for i in range(3)]
    _, record, _ = next(source.records([0]))
    assert record["messages"][0]["content"] == "<image>\nSame product?", "converted as written: parse_record adds"
    assert record["messages"][1] == {"role": "assistant", "content": "yes"}


def test_llava_jsonl_locates_rows_by_line(tmp_path, images):
    data = tmp_path / "llava.jsonl"
    data.write_text(json.dumps(LLAVA_ROWS[0]) + "\n\n" + "\n".join(json.dumps(r) for r in LLAVA_ROWS[1:]) + "\n")
    source = open_source(data, image_root=images)
    assert (source.format, source.rows) == ("llava", 3)
    assert check_llava_samples(source, images) == [f"{data}:1", f"{data}:3", f"{data}:4"]


def test_llava_images_default_to_the_data_folder(tmp_path, images):
    data = images / "llava.json"
    data.write_text(json.dumps(LLAVA_ROWS[1:2]))
    source = open_source(data)
    assert source.base_dir == images
    [(_, sample, problems)] = parsed(source, [0])
    assert not problems and sample.images == [str(images / "coco" / "a.png")]


def test_sharegpt_role_content_and_from_value(tmp_path, images):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
         "images": ["coco/a.png"]},
        {"conversations": [{"from": "user", "value": "<image><image>Same?"}, {"from": "assistant", "value": "no"}],
         "image": ["coco/a.png", "coco/b.jpg"]},
        {"conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "blue"}],
         "image": "coco/b.jpg"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = open_source(data, format="sharegpt", image_root=images)
    results = parsed(source, [0, 1, 2])
    assert all(not problems for _, _, problems in results), results
    assert [s.images for _, s, _ in results] == [[str(images / "coco" / "a.png")],
                                               [str(images / "coco" / p) for p in ("a.png", "b.jpg")],
                                               [str(images / "coco" / "b.jpg")]]
    assert all([m["role"] for m in s.messages] == ["user", "assistant"] for _, s, _ in results)


def test_sharegpt_rows_get_missing_markers_by_the_rule_every_format_shares(tmp_path, images):
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Colour?"},
                                                   {"from": "gpt", "value": "red"}], "images": ["coco/a.png"]},
                                {"conversations": [{"from": "human", "value": "<image><image>Colour?"},
                                                   {"from": "gpt", "value": "red"}], "images": ["coco/a.png"]}]))
    source = open_source(data, image_root=images)
    assert source.format == "sharegpt"
    [(_, sample, problems), (where, extra, too_many)] = parsed(source, [0, 1])
    assert not problems and sample.messages[0]["content"][0] == {"type": "image"}
    assert extra is None and "2 image placeholder(s)" in too_many[0].what and too_many[0].where == where


def test_a_tool_call_turn_is_a_problem_naming_the_row(tmp_path):
    data = tmp_path / "tools.jsonl"
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "hello"}], "images": []}
    tool = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                              {"from": "observation", "value": "sun"}, {"from": "gpt", "value": "sunny"}],
            "images": []}
    data.write_text(json.dumps(good) + "\n" + json.dumps(tool) + "\n")
    source = open_source(data, format="sharegpt")
    (_, record, problem), (where, bad, tool_problem) = source.records([0, 1])
    assert problem is None and record["messages"][1] == {"role": "assistant", "content": "hello"}
    assert bad is None and where == f"{data}:2" and tool_problem.where == where
    assert "'function_call'" in tool_problem.what


def test_canonical_jsonl_passes_through_and_reads_only_what_is_asked(tmp_path, images):
    data = images / "data.jsonl"
    rows = [{"images": ["coco/a.png"], "prompt": "<image>Colour?", "completion": "red", "boxes": [[[1, 1, 5, 5]]]},
            {"images": ["coco/b.jpg"], "messages": [{"role": "user", "content": "<image>Colour?"},
                                                    {"role": "assistant", "content": "blue"}]},
            {"images": [], "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hi"}]}]
    lines = [json.dumps(r) for r in rows]
    data.write_bytes(("\n".join(lines[:2]) + "\n{broken\n").encode() + b"\xff\xfe\n" + lines[2].encode() + b"\n")
    source = open_source(data)
    assert (source.format, source.rows) == ("canonical", 5)
    got = list(source.records([4, 0, 4]))
    assert [where for where, _, _ in got] == [f"{data}:5", f"{data}:1", f"{data}:5"]
    assert [record for _, record, _ in got] == [rows[2], rows[0], rows[2]]
    # the malformed lines were not read above; asked for, they are problems exactly as read_jsonl reports them
    assert list(source.records([2, 3])) == [t for t in read_jsonl(data) if t[2] is not None]
    [(_, sample, problems)] = parsed(source, [0])
    assert not problems and sample.boxes == [[[1, 1, 5, 5]]]


def test_rows_come_in_the_order_asked_and_the_fingerprint_follows_the_file(tmp_path):
    data = tmp_path / "rows.json"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    data.write_text(json.dumps(rows))
    source = open_source(data)
    assert source.rows == 3
    assert [record["prompt"] for _, record, _ in source.records([2, 0, 2])] == ["q2", "q0", "q2"]
    before = source.fingerprint()
    assert open_source(data).fingerprint() == before
    data.write_text(json.dumps(rows[:2]))
    assert open_source(data).fingerprint() != before


def conversations(n: int) -> list[list[dict[str, str]]]:
    return [[{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": f"answer {i}"}] for i in range(n)]


def test_hf_saved_dataset_and_parquet_give_cache_files_with_the_original_bytes(tmp_path):
    originals = [Image.new("RGB", (24, 16), colour) for colour in ("red", "green")]
    dataset = datasets.Dataset.from_dict(
        {"image": originals, "conversations": conversations(2)}).cast_column("image", datasets.Image())
    stored = [row["image"]["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))]
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "data.parquet"))
    for path in (tmp_path / "saved", tmp_path / "data.parquet"):
        source = open_source(path)
        assert (source.format, source.rows) == ("hf", 2)
        results = parsed(source, [1, 0])
        assert all(not problems for _, _, problems in results), results
        assert [where for where, _, _ in results] == [f"{path}[row 1]", f"{path}[row 0]"]
        green, red = (sample for _, sample, _ in results)
        assert [Path(red.images[0]).read_bytes(), Path(green.images[0]).read_bytes()] == stored
        assert Image.open(red.images[0]).tobytes() == originals[0].tobytes()
        assert green.messages[-1]["content"] == [{"type": "text", "text": "answer 1"}]


def test_hf_image_bytes_are_cached_as_they_were(tmp_path, tiny_cache):
    originals = [image_bytes("red"), image_bytes("green", "JPEG")]
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in originals], "conversations": conversations(2)},
        features=datasets.Features({"image": datasets.Image(), "conversations": datasets.List(
            {"from": datasets.Value("string"), "value": datasets.Value("string")})}))
    dataset.save_to_disk(str(tmp_path / "saved"))
    source = open_source(tmp_path / "saved")
    paths = [record["images"][0] for _, record, _ in source.records([0, 1])]
    assert [Path(p).read_bytes() for p in paths] == originals
    assert [Path(p).suffix for p in paths] == [".png", ".jpg"]
    assert all(Path(p).parent == tiny_cache / "images" for p in paths)


def test_hf_cached_images_are_readable_as_a_plain_open_leaves_them(tmp_path, tiny_cache):
    """A cached image is read by every process of a run (and by a colleague sharing the cache): under umask 0022
    it is 0644 like any file the user writes, not the temp file's owner-only 0600."""
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": image_bytes("blue"), "path": None}], "conversations": conversations(1)},
        features=datasets.Features({"image": datasets.Image(), "conversations": datasets.List(
            {"from": datasets.Value("string"), "value": datasets.Value("string")})}))
    dataset.save_to_disk(str(tmp_path / "saved"))
    old = os.umask(0o022)
    try:
        [(_, record, _)] = open_source(tmp_path / "saved").records([0])
    finally:
        os.umask(old)
    assert Path(record["images"][0]).stat().st_mode & 0o777 == 0o644


def test_hf_lists_of_images_and_text_only_rows(tmp_path):
    pictures = [[image_bytes("red"), image_bytes("blue")], []]
    dataset = datasets.Dataset.from_dict(
        {"images": [[{"bytes": b, "path": None} for b in row] for row in pictures],
         "messages": [[{"role": "user", "content": "<image><image>Same?"}, {"role": "assistant", "content": "no"}],
                      [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}]]},
        features=datasets.Features({"images": datasets.List(datasets.Image()), "messages": datasets.List(
            {"role": datasets.Value("string"), "content": datasets.Value("string")})}))
    folder = tmp_path / "shards"
    folder.mkdir()
    dataset.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    source = open_source(folder)
    assert (source.format, source.rows) == ("hf", 2)
    (_, pair, problems), (_, text, text_problems) = parsed(source, [0, 1])
    assert not problems and not text_problems
    assert [Path(p).read_bytes() for p in pair.images] == pictures[0]
    assert text.images == [] and [m["role"] for m in text.messages] == ["user", "assistant"]


def test_a_truncated_image_is_converted_then_refused_by_validation(tmp_path):
    good = image_bytes("red")
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": good, "path": None}, {"bytes": good[: len(good) // 2], "path": None}],
         "conversations": conversations(2)},
        features=datasets.Features({"image": datasets.Image(), "conversations": datasets.List(
            {"from": datasets.Value("string"), "value": datasets.Value("string")})}))
    dataset.save_to_disk(str(tmp_path / "saved"))
    source = open_source(tmp_path / "saved")
    (where, record, problem), = source.records([1])
    assert problem is None and Path(record["images"][0]).read_bytes() == good[: len(good) // 2]
    sample, problems = parse_record(record, source.base_dir, where, source.root)
    assert sample is None and problems[0].where == where == f"{tmp_path / 'saved'}[row 1]"
    assert "unreadable image" in problems[0].what


def test_an_image_with_neither_bytes_nor_a_file_is_a_problem(tmp_path):
    # save_to_disk embeds the files of an Image column, so a path-only image is kept as the plain struct it is
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": None, "path": "missing.png"}], "conversations": conversations(1)})
    dataset.save_to_disk(str(tmp_path / "saved"))
    source = open_source(tmp_path / "saved")
    (where, record, problem), = source.records([0])
    assert record is None and problem.where == where == f"{tmp_path / 'saved'}[row 0]"
    assert "missing.png" in problem.what


def test_a_dataset_dict_folder_takes_its_split(tmp_path):
    split = datasets.Dataset.from_dict({"conversations": conversations(1)})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dict"))
    assert open_source(tmp_path / "dict", split="test").rows == 1
    with pytest.raises(DataError, match="no split 'validation'"):
        open_source(tmp_path / "dict", split="validation")


def test_hf_fingerprint_changes_with_the_folder(tmp_path):
    datasets.Dataset.from_dict({"conversations": conversations(2)}).save_to_disk(str(tmp_path / "d"))
    before = open_source(tmp_path / "d").fingerprint()
    assert open_source(tmp_path / "d").fingerprint() == before
    datasets.Dataset.from_dict({"conversations": conversations(3)}).save_to_disk(str(tmp_path / "d2"))
    assert open_source(tmp_path / "d2").fingerprint() != before


def test_a_hub_id_offline_is_one_data_error_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as caught:
        open_source("some-owner/some-dataset")
    message = caught.value.render()
    assert "some-owner/some-dataset" in message and "save_to_disk" in message


@pytest.mark.parametrize("name, rows, expected", [
    ("a.jsonl", [{"images": ["x.png"], "messages": []}], "canonical"),
    ("a.jsonl", [{"prompt": "q", "completion": "a"}], "canonical"),
    ("a.jsonl", [{"image": "x.png", "conversations": [{"from": "human", "value": "q"}]}], "llava"),
    ("a.jsonl", [{"conversations": [{"from": "human", "value": "q"}]}], "llava"),
    ("a.jsonl", [{"images": ["x.png"], "conversations": [{"from": "human", "value": "q"}]}], "sharegpt"),
    ("a.jsonl", [{"messages": [{"from": "human", "value": "q"}]}], "sharegpt"),
    ("a.json", [{"id": "1", "image": "x.png", "conversations": [{"from": "human", "value": "q"}]}], "llava"),
    ("a.json", [{"images": ["x.png"], "conversations": [{"role": "user", "content": "q"}]}], "sharegpt"),
])
def test_formats_are_detected_from_the_first_row(tmp_path, name, rows, expected):
    path = tmp_path / name
    path.write_text(json.dumps(rows) if name.endswith(".json") else "\n" + json.dumps(rows[0]) + "\n")
    assert open_source(path).format == expected


def test_folders_and_arrow_files_are_hf(tmp_path):
    dataset = datasets.Dataset.from_dict({"conversations": conversations(2)})
    dataset.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert open_source(tmp_path / "saved").format == open_source(arrow).format == "hf"
    assert open_source(arrow).rows == 2


@pytest.mark.parametrize("content, seen", [('{"foo": 1}\n', "['foo']"), ('[{"foo": 1, "bar": 2}]', "['bar', 'foo']")])
def test_an_undetectable_file_names_the_keys_it_saw(tmp_path, content, seen):
    path = tmp_path / ("data.jsonl" if content.startswith("{") else "data.json")
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(f"keys: {seen}")):
        open_source(path)


def test_paths_that_cannot_be_opened(tmp_path):
    with pytest.raises(DataError, match="Data not found"):
        open_source(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="Data not found"):
        open_source("data/missing.jsonl")
    (tmp_path / "mixture.yaml").write_text("sources: []\n")
    with pytest.raises(DataError, match="YAML"):
        open_source(tmp_path / "mixture.yaml")
    (tmp_path / "a.json").write_text('{"foo": 1}')
    with pytest.raises(DataError, match=r"keys \['foo'\]"):
        open_source(tmp_path / "a.json")
    with pytest.raises(DataError, match="Image folder not found"):
        (tmp_path / "b.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
        open_source(tmp_path / "b.jsonl", image_root=tmp_path / "nowhere")
