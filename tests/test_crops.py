"""Cropping utilities: hand-computed boxes, squares, tiles and perceptual hashes."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from ecomtune.data.images import crop_boxes as crops
from ecomtune.errors import DataError


def product_on_white(size=(100, 80), box=(30, 20, 60, 50), colour=(200, 0, 0)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    return image


def test_trim_background_finds_the_product():
    assert crops.trim_background(product_on_white()) == (30, 20, 60, 50)


def test_trim_background_tolerates_noise_and_keeps_uniform_images_whole():
    image = product_on_white()
    image.putpixel((0, 40), (250, 250, 250))  # off-white speck within tolerance
    assert crops.trim_background(image) == (30, 20, 60, 50)
    assert crops.trim_background(Image.new("RGB", (40, 30), (9, 9, 9))) == (0, 0, 40, 30)


def test_expand_box_by_a_fraction_and_clamp():
    assert crops.expand_box((30, 20, 60, 50), 0.1, (100, 80)) == (27, 17, 63, 53)
    assert crops.expand_box((0, 0, 50, 40), 0.5, (60, 50)) == (0, 0, 60, 50)


def test_merge_boxes_unions_overlapping_groups_only():
    boxes = [(0, 0, 10, 10), (5, 5, 15, 15), (14, 14, 20, 20), (50, 50, 60, 60)]
    # the first three chain together; the last stays alone; edge-touching boxes do not overlap
    assert crops.merge_boxes(boxes) == [(0, 0, 20, 20), (50, 50, 60, 60)]
    assert crops.merge_boxes([(0, 0, 10, 10), (10, 0, 20, 10)]) == [(0, 0, 10, 10), (10, 0, 20, 10)]


def test_enclosing_square_is_smallest_centred_and_inside():
    # union (20, 30)-(40, 40): 20 wide, 10 high -> 20x20 square centred at (30, 35)
    assert crops.enclosing_square([(20, 30, 30, 40), (30, 30, 40, 35)], (100, 100)) == (20, 25, 40, 45)
    # near the right edge: shifted left, not shrunk
    assert crops.enclosing_square([(90, 10, 100, 40)], (100, 100)) == (70, 10, 100, 40)
    # wider than the image's short side: the square is the short side
    assert crops.enclosing_square([(0, 10, 120, 20)], (120, 50)) == (35, 0, 85, 50)


def test_tiles_cover_the_image_with_edge_aligned_last_tiles():
    assert crops.tiles((100, 50), 50) == [(0, 0, 50, 50), (50, 0, 100, 50)]
    assert crops.tiles((120, 50), 50, overlap=0.0) == [(0, 0, 50, 50), (50, 0, 100, 50), (70, 0, 120, 50)]
    assert crops.tiles((60, 60), 40, overlap=0.5) == [(0, 0, 40, 40), (20, 0, 60, 40), (0, 20, 40, 60),
                                                      (20, 20, 60, 60)]


def test_phash_near_duplicates_are_close_and_different_pictures_far():
    a = product_on_white((128, 128), (30, 30, 90, 90))
    resized = a.resize((96, 96))
    other = product_on_white((128, 128), (0, 90, 128, 128), colour=(0, 0, 200))
    assert crops.hamming(crops.phash(a), crops.phash(a)) == 0
    assert crops.hamming(crops.phash(a), crops.phash(resized)) <= 4
    assert crops.hamming(crops.phash(a), crops.phash(other)) > 16
    assert crops.dedupe([a, resized, other, a]) == [0, 2]


def test_hamming_by_hand():
    assert crops.hamming(0b1011, 0b0001) == 2


def test_boxes_outside_the_image_are_clear_errors():
    assert crops.check_box((-5, 10, 20.4, 200), (100, 80)) == (0, 10, 20, 80)
    with pytest.raises(DataError, match="outside the 100x80 image") as caught:
        crops.check_box((120, 10, 150, 20), (100, 80), where="boxes.json:3")
    assert "boxes.json:3" in caught.value.render()
    with pytest.raises(DataError, match="4 numbers"):
        crops.check_box((1, 2, 3), (100, 80))
    with pytest.raises(DataError):
        crops.enclosing_square([], (10, 10))


@pytest.mark.parametrize(("answer", "expected"), [
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "CE mark"}]', [[10, 20, 30, 40]]),
    ('Here you go:\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox": [5, 6, 7, 8]},]\n```',
     [[1, 2, 3, 4], [5, 6, 7, 8]]),
    ("[{'bbox_2d': [1, 2, 3, 4]}, {'bbox_2d': [5, 6", [[1, 2, 3, 4]]),  # truncated last entry is skipped
    ("[[0, 0, 10, 10], [1, 2]]", [[0, 0, 10, 10]]),
    ('{"bbox_2d": [3, 3, 9, 9]}', [[3, 3, 9, 9]]),
    ("I see no text on this product.", []),
])
def test_parse_grounding_boxes(answer, expected):
    from ecomtune.data.images.item_crops import parse_grounding_boxes

    assert parse_grounding_boxes(answer) == expected


def test_crop_item_adds_one_square_crop_per_boxed_image_dedupes_and_caps():
    from ecomtune.data.images.item_crops import crop_item

    front = product_on_white((128, 128), (20, 20, 100, 100))
    label = Image.new("RGB", (128, 128), (255, 255, 255))
    ImageDraw.Draw(label).rectangle((70, 10, 120, 30), fill=(0, 0, 0))
    ImageDraw.Draw(label).rectangle((10, 90, 40, 120), fill=(0, 120, 0))
    result = crop_item([front, label, front.copy()], [[], [[70, 10, 120, 30], [72, 12, 110, 28]], []])
    # label's two overlapping boxes merge into one crop; the third image duplicates the first
    assert result.sources == ["original:0", "original:1", "crop:1"]
    assert result.crops_made == 1 and result.duplicates_dropped == 1 and result.capped == 0
    crop = result.images[2]
    assert crop.width == crop.height == 60  # merged box (65, 8, 125, 32) widened by 10%, squared on its width
    capped = crop_item([front, label], [[], [[70, 10, 120, 30]]], max_images=2)
    assert capped.sources == ["original:0", "original:1"] and capped.capped == 1


def test_crop_item_rejects_boxes_outside_the_image():
    from ecomtune.data.images.item_crops import crop_item

    with pytest.raises(DataError, match="outside") as caught:
        crop_item([product_on_white()], [[[500, 500, 600, 600]]], where="items.jsonl:4")
    assert "items.jsonl:4 image 0" in caught.value.render()


def _items_file(catalog, name: str, boxes_for_second: list) -> tuple:
    import json

    from ecomtune.data.canonical_file import load_canonical_file

    multi = [s for s in load_canonical_file(catalog["instruct"]) if len(s.images) >= 3][:2]
    path = catalog["instruct"].parent / name
    lines = []
    for sample in multi:
        boxes = [[] for _ in sample.images]
        boxes[1] = boxes_for_second
        lines.append(json.dumps({"images": sample.images, "messages": sample.messages, "boxes": boxes}))
    path.write_text("\n".join(lines) + "\n")
    return path, multi


@pytest.mark.slow
def test_crop_command_writes_items_with_crops_and_reports_tokens(catalog, tmp_path):
    from ecomtune.data.canonical_file import load_canonical_file
    from tests.conftest import run_cli

    items, originals = _items_file(catalog, "crop-items.jsonl", [[20, 80, 110, 120]])
    result = run_cli("crop", str(items), "--out", str(tmp_path / "cropped"), "--max-images", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "visual tokens" in result.stdout and "images" in result.stdout
    cropped = load_canonical_file(tmp_path / "cropped" / "items.jsonl")  # valid canonical data again
    assert len(cropped) == len(originals)
    for before, after in zip(originals, cropped, strict=True):
        assert any("crop1" in p for p in after.images), "the boxed second image got its crop"
        assert len(after.images) <= len(before.images) + 1
        first_user = after.messages[0]["content"]
        assert [b["type"] for b in first_user[: len(after.images)]] == ["image"] * len(after.images)


@pytest.mark.slow
def test_crop_command_bad_box_is_a_clear_error_and_writes_no_items(catalog, tmp_path):
    from tests.conftest import run_cli

    items, _ = _items_file(catalog, "crop-bad.jsonl", [[900, 900, 950, 950]])
    result = run_cli("crop", str(items), "--out", str(tmp_path / "bad"))
    assert result.returncode == 2 and "outside" in result.stderr and "crop-bad.jsonl:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "items.jsonl").exists()


@pytest.mark.parametrize(("coords", "model_input", "expected"), [
    ("pixels", None, [[10, 20, 30, 40]]),
    ("norm1000", None, [[2, 8, 6, 16]]),  # 200 x 400 image: x / 1000 * 200, y / 1000 * 400
    ("resized", (100, 200), [[20, 40, 60, 80]]),  # the model saw it at 100 x 200: twice smaller
])
def test_grounding_boxes_are_mapped_back_to_original_pixels(coords, model_input, expected):
    from ecomtune.data.images.item_crops import to_image_pixels

    assert to_image_pixels([[10, 20, 30, 40]], coords, (200, 400), model_input) == expected


@pytest.mark.slow
def test_crop_with_a_grounding_model_asks_it_for_every_image(catalog, tmp_path):
    """The plumbing: a tiny random model answers noise, so boxes are few or none, but every image is asked,
    the answers are parsed, and the crop still writes valid items."""
    from tests.conftest import run_cli

    items, originals = _items_file(catalog, "grounded.jsonl", [])
    result = run_cli("crop", str(items), "--out", str(tmp_path / "g"), "--grounding", "tiny-qwen2.5-vl")
    assert result.returncode == 0, result.stderr[-2000:]
    asked = len({p for s in originals for p in s.images})
    assert f"on {asked} images" in result.stdout and (tmp_path / "g" / "items.jsonl").is_file()
    both = run_cli("crop", str(items), "--out", str(tmp_path / "h"), "--grounding", "x", "--boxes", "y.json")
    assert both.returncode == 2 and "pass one of them" in both.stderr
