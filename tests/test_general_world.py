"""The general world: probe scenes never train, every answer is read back from the pixels, same seed same items."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from ecomtune.tasks import general_world as gw


def components(image) -> list[dict]:
    """The coloured blobs of a picture: colour name (nearest palette colour), centroid and fill of the bounding
    box (square ~1, circle ~0.79, triangle ~0.5)."""
    pixels = np.asarray(image).astype(int)
    grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
    labels, count = ndimage.label(~grey)
    blobs = []
    for index in range(1, count + 1):
        mask = labels == index
        ys, xs = np.nonzero(mask)
        colour = pixels[ys[0], xs[0]]
        name = min(gw.COLOURS, key=lambda n: sum((np.array(gw.COLOURS[n]) - colour) ** 2))
        fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        kind = "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"
        blobs.append({"colour": name, "kind": kind, "x": xs.mean(), "y": ys.mean()})
    return blobs


def answer_from_pixels(scene: gw.Scene, question: gw.Question) -> str:
    """What the picture alone says, for each skill (the question's words name what to look for)."""
    image = gw.render_general(scene)
    blobs = components(image)
    if question.skill == "count":
        return str(len(blobs))
    if question.skill == "colour":
        return Counter(b["colour"] for b in blobs).most_common(1)[0][0]
    if question.skill == "shape":
        return Counter(b["kind"] for b in blobs).most_common(1)[0][0]
    words = question.text.rstrip("?").split()
    if question.skill == "spatial":  # "Where is the C1 K relative to the C2 K?"
        first = next(b for b in blobs if b["colour"] == words[3])
        second = next(b for b in blobs if b["colour"] == words[-2])
        dx, dy = first["x"] - second["x"], first["y"] - second["y"]
        return ("left" if dx < 0 else "right") if abs(dx) > abs(dy) else ("above" if dy < 0 else "below")
    if question.skill == "existence":  # "Is there a K in the picture?"
        return "yes" if any(b["kind"] == words[3] for b in blobs) else "no"
    # reading: of the options, only the answer's word draws this very picture
    same = [o for o in question.options
            if gw.render_general(gw.Scene((), scene.shade, o, scene.word_at, scene.word_size)).tobytes()
            == image.tobytes()]
    assert len(same) == 1
    return same[0]


@pytest.mark.parametrize("split", gw.SPLITS)
def test_every_answer_is_what_the_picture_shows(split):
    items = gw.general_questions(split, 240, seed=1)
    assert {q.skill for _, q in items} == set(gw.SKILLS)
    for scene, question in items:
        assert question.answer in question.options
        assert answer_from_pixels(scene, question) == question.answer, (question, scene)


def test_probe_scenes_are_never_training_scenes():
    probe = {seed: gw.general_questions("probe", 180, seed) for seed in (0, 1)}
    train = {seed: gw.general_questions("train", 1200, seed) for seed in (0, 1)}
    probe_keys = {s.key() for items in probe.values() for s, _ in items}
    train_keys = {s.key() for items in train.values() for s, _ in items}
    assert not probe_keys & train_keys
    assert all(gw.split_of(s) == "probe" for items in probe.values() for s, _ in items)
    assert all(gw.split_of(s) == "train" for items in train.values() for s, _ in items)

    def digest(scene):
        return hashlib.sha256(gw.render_general(scene).tobytes()).hexdigest()

    probe_pictures = {digest(s) for s, _ in probe[0]}
    assert not probe_pictures & {digest(s) for s, _ in train[0]}, "no probe picture is drawn for training"


def test_same_seed_same_items_balanced_answers():
    one, again, other = (gw.general_questions("probe", 180, seed) for seed in (0, 0, 1))
    assert one == again and one != other
    for skill in gw.SKILLS:
        answers = Counter(q.answer for _, q in one if q.skill == skill)
        assert max(answers.values()) - min(answers.values()) <= 1, (skill, answers)
    # a slice drawn alone is the same as that slice of the whole
    assert gw.general_questions("train", 5, 0, first=10) == gw.general_questions("train", 15, 0)[10:]
