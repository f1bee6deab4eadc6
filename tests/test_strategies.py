"""Multi-image strategies (pure selection and layout, with hand-computed cases) and the bad-input checks
that come with multi-image items: boxes, paths leaving the dataset, corrupt images, decompression bombs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ecomtune.config.schema import ImageSettings
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.data.images.strategies import (
    apply_strategy,
    grid_shape,
    keep_indices,
    open_image,
    square_crop,
    stitch,
)
from ecomtune.data.schema import Sample
from ecomtune.errors import DataError


@pytest.mark.parametrize(("count", "cap", "keep", "expected"), [
    (3, 10, "first", [0, 1, 2]),
    (8, 3, "first", [0, 1, 2]),
    (8, 3, "spread", [0, 1, 7]),
    (8, 4, "spread", [0, 1, 4, 7]),
    (8, 1, "spread", [0]),
    (8, 2, "spread", [0, 7]),
    (5, 5, "spread", [0, 1, 2, 3, 4]),
])
def test_keep_indices(count, cap, keep, expected):
    assert keep_indices(count, cap, keep) == expected


@pytest.mark.parametrize(("count", "columns", "expected"), [(1, None, (1, 1)), (2, None, (2, 1)), (4, None, (2, 2)),
                                                            (5, None, (3, 2)), (5, 1, (1, 5)), (3, 5, (3, 1))])
def test_grid_shape(count, columns, expected):
    assert grid_shape(count, columns) == expected


def test_stitch_places_each_image_in_its_cell_aspect_kept():
    red, blue, green = (Image.new("RGB", (40, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
    grid = stitch([red, blue, green], size=200)  # 2 x 2 cells of 100 px; the fourth stays white
    assert grid.size == (200, 200)
    assert grid.getpixel((50, 50)) == (255, 0, 0) and grid.getpixel((150, 50)) == (0, 0, 255)
    assert grid.getpixel((50, 150)) == (0, 255, 0) and grid.getpixel((150, 150)) == (255, 255, 255)
    assert grid.getpixel((50, 10)) == (255, 255, 255), "a 2:1 image fills 100 x 50 of its cell, centred"
    assert stitch([red], size=200) is red


def test_square_crop_grows_merges_and_squares_inside_the_image():
    # grown by 10%: (18, 8, 42, 32) and (58, 10, 82, 30), apart; their union (18, 8)-(82, 32) is 64 wide, so a
    # 64 px square centred on y=20 would start at -12: it is shifted down to 0, never shrunk
    assert square_crop((100, 100), [[20, 10, 40, 30], [60, 12, 80, 28]], margin=0.1) == (18, 0, 82, 64)
    with pytest.raises(DataError, match="outside"):
        square_crop((100, 100), [[120, 0, 130, 10]], margin=0.1)


def two_views(tmp_path: Path) -> tuple[list[str], list[dict]]:
    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 0, 200), (0, 200, 0)]):
        image = Image.new("RGB", (100, 80), (255, 255, 255))
        image.paste(Image.new("RGB", (30, 20), colour), (10 + 20 * i, 10))
        paths.append(str(tmp_path / f"v{i}.png"))
        image.save(paths[-1])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "front, then"},
                                             {"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    return paths, messages


def placeholders(sample: Sample) -> int:
    return sum(b["type"] == "image" for m in sample.messages for b in m["content"])


def test_all_keeps_the_interleaving_and_caps(tmp_path):
    paths, messages = two_views(tmp_path)
    sample = Sample(paths, messages, "x:1")
    assert apply_strategy(sample, ImageSettings()) is sample
    capped = apply_strategy(sample, ImageSettings(max_images=2, keep="spread"))
    assert capped.images == [paths[0], paths[2]] and placeholders(capped) == 2
    assert [b["type"] for b in capped.messages[0]["content"]] == ["image", "text", "image", "text"]


def test_primary_and_grid_leave_one_placeholder_where_the_first_was(tmp_path):
    paths, messages = two_views(tmp_path)
    sample = Sample(paths, messages, "x:1")
    primary = apply_strategy(sample, ImageSettings(strategy="primary"))
    assert primary.images == paths[:1] and placeholders(primary) == 1
    grid = apply_strategy(sample, ImageSettings(strategy="grid", grid_size=120))
    assert grid.images == [{"grid": paths, "columns": None, "size": 120}]
    assert [b["type"] for b in grid.messages[0]["content"]] == ["image", "text", "text"]
    assert open_image(grid.images[0]).size == (120, 120)


def test_crops_are_the_primary_plus_one_square_per_boxed_view_deduplicated(tmp_path):
    paths, messages = two_views(tmp_path)
    boxes = [[], [[30, 10, 60, 30]], [[50, 10, 80, 30]]]
    sample = Sample(paths, messages, "x:1", boxes)
    cropped = apply_strategy(sample, ImageSettings(strategy="crops", crop_margin=0.0))
    assert cropped.images[0] == paths[0] and len(cropped.images) == 3 and placeholders(cropped) == 3
    assert cropped.images[1] == {"path": paths[1], "crop": [30, 5, 60, 35]}
    assert open_image(cropped.images[1]).size == (30, 30)
    twice = Sample(paths[:2] + paths[1:2], messages, "x:1", [[], [[30, 10, 60, 30]], [[30, 10, 60, 30]]])
    assert len(apply_strategy(twice, ImageSettings(strategy="crops")).images) == 2, "identical crops dedupe to one"
    no_boxes = apply_strategy(Sample(paths, messages, "x:1"), ImageSettings(strategy="crops"))
    assert no_boxes.images == paths[:1]


def write(folder: Path, records: list[dict]) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(images: list[str], **extra) -> dict:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": "?"}]
    return {"images": images, "messages": [{"role": "user", "content": content},
                                           {"role": "assistant", "content": "a"}], **extra}


@pytest.fixture
def folder(tmp_path) -> Path:
    data = tmp_path / "dataset"
    data.mkdir()
    Image.new("RGB", (100, 80), (200, 0, 0)).save(data / "ok.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "outside.png")
    full = data / "full.png"
    Image.new("RGB", (100, 80), (0, 0, 200)).save(full)
    (data / "truncated.png").write_bytes(full.read_bytes()[:60])
    return data


@pytest.mark.parametrize(("line", "expected"), [
    (record(["../outside.png"]), "relative path leaves the dataset folder"),
    (record(["truncated.png"]), "unreadable image"),
    (record(["ok.png"], boxes=[[[0, 0, 200, 10]], []]), "'boxes' needs one list per image: 1 image(s), got 2"),
    (record(["ok.png"], boxes=[[[150, 0, 200, 10]]]), "box [150, 0, 200, 10] is empty or outside the 100x80 image"),
    (record(["ok.png"], boxes=[[[1, 2, 3]]]), "is not 4 numbers"),
])
def test_bad_multi_image_input_is_reported_with_file_line(folder, line, expected):
    path = write(folder, [record(["ok.png"]), line])
    with pytest.raises(DataError) as caught:
        load_canonical_file(path)
    rendered = [p.render() for p in caught.value.problems]
    assert len(rendered) == 1 and f"{path}:2" in rendered[0] and expected in rendered[0], rendered


def test_a_decompression_bomb_is_refused_without_decoding(folder, monkeypatch):
    import ecomtune.data.images.load as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 80 - 1)  # ok.png's header now claims too many pixels
    with pytest.raises(DataError, match="exceeds the 7999 pixel limit"):
        load_canonical_file(write(folder, [record(["ok.png"])]))


def test_absolute_paths_and_a_wider_root_are_allowed(folder):
    outside = str((folder.parent / "outside.png").resolve())
    assert load_canonical_file(write(folder, [record([outside])]))[0].images == [outside]
    assert load_canonical_file(write(folder, [record(["../outside.png"])]), root=folder.parent)[0].images == [outside]


def test_a_linked_image_folder_is_followed_but_dotdot_may_not_climb_out_through_it(tmp_path):
    """`images -> ../store/images` (one image store for several datasets) is the user's own link: followed. A
    `..` that leaves the dataset, as written or past a link's target, is still refused, and says why."""
    from ecomtune.config.schema import DataSource
    from ecomtune.data.prepare.stage_samples import load_stage_samples

    store = tmp_path / "store"
    (store / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (0, 120, 0)).save(store / "images" / "a.png")
    Image.new("RGB", (40, 30), (0, 0, 120)).save(store / "elsewhere.png")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "images").symlink_to(Path("..") / "store" / "images")
    path = write(dataset, [record(["images/a.png"])])
    assert load_canonical_file(path)[0].images == [str((store / "images" / "a.png").resolve())]
    assert len(load_stage_samples([DataSource(path=str(path))]).samples) == 1  # the training reader too

    with pytest.raises(DataError) as caught:
        load_canonical_file(write(dataset, [record(["images/a.png"]), record(["images/../elsewhere.png"])]))
    (problem,) = caught.value.problems  # `..` applies to the path as written: never the store's elsewhere.png
    assert problem.where == f"{dataset / 'data.jsonl'}:2"
    assert f"file not found at {dataset.resolve() / 'elsewhere.png'}" in problem.what
    with pytest.raises(DataError) as caught:
        load_canonical_file(write(dataset, [record(["../store/images/a.png"])]))
    (problem,) = caught.value.problems
    assert "leaves the dataset folder" in problem.what and "through '..'" in problem.what
    assert "a link there to where they are, e.g. images -> /store/images, is followed" in problem.fix


