"""The synthetic catalog: deterministic bytes, disjoint splits, valid training data, complete ground truth."""

from __future__ import annotations

import json
from pathlib import Path

from ecomtune.data.schema import load_samples
from ecomtune.synth.catalog import write_catalog
from ecomtune.synth.items import make_items


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
    captions = load_samples(catalog["captions"])
    instruct = load_samples(catalog["instruct"])
    assert captions and instruct
    multi = [s for s in instruct if len(s.images) > 1]
    assert multi, "multi-image item-intelligence instructions are present"


def test_bench_split_is_disjoint_from_training_by_item(catalog):
    def item_ids(paths):
        return {Path(p).name.split("_")[0] for p in paths}

    trained = {i for s in load_samples(catalog["instruct"]) for i in item_ids(s.images)}
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
