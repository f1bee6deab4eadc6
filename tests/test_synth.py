"""The synthetic catalog: deterministic bytes, disjoint splits, valid training data, complete ground truth."""

from __future__ import annotations

import json
from pathlib import Path

from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.synth.catalog import image_paths, write_catalog
from ecomtune.synth.items import Item, make_items
from ecomtune.synth.mid import RECAPTION_PROMPTS
from ecomtune.synth.render import render_view_with_marks


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_catalog(tmp_path / "a", 18, seed=4, general=6)
    write_catalog(tmp_path / "b", 18, seed=4, general=6)
    write_catalog(tmp_path / "c", 18, seed=5, general=6)
    a, b, c = files_of(tmp_path / "a"), files_of(tmp_path / "b"), files_of(tmp_path / "c")
    assert a == b
    assert a["items.jsonl"] != c["items.jsonl"]


def test_training_files_pass_the_data_checks(catalog):
    captions = load_canonical_file(catalog["captions"])
    instruct = load_canonical_file(catalog["instruct"])
    compliance = load_canonical_file(catalog["compliance"])
    assert captions and instruct and compliance
    assert all(len(s.images) > 1 for s in compliance), "item intelligence fills its JSON from all of an item's views"
    assert not {s.messages[0]["content"][-1]["text"] for s in compliance} & {
        s.messages[0]["content"][-1]["text"] for s in instruct}, "each compliance record is in compliance.jsonl alone"


def test_bench_split_is_disjoint_from_training_by_item(catalog):
    def item_ids(paths):
        return {Path(p).name.split("_")[0] for p in paths}

    trained = {i for name in ("instruct", "compliance") for s in load_canonical_file(catalog[name])
               for i in item_ids(s.images)}
    benched = set()
    for path in catalog["bench"].glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            benched |= {i for i in item_ids(record["images"]) if i.startswith("item")}
            for image in record["images"]:
                assert (path.parent / image).is_file()
    assert benched and trained and not benched & trained


def test_every_task_has_records_with_their_fields(catalog):
    needed = {"aspect-prediction": {"aspects", "subset"}, "deep-fashion": {"attribute", "options", "answer"},
              "attribute-extraction": {"attributes"}, "item-intelligence": {"fields", "category"},
              "general": {"attribute", "options", "answer"}}
    for task, fields in needed.items():
        records = [json.loads(x) for x in (catalog["bench"] / f"{task}.jsonl").read_text().splitlines()]
        assert records, task
        assert all(fields <= set(r) and r["images"] for r in records), task
    fashion = [json.loads(x) for x in (catalog["bench"] / "deep-fashion.jsonl").read_text().splitlines()]
    assert all(r["answer"] in r["options"] for r in fashion)


def test_items_ground_truth():
    items = make_items(60, seed=1)
    assert {i.kind for i in items} == {"apparel", "accessory", "packaged"}
    assert all(2 <= len(i.views) <= 8 for i in items)
    packaged = [i for i in items if i.kind == "packaged"]
    assert all(set(i.compliance) == {"identifiers", "attributes", "origin", "safety"} for i in packaged)
    assert all(len(i.compliance["identifiers"]["barcode"]) == 12 for i in packaged)
    noisy = [i for i in items if i.seller_aspects.get("Colour") not in (None, i.attributes.get("colour"))]
    assert noisy, "some seller aspects disagree with the pictures, as in real listings"
    assert 10 <= sum(i.split == "bench" for i in items) <= 20


def test_mid_set_recaptions_every_training_view_and_reads_only_the_drawn_text(catalog):
    """Stage 1.5 data: one re-caption per view of every training item (never a held-out one), saying only what that
    view shows, and OCR answers that are the renderer's drawn lines, exactly and in order."""
    assert load_canonical_file(catalog["mid"])
    items = {d["item_id"]: Item(**d) for d in map(json.loads, catalog["items"].read_text().splitlines())}
    benched = {Path(p).name.split("_")[0] for path in catalog["bench"].glob("*.jsonl")
               for line in path.read_text().splitlines() for p in json.loads(line)["images"]}
    recaptions: dict[str, str] = {}
    reads: dict[str, set[str]] = {}
    for line in catalog["mid"].read_text().splitlines():
        record = json.loads(line)
        (image,) = record["images"]  # one image per sample
        prompt = record["messages"][0]["content"][-1]["text"]
        answer = record["messages"][1]["content"][0]["text"]
        item_id, index = Path(image).stem.split("_")
        assert items[item_id].split == "train" and item_id not in benched
        if prompt in RECAPTION_PROMPTS:
            assert image not in recaptions, "one re-caption per view"
            recaptions[image] = answer
        else:
            reads.setdefault(image, set()).add(answer)
    training = [item for item in items.values() if item.split == "train"]
    assert set(recaptions) == {path for item in training for path in image_paths(item)}
    assert reads, "views with text have OCR samples"
    for item in training:
        for index, (view, path) in enumerate(zip(item.views, image_paths(item), strict=True)):
            lines = [mark.text for mark in render_view_with_marks(item, view, index)[1] if mark.text is not None]
            caption = recaptions[path]
            assert all(text in caption for text in lines), (path, caption)  # the re-caption quotes every drawn line
            assert item.attributes.get("colour", "") in caption or view.endswith("label")
            if item.kind == "apparel":
                assert (item.attributes["neckline"] in caption) == (view.removeprefix("user-") == "front"), caption
            if not lines:
                assert path not in reads and "no text" in caption
                continue
            assert "\n".join(lines) in reads[path], "the whole view is read"
            for answer in reads[path]:
                read = answer.split("\n")
                assert any(lines[i:i + len(read)] == read for i in range(len(lines))), (path, answer, lines)


def test_seller_listings_keep_their_truth_apart_and_it_matches_the_pictures(catalog):
    """`listings.jsonl` is what a seller typed (names and values spelled any way, wrong colours and patterns,
    aspects no picture shows, boilerplate); `listings-truth.jsonl` says which is which, exactly."""
    from collections import Counter

    from ecomtune.tasks.metrics import normalise

    items = {d["item_id"]: d for d in map(json.loads, catalog["items"].read_text().splitlines())}
    listings = [json.loads(line) for line in catalog["listings"].read_text().splitlines()]
    truth = {t["id"]: t["aspects"] for t in map(json.loads, catalog["listings_truth"].read_text().splitlines())}
    assert [listing["id"] for listing in listings] == list(items) == list(truth)
    statuses: Counter = Counter()
    for listing in listings:
        pictured_by = items[listing["id"]]["attributes"]
        assert "truth" not in listing and all((catalog["listings"].parent / p).is_file() for p in listing["images"])
        assert [e["name"] for e in truth[listing["id"]]] == list(listing["aspects"])
        for entry in truth[listing["id"]]:
            statuses[(entry["aspect"], entry["status"])] += 1
            assert listing["aspects"][entry["name"]] == entry["value"]
            pictured = None if entry["status"] == "boilerplate" else pictured_by.get(entry["aspect"])
            assert entry["truth"] == pictured and (entry["status"] in ("not_visible", "boilerplate")) == (
                pictured is None)
            if pictured is not None:
                assert (normalise(entry["value"]) == normalise(pictured)) == (entry["status"] == "right")
    for seen in (("colour", "wrong"), ("pattern", "wrong"), ("colour", "right"), ("size", "not_visible")):
        assert statuses[seen], seen
    assert any(status == "boilerplate" for _, status in statuses)