def test_single_image_family_with_all_names_the_strategies_to_use(folder):
    from ecomtune.backbones.families import LLAVA

    path = write(folder, [record(["ok.png", "ok.png"])])
    with pytest.raises(DataError) as caught:
        load_canonical_file(path, LLAVA, ImageSettings(strategy="all"))
    text = caught.value.render()
    assert "2 images, but LLaVA-1.5 takes at most 1 per sample" in text and "grid" in text and "primary" in text
    for strategy in ("grid", "primary"):
        (sample,) = load_canonical_file(path, LLAVA, ImageSettings(strategy=strategy))
        assert len(sample.images) == 1


@pytest.mark.slow
def test_training_and_bench_follow_the_strategy(catalog, tmp_path):
    """sft with crops on a multi-image family, sft with grid on a single-image one; bench uses the run's."""
    from ecomtune.bench.runner import run_bench
    from ecomtune.config.recipe_files import load_recipe
    from ecomtune.train.stages import run_sft
    from tests.conftest import quick_overrides

    for backbone, strategy in (("tiny-qwen2-vl", "crops"), ("tiny-llava", "grid")):
        recipe = load_recipe(None, [f"backbone.name={backbone}", f"sft.data={catalog['instruct']}",
                                    f"sft.images.strategy={strategy}", "sft.images.grid_size=224",
                                    "sft.max_length=4096", *quick_overrides("sft", steps=2)])
        result = run_sft(recipe, tmp_path / strategy)
        assert result.manifest["recipe"]["sft"]["images"]["strategy"] == strategy
        results = run_bench(str(result.output), "item-intelligence", catalog["bench"], limit=2)
        assert results["images"]["strategy"] == strategy
        counts = [e["images"] for e in results["tasks"]["item-intelligence"]["examples"]]
        assert all(n == 1 for n in counts) if strategy == "grid" else all(n >= 2 for n in counts)
