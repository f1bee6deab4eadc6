"""A stage's samples held on disk (`SampleStore`): what goes in comes out, views share the file, memory stays flat."""

from __future__ import annotations

import gc
import json
import tracemalloc
from array import array
from pathlib import Path

from PIL import Image

from ecomtune.data.prepare.cache import PrepCache
from ecomtune.data.prepare.sample_store import SampleStore
from ecomtune.data.prepare.stage_samples import load_stage_samples
from ecomtune.data.schema import PreparedText, Sample


def sample(index: int, images: int = 1) -> Sample:
    content = [{"type": "image"}] * images + [{"type": "text", "text": f"item {index}: colour?"}]
    return Sample([f"/data/{index}_{view}.png" for view in range(images)],
                  [{"role": "user", "content": content},
                   {"role": "assistant", "content": [{"type": "text", "text": f"red {index}"}]}],
                  source=f"d.jsonl:{index + 1}", origin=index % 3,
                  text=PreparedText(array("i", range(index % 7 + 3)), [[1, 2]]) if index % 2 else None)


def same(a: Sample, b: Sample) -> bool:
    return (a.images, a.messages, a.source, a.origin) == (b.images, b.messages, b.source, b.origin) and \
        (a.text is None) == (b.text is None) and (a.text is None or a.text == b.text)


def test_samples_come_back_as_they_went_in():
    samples = [sample(i, images=i % 3) for i in range(9000)]  # more than one written and one read batch
    store = SampleStore.of(samples)
    assert len(store) == len(samples)
    assert all(same(a, b) for a, b in zip(store, samples, strict=True))
    assert same(store[-1], samples[-1]) and same(store[4097], samples[4097])
    assert [s.source for s in store[10:13]] == ["d.jsonl:11", "d.jsonl:12", "d.jsonl:13"]
    assert list(store.image_counts) == [i % 3 for i in range(9000)] and list(store.origins) == [i % 3 for i in
                                                                                                  range(9000)]
    assert store.rows_at([5, 2]) == [samples[5].to_row(), samples[2].to_row()]
    assert store.locations([0, 8999]) == ["d.jsonl:1", "d.jsonl:9000"]
    assert list(store.image_paths())[:3] == [[], ["/data/1_0.png"], ["/data/2_0.png", "/data/2_1.png"]]


def test_a_selection_shares_the_file_which_goes_with_the_last_view():
    store = SampleStore.of(sample(i) for i in range(20))
    folder = Path(store.rows.cache_files[0]["filename"]).parent
    picked = store.select([3, 3, 19, 0])
    assert [s.source for s in picked] == ["d.jsonl:4", "d.jsonl:4", "d.jsonl:20", "d.jsonl:1"]
    assert list(picked.origins) == [0, 0, 1, 0]
    del store
    gc.collect()
    assert folder.is_dir(), "a view still reads the file"
    assert picked[2].source == "d.jsonl:20"
    del picked
    gc.collect()
    assert not folder.exists()


def test_a_store_holds_its_samples_on_disk_not_in_memory():
    samples = [sample(i, images=2) for i in range(20_000)]
    tracemalloc.start()
    as_objects = tracemalloc.get_traced_memory()[0]
    kept = [Sample.from_row(s.to_row()) for s in samples]  # the same samples as Python objects
    as_objects = tracemalloc.get_traced_memory()[0] - as_objects
    del kept
    before = tracemalloc.get_traced_memory()[0]
    store = SampleStore.of(samples)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(store) == 20_000
    assert held < as_objects / 20, f"the store keeps {held:,} bytes in memory, the objects {as_objects:,}"


def test_a_row_taken_twice_is_read_once_and_stored_once(tmp_path):
    for index in range(3):
        Image.new("RGB", (20, 20), (index * 80, 0, 0)).save(tmp_path / f"{index}.png")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"images": [f"{i}.png"], "messages": [
        {"role": "user", "content": "<image>colour?"}, {"role": "assistant", "content": f"shade {i}"}]}) + "\n"
        for i in range(3)))
    from ecomtune.config.schema import DataSource

    read = load_stage_samples([DataSource(path=str(data), sampling="all"),
                               DataSource(path=str(data), sampling="first:2")], cache=PrepCache(None), workers=1)
    sources = [s.source for s in read.samples]
    assert sources == [f"{data}:1", f"{data}:2", f"{data}:3", f"{data}:1", f"{data}:2"]
    assert list(read.samples.origins) == [0, 0, 0, 1, 1]
    assert read.image_folders == [str(tmp_path.resolve())]

    twice = load_stage_samples([DataSource(path=str(data), sampling="first:200%")], cache=PrepCache(None), workers=1)
    assert [s.source for s in twice.samples] == [f"{data}:{i}" for i in (1, 2, 3, 1, 2, 3)]
    assert len(twice.samples.rows.data) == 3, "each distinct row is stored once"
    assert list(twice.listed_images) == [1] * 6


def test_the_data_fingerprint_covers_each_image_once_in_path_order(tmp_path):
    """The manifest's data sha256: every source's fingerprint, then the bytes of each distinct image file in path
    order (a file used by several samples counts once); a changed image changes it."""
    import hashlib

    for name, shade in (("b", 10), ("a", 200), ("c", 90)):
        Image.new("RGB", (20, 20), (shade, 0, 0)).save(tmp_path / f"{name}.png")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"images": images, "messages": [
        {"role": "user", "content": "<image>" * len(images) + "colour?"}, {"role": "assistant", "content": "red"}]})
        + "\n" for images in (["b.png"], ["a.png", "b.png"], ["c.png", "a.png"])))
    read = load_stage_samples(data, cache=PrepCache(None), workers=1)
    expected = hashlib.sha256()
    for source in read.sources:
        expected.update(f"{source.path}|{source.sampling}|{source.sha256}".encode())
    for name in ("a", "b", "c"):
        expected.update((tmp_path / f"{name}.png").read_bytes())
    assert read.fingerprint(read.samples.image_paths()) == expected.hexdigest()

    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "c.png")
    assert read.fingerprint(read.samples.image_paths()) != expected.hexdigest()
