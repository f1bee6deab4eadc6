"""A general world in miniature: generic scenes (not products) and questions on six general skills.

It stands in, at toy size, for the general benchmarks and mixtures the paper keeps its model good at (MMBench,
MME, CVBench, TextVQA, POPE-style existence): counting, colour, shape, spatial relation, existence yes/no, and
reading a short word drawn in the scene. It serves three purposes:
- the training data of the pretrained tiny base (`ecomtune/backbones/pretrained.py`): a model with general skill
  to keep;
- the general replay mixed into the recipe's mid and sft stages (`general-train.jsonl` of a catalog);
- the `general` bench task (`bench/general.jsonl`), the retention probe.
It lives with the tasks because the `general` task owns it: the probe asks it, and the replay data and the
general base learn from it.

A scene is a small value (`Scene`) from which the picture is drawn (`render_general`) and the answer is read
(`ask`), so every answer is what the picture shows. The scene space is split in two by a hash of the scene: a
scene is either a training scene or a probe scene, whatever the seed, so a probe picture is never one the model
trained on (the generators draw from different seed streams too, and skip scenes of the other split).

Three choices are shaped by what a ~1M-parameter base learns in its ~2-minute build (docs/backbones.md has the
measurements):
- a shape sits at one place in its grid cell, so it always falls on the vision tower's 14-px patches the same way.
  With 1-7 px of jitter, builds learnt shape in some seeds and not in others (0.40 to 0.80); on the grid, 0.87 and
  0.93 in two seeds.
- existence asks, as POPE does, whether an object of a kind is there ("Is there a circle in the picture?"). Asked
  for a colour and a kind together, 1,200 steps of existence-only training left it at chance (0.50); asked for a
  kind, 400 steps reached 0.77.
- the word to read starts on a corner of the vision tower's 14-px patch grid, at one of 12 places. Drawn at any
  pixel, 400 steps of reading-only training left it at chance (0.30); on the grid they read every word (1.00).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ecomtune.tasks import prompts

SIZE = 112  # 4x4 merged image tokens in the tiny processor; one grid cell of the scene is one token's area
GRID = 4
CELL = SIZE // GRID
SHAPE_SIZE = 20
# Every shape sits at one place in its cell (see the module's docstring): 4 px in, so that shapes in neighbouring
# cells are 8 px apart and never touch.
SHAPE_OFFSET = 4
KINDS = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60),
                                            "yellow": (235, 205, 30)}
WORDS = ("cat", "dog", "sun", "map", "cup", "key", "owl", "bus")
RELATIONS = ("left", "right", "above", "below")
SKILLS = ("count", "colour", "shape", "spatial", "existence", "reading")
SPLITS = ("train", "probe")
ANSWERS = {"count": ("1", "2", "3", "4"), "colour": tuple(COLOURS), "shape": KINDS, "spatial": RELATIONS,
           "existence": ("yes", "no"), "reading": WORDS}
# Words are drawn at one size from a corner of the vision tower's 14-px patch grid (see `_reading`).
PATCH = 14
WORD_SIZE = 36
WORD_COLUMNS = (0, PATCH, 2 * PATCH)
WORD_ROWS = (PATCH, 2 * PATCH, 3 * PATCH, 4 * PATCH)
PROBE_SHARE = 8  # one scene in eight (by hash) is a probe scene


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: tuple[int, int]  # (row, column) of the 4x4 grid
    offset: tuple[int, int]  # pixels from the cell's corner


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    shade: int  # grey level of the background
    word: str | None = None
    word_at: tuple[int, int] = (0, 0)
    word_size: int = WORD_SIZE

    def key(self) -> str:
        """Everything that decides the picture, and nothing else: two scenes have one key exactly when they draw one
        picture. The shapes are taken in a fixed order, since the order they were drawn in changes no pixel (shapes
        never overlap), and shapes sit at one place in their cell, so the same shapes in another order are one
        picture."""
        return repr(replace(self, shapes=tuple(sorted(self.shapes, key=repr))))


@dataclass(frozen=True)
class Question:
    skill: str
    text: str
    options: tuple[str, ...]
    answer: str


def split_of(scene: Scene) -> str:
    """The split a scene belongs to, by a hash of its key: fixed for every seed and every run."""
    digest = hashlib.sha256(scene.key().encode()).digest()
    return "probe" if int.from_bytes(digest[:4], "big") % PROBE_SHARE == 0 else "train"


def _shape(kind: str, colour: str, cell: tuple[int, int]) -> Shape:
    return Shape(kind, colour, cell, (SHAPE_OFFSET, SHAPE_OFFSET))


def _cells(rng: random.Random, n: int) -> list[tuple[int, int]]:
    return [divmod(i, GRID) for i in rng.sample(range(GRID * GRID), n)]


def _same_shapes(rng: random.Random, low: int, high: int) -> Scene:
    kind, colour, n = rng.choice(KINDS), rng.choice(list(COLOURS)), rng.randint(low, high)
    return Scene(tuple(_shape(kind, colour, cell) for cell in _cells(rng, n)), rng.randint(110, 150))


def _spatial(rng: random.Random) -> tuple[Scene, str]:
    kind = rng.choice(KINDS)
    first, second = rng.sample(list(COLOURS), 2)
    relation = rng.choice(RELATIONS)
    line = rng.randrange(GRID)
    a, b = sorted(rng.sample(range(GRID), 2))  # a < b: `first` goes at a for left/above, at b for right/below
    near, far = (a, b) if relation in ("left", "above") else (b, a)
    cells = ((line, near), (line, far)) if relation in ("left", "right") else ((near, line), (far, line))
    shapes = (_shape(kind, first, cells[0]), _shape(kind, second, cells[1]))
    return Scene(shapes, rng.randint(110, 150)), relation


def _existence(rng: random.Random) -> tuple[Scene, str]:
    # POPE-style: is an object of a kind there? One or two shapes of different kinds, any colours.
    kinds = rng.sample(KINDS, rng.randint(1, 2))
    shapes = tuple(_shape(kind, rng.choice(list(COLOURS)), cell)
                   for kind, cell in zip(kinds, _cells(rng, len(kinds)), strict=True))
    return Scene(shapes, rng.randint(110, 150)), rng.choice(KINDS)


def _reading(rng: random.Random) -> Scene:
    # The word starts on a corner of the 14-px patch grid, anywhere a whole word fits: one of 12 places.
    at = (rng.choice(WORD_COLUMNS), rng.choice(WORD_ROWS))
    return Scene((), rng.randint(150, 200), rng.choice(WORDS), at, WORD_SIZE)


def _options(rng: random.Random, answer: str, pool: tuple[str, ...], n: int = 4) -> tuple[str, ...]:
    options = [answer, *rng.sample([p for p in pool if p != answer], n - 1)]
    rng.shuffle(options)
    return tuple(options)


def make_question(rng: random.Random, skill: str) -> tuple[Scene, Question]:
    """One scene drawn for `skill` and its question; the answer is read off the scene."""
    if skill == "count":
        scene = _same_shapes(rng, 1, 4)
        return scene, Question(skill, "How many shapes are in the picture?", ("1", "2", "3", "4"),
                               str(len(scene.shapes)))
    if skill == "colour":
        scene = _same_shapes(rng, 1, 3)
        return scene, Question(skill, "What colour are the shapes in the picture?", tuple(COLOURS),
                               scene.shapes[0].colour)
    if skill == "shape":
        scene = _same_shapes(rng, 1, 3)
        return scene, Question(skill, "What shape are the objects in the picture?", KINDS, scene.shapes[0].kind)
    if skill == "spatial":
        scene, relation = _spatial(rng)
        first, second = scene.shapes
        return scene, Question(skill, f"Where is the {first.colour} {first.kind} relative to the {second.colour} "
                               f"{second.kind}?", RELATIONS, relation)
    if skill == "existence":
        scene, kind = _existence(rng)
        there = any(s.kind == kind for s in scene.shapes)
        return scene, Question(skill, f"Is there a {kind} in the picture?", ("yes", "no"), "yes" if there else "no")
    if skill == "reading":
        scene = _reading(rng)
        assert scene.word is not None
        return scene, Question(skill, "What word is written in the picture?", _options(rng, scene.word, WORDS),
                               scene.word)
    raise ValueError(f"unknown skill {skill!r}; skills: {', '.join(SKILLS)}")


def general_questions(split: str, count: int, seed: int, first: int = 0) -> list[tuple[Scene, Question]]:
    """`count` scenes of `split` (items `first`, `first + 1`, ...) with their questions: the skills in turn, and
    within a skill its answers in turn, so every answer is equally frequent (the majority baseline is the random
    one). Each item draws from its own seed stream (`general:<split>:<seed>:<i>`); a scene of the other split, or
    with another answer, is drawn again."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    out = []
    for i in range(first, first + count):
        skill = SKILLS[i % len(SKILLS)]
        target = ANSWERS[skill][(i // len(SKILLS)) % len(ANSWERS[skill])]
        rng = random.Random(f"general:{split}:{seed}:{i}")
        while True:
            scene, question = make_question(rng, skill)
            if split_of(scene) == split and question.answer == target:
                break
        out.append((scene, question))
    return out


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_general(scene: Scene) -> Image.Image:
    """The picture of a scene: pure, the same scene always gives the same pixels."""
    image = Image.new("RGB", (SIZE, SIZE), (scene.shade,) * 3)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x, y = shape.cell[1] * CELL + shape.offset[0], shape.cell[0] * CELL + shape.offset[1]
        box = (x, y, x + SHAPE_SIZE - 1, y + SHAPE_SIZE - 1)
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x + SHAPE_SIZE // 2, y), (x + SHAPE_SIZE - 1, y + SHAPE_SIZE - 1),
                          (x, y + SHAPE_SIZE - 1)], fill=fill)
    if scene.word:
        draw.text(scene.word_at, scene.word, fill=(20, 20, 20), font=_font(scene.word_size))
    return image


def general_prompt(question: Question) -> str:
    return prompts.general_prompt(question.text, list(question.options))


def write_general(out_dir: Path, split: str, count: int, seed: int, images: str = "images/general") -> list[dict]:
    """Draw `count` items of `split` as PNG files under `out_dir/images` and return their records:
    bench records (`attribute` is the skill) for the probe, chat records (canonical JSONL) for training."""
    folder = Path(out_dir) / images
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (scene, question) in enumerate(general_questions(split, count, seed)):
        path = f"{images}/{split}{i:05d}.png"
        render_general(scene).save(Path(out_dir) / path, format="PNG")
        if split == "probe":
            records.append({"id": f"{split}{i:05d}:{question.skill}", "images": [path], "attribute": question.skill,
                            "question": question.text, "options": list(question.options), "answer": question.answer})
        else:
            records.append(prompts.chat_record([path], general_prompt(question), question.answer))
    return records
