"""Exact lengths without the processor's image work, the preparation cache and worker processes.

The fast count (chat-template text tokenized, plus one measured run of tokens per image size) must equal the
collator's count exactly, for every family's tiny twin, over a spread of image sizes and positions, several images
where the family takes them, several turns, and every resolution setting the family declares. The cache must hit
on a second run and miss exactly what a change affects.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.model_loading import load_processor
from ecomtune.backbones.registry import resolve_backbone
from ecomtune.config.schema import BackboneSettings
from ecomtune.data.images.checks import check_files
from ecomtune.data.prepare.cache import FILE_NAME, PrepCache
from ecomtune.data.prepare.lengths import Length, TokenCounter, _splice_run, measure_lengths, prepare_store
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.data.schema import Sample

SIZES = [(96, 72), (224, 224), (640, 480), (40, 500), (1000, 120), (13, 17)]
# one value per resolution knob, each small or large enough to change what the processor does
KNOBS = {"max_pixels": 56 * 56, "min_pixels": 112 * 112, "longest_edge": 56, "splitting": True, "max_tiles": 2}
IMAGE = {"type": "image"}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def user(*content: dict) -> dict:
    return {"role": "user", "content": list(content)}


def answer(value: str) -> dict:
    return {"role": "assistant", "content": [text(value)]}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("sizes")
    paths = []
    for index, size in enumerate(SIZES):
        path = folder / f"{index}.png"
        Image.new("RGB", size, (40 * index, 90, 200)).save(path)
        paths.append(str(path))
    return paths


def spread(paths: list[str], multi: bool) -> list[Sample]:
    """Each image first in the message and after text; with `multi`, interleaved images and a second turn."""
    samples = []
    for path in paths:
        samples.append(Sample([path], [user(IMAGE, text("What colour?")), answer("red")]))
        samples.append(Sample([path], [user(text("Look:"), IMAGE, text("colour?")), answer("red and blue")]))
    if multi:
        samples.append(Sample(paths[:3], [user(IMAGE, IMAGE, text("and"), IMAGE, text("compare")), answer("same")]))
        samples.append(Sample(paths[2:5], [user(text("a"), IMAGE), answer("x"), user(IMAGE, IMAGE, text("b")),
                                           answer("y")]))
    return samples


CASES = [(spec, None) for spec in FAMILIES] + [(spec, knob) for spec in FAMILIES for knob in spec.image_knobs]


@pytest.mark.parametrize(("spec", "knob"), CASES, ids=[f"{s.family}-{k or 'default'}" for s, k in CASES])
def test_the_fast_count_equals_the_collators_count(spec, knob, pictures):
    settings = BackboneSettings(resolution={knob: KNOBS[knob]} if knob else {})
    processor = load_processor(resolve_backbone(f"tiny-{spec.family}"), settings)
    counter = TokenCounter(processor, spec.conversation)
    assert counter.fast == (spec.conversation == "chat"), "every chat family counts without the image processor"
    samples = spread(pictures, spec.multi_image)
    sizes = {path: size for path, size in zip(pictures, SIZES, strict=True)}
    fast = [length for length, _ in counter.measure([(s, [sizes[p] for p in s.images]) for s in samples])]
    slow = [counter.slow(s) for s in samples]
    assert fast == slow


def test_a_run_is_spliced_only_where_the_processor_did_nothing_else():
    # placeholder 9 in 1 2 9 3 expands to 7 7 7 (three image tokens 7, plus nothing else)
    assert _splice_run([1, 2, 9, 3], [1, 2, 7, 7, 7, 3], 9, 1, {7}) == (2, 3)
    assert _splice_run([1, 9, 2, 9], [1, 7, 8, 2, 7, 8], 9, 2, {7}) == (1, 1)  # two identical runs
    assert _splice_run([1, 9, 2, 9], [1, 7, 8, 2, 7, 7], 9, 2, {7}) is None  # the runs differ
    assert _splice_run([1, 2, 9, 3], [1, 5, 7, 7, 3], 9, 1, {7}) is None  # a text token changed
    assert _splice_run([1, 2, 3], [1, 2, 3], 9, 1, {7}) is None  # no placeholder


@pytest.fixture()
def qwen():
    return load_processor(resolve_backbone("tiny-qwen2-vl"), BackboneSettings())


def rows(cache: PrepCache, table: str) -> set[str]:
    return {key for (key,) in cache.connection.execute(f"SELECT key FROM {table}")}


def test_a_second_run_is_served_by_the_cache_and_a_change_misses_only_what_it_touches(qwen, tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    records = []
    for index in range(6):
        Image.new("RGB", (64 + 16 * index, 64), (index * 40, 0, 0)).save(folder / "images" / f"{index}.png")
        records.append({"images": [f"images/{index}.png"],
                        "messages": [user(IMAGE, text(f"item {index}?")), answer("a shirt")]})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cache = PrepCache(tmp_path / "cache")

    def prepare() -> list[Length]:
        read = load_stage_samples(data, cache=cache, workers=1)
        prepared = prepare_store(qwen, read.samples, workers=1, cache=cache)
        return [Length(*pair) for pair in zip(prepared.totals, prepared.images, strict=True)]

    first = prepare()
    images, lengths = rows(cache, "images"), rows(cache, "lengths")
    assert len(images) == 6 and len(lengths) == 6
    assert prepare() == first and rows(cache, "lengths") == lengths, "a second run measures nothing new"

    Image.new("RGB", (300, 300), (0, 0, 0)).save(folder / "images" / "2.png")  # one image replaced
    third = prepare()
    assert len(rows(cache, "images") - images) == 1 and len(rows(cache, "lengths") - lengths) == 1
    assert third[2].image > first[2].image and third[:2] + third[3:] == first[:2] + first[3:]

    wider = load_processor(resolve_backbone("tiny-qwen2-vl"), BackboneSettings(resolution={"max_pixels": 56 * 56}))
    read = load_stage_samples(data, cache=cache, workers=1)
    before = rows(cache, "lengths")
    prepare_store(wider, read.samples, workers=1, cache=cache)
    assert len(rows(cache, "lengths") - before) == 6, "a resolution setting is part of every sample's key"


def test_a_replaced_image_is_checked_again(tmp_path):
    path = tmp_path / "shot.png"
    Image.new("RGB", (50, 40)).save(path)
    cache = PrepCache(tmp_path / "cache")
    assert check_files([str(path)], cache)[str(path)] == ((50, 40), None)
    path.write_bytes(b"not an image any more")
    size, problem = check_files([str(path)], cache)[str(path)]
    assert size is None and "unreadable image" in problem.what


def test_worker_processes_measure_what_the_main_process_measures(qwen, pictures, tmp_path):
    samples = spread(pictures, multi=True) * 40  # enough for two workers
    alone = measure_lengths(qwen, samples, workers=1, cache=PrepCache(None))
    shared = measure_lengths(qwen, samples, workers=2, cache=PrepCache(tmp_path / "cache"))
    assert shared == alone


def test_a_store_of_samples_is_keyed_and_measured_as_the_samples_are(qwen, pictures, tmp_path):
    from ecomtune.data.prepare.sample_store import SampleStore

    samples = spread(pictures, multi=True)
    cache = PrepCache(tmp_path / "cache")
    lengths = measure_lengths(qwen, samples, workers=1, cache=cache, keep_text=True)
    known = rows(cache, "lengths")
    prepared = prepare_store(qwen, SampleStore.of(samples), workers=1, cache=cache)
    assert rows(cache, "lengths") == known, "the store's rows found every sample's entry"
    assert [Length(*pair) for pair in zip(prepared.totals, prepared.images, strict=True)] == lengths
    assert [s.text for s in prepared.samples] == [s.text for s in samples]


def test_an_unreadable_cache_is_reported_and_ignored(qwen, pictures, tmp_path, capsys):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / FILE_NAME).write_bytes(b"this is not a database" * 100)
    cache = PrepCache(folder)
    samples = spread(pictures[:2], multi=False)
    assert measure_lengths(qwen, samples, workers=1, cache=cache) == \
        measure_lengths(qwen, samples, workers=1, cache=PrepCache(None))
    assert "cannot be used" in capsys.readouterr().err
    with pytest.raises(sqlite3.DatabaseError):  # the file was left as it was, not replaced
        sqlite3.connect(folder / FILE_NAME).execute("SELECT * FROM lengths").fetchall()


def test_the_stage_stores_each_images_size_for_the_count(tmp_path):
    Image.new("RGB", (77, 33)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 60)).save(tmp_path / "b.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"images": ["a.png", "b.png"],
                                "messages": [user(IMAGE, IMAGE, text("?")), answer("x")]}) + "\n")
    read = load_stage_samples(data, cache=PrepCache(None), workers=1)
    assert [sizes for _, chunk in read.samples.sized_chunks() for sizes in chunk] == [[(77, 33), (40, 60)]]


def test_worker_processes_still_report_every_bad_record_where_it_is(tmp_path):
    from ecomtune.errors import DataError

    (tmp_path / "images").mkdir()
    lines = []
    for index in range(600):  # enough records for two workers
        Image.new("RGB", (8, 8), (index % 255, 0, 0)).save(tmp_path / "images" / f"{index}.png")
        lines.append(json.dumps({"images": [f"images/{index}.png"],
                                 "messages": [user(IMAGE, text("?")), answer("x")]}))
    (tmp_path / "images" / "417.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "images" / "3.png").unlink()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        load_stage_samples(data, cache=PrepCache(tmp_path / "cache"), workers=2)
    found = {(p.where, p.what.split(":")[1].strip().split(" ")[0]) for p in raised.value.problems}
    assert found == {(f"{data}:4", "file"), (f"{data}:418", "unreadable")}
