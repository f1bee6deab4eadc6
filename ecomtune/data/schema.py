"""The canonical sample format: records parsed and checked into `Sample`s.

One JSON object per line:
- `images`: list of image paths (or one path), relative to the JSONL file (absolute paths also work);
- and either `messages` (TRL conversational: `[{"role": "user"|"assistant"|"system", "content": ...}]`)
  or `prompt` + `completion` (strings, or lists of messages).

Content is a string or a list of blocks (`{"type": "image"}`, `{"type": "text", "text": ...}`). In
strings, `<image>` marks where an image goes (LLaVA style). Every record becomes a `Sample` whose
messages use blocks only, one image block per entry of `images`, in order.

Every record is checked before any model is loaded; all problems are reported together with the
file:line of the record and the fix.
"""

from __future__ import annotations

import base64
import functools
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ecomtune.data.images.load import check_image
from ecomtune.errors import DataError, Problem

IMAGE_MARKER = "<image>"
ESCAPE_FIX = ("keep images inside the dataset folder (a link there to where they are, e.g. images -> "
              "/store/images, is followed), or give absolute paths")
ROLES = {"system", "user", "assistant"}
MAX_REPORTED = 20

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ecomtune.backbones.spec import BackboneSpec
    from ecomtune.config.schema import ImageSettings
    from ecomtune.data.images.checks import Checked


# An image as a path, or how to derive one from paths (a crop, a grid; see ecomtune.data.images.strategies).
ImageRef = str | dict[str, Any]


@dataclass
class Sample:
    """One training conversation with its images (absolute paths, or references derived from them)."""

    images: list[ImageRef]
    messages: list[dict[str, Any]]
    source: str = ""  # file:line, for messages about this sample later on
    boxes: list[list[list[float]]] | None = None  # per image: informative regions [x0, y0, x1, y1] (text, labels)
    origin: int = 0  # which source of the stage's mixture it came from (index), for per-source statistics
    # the chat-template text tokenized once before training, images still placeholders: token ids and the
    # [start, end) token ranges that are learnt (`ecomtune.data.batches.prepared`); None until prepared
    text: PreparedText | None = None
    leading_dropped: int = 0  # assistant turns before the first user turn, dropped when read (see parse_record)

    def to_row(self) -> dict[str, Any]:
        """A row for a `datasets.Dataset`: images and content blocks as JSON text, so that Arrow never merges
        the schemas of different rows (it would add `text: None` keys to image blocks)."""
        row = {"images": orjson.dumps(self.images).decode(), "messages": orjson.dumps(self.messages).decode(),
               "source": self.source}
        if self.text is not None:
            row["text"] = orjson.dumps(self.text.packed()).decode()
        return row

    @staticmethod
    def from_row(row: dict[str, Any]) -> Sample:
        text = row.get("text")
        prepared = PreparedText.unpacked(orjson.loads(text)) if text else None
        return Sample(orjson.loads(row["images"]), orjson.loads(row["messages"]), row.get("source", ""),
                      text=prepared)


@dataclass(frozen=True)
class PreparedText:
    """A sample's text as the collator would tokenize it, done once: `ids` with one placeholder token per image
    (not yet expanded), and `learnt`, the [start, end) ranges of `ids` inside assistant turns. The ids are a
    compact array (4 bytes a token, where a list of Python ints costs about 36): a stage holds every sample's."""

    ids: array
    learnt: list[list[int]]

    def __post_init__(self) -> None:
        if not isinstance(self.ids, array):
            object.__setattr__(self, "ids", array("i", self.ids))

    def packed(self) -> list:
        """[ids, learnt] for JSON, the ids as base64 of their int32 bytes: a third of a JSON list's size, and read
        back without parsing a number."""
        return [base64.b64encode(self.ids.tobytes()).decode("ascii"), self.learnt]

    @staticmethod
    def unpacked(value: Sequence) -> PreparedText:
        """The text `packed` made."""
        ids = array("i")
        ids.frombytes(base64.b64decode(value[0]))
        return PreparedText(ids, value[1])


def _blocks(content: Any, where: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """Normalise message content to a list of image/text blocks."""
    if isinstance(content, str):
        blocks: list[dict[str, Any]] = []
        for i, part in enumerate(content.split(IMAGE_MARKER)):
            if i:
                blocks.append({"type": "image"})
            if part:
                blocks.append({"type": "text", "text": part})
        return blocks
    if isinstance(content, list):
        out = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "image":
                out.append({"type": "image"})
            elif kind == "text" and isinstance(block.get("text"), str):
                out.extend(_blocks(block["text"], where, problems))
            else:
                problems.append(Problem(f"content block {block!r} is neither an image nor a text block", where,
                                        'use {"type": "image"} or {"type": "text", "text": "..."}'))
        return out
    problems.append(Problem(f"message content must be a string or a list of blocks, got {type(content).__name__}",
                            where))
    return []


def _as_messages(value: Any, default_role: str) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list):
        return value
    return None


def resolve_image_path(image: str, base_dir: Path, root: Path | None = None) -> tuple[str, str | None]:
    """An image path from a data file, made absolute against the file's folder and resolved (symbolic links
    followed); the second value says what is wrong when a relative path leaves the dataset folder `root`
    (default: the file's folder). The path is a string: a million `Path` objects cost seconds, and every caller
    wants the string.

    The rule for where images may live, shared by every reader (training sources, bench, predict, the probe):
    - absolute paths are the user's explicit choice and are taken as they are;
    - a relative path is read as written: its `..` are applied to the path itself, before any link is followed
      (`images/../x.png` is `x.png` in the file's folder, whatever `images` is), and it may not climb out of
      `root` that way;
    - links are then followed wherever they point: a link inside the dataset (`images -> ../store/images`, the
      usual layout for LLaVA data kept in one image store) is the user's own choice, like an absolute path."""
    return _resolved(image, str(base_dir), str(root or base_dir))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=65536)
def _resolved(image: str, base_dir: str, root: str) -> tuple[str, str | None]:
    if os.path.isabs(image):
        return real_path(image), None
    real_root, real_base = _real_folder(root), _real_folder(base_dir)
    as_written = os.path.normpath(os.path.join(real_base, image))  # `..` applied, links in `image` not followed
    resolved = real_path(as_written)
    if not _inside(as_written, real_root):
        return resolved, f"relative path leaves the dataset folder {real_root} through '..'"
    return resolved, None


@functools.lru_cache(maxsize=65536)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def forget_folders() -> None:
    """Drop the resolved folders `real_path` remembers (a new read of the data starts afresh)."""
    _real_folder.cache_clear()
    _resolved.cache_clear()


def real_path(path: str) -> str:
    """`os.path.realpath(path)`, with the folder's part remembered: a dataset names many images in few folders, and
    resolving every folder of every path again is most of the cost of checking a million records. The file itself
    is still looked at each time (a symbolic link is followed)."""
    folder, name = os.path.split(os.path.abspath(path))
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    joined = os.path.join(_real_folder(folder), name)
    return os.path.realpath(joined) if os.path.islink(joined) else joined


def check_record_images(value: Any, base_dir: Path, where: str, root: Path | None = None,
                        spec: BackboneSpec | None = None, escape_fix: str = ESCAPE_FIX,
                        checked: Mapping[str, Checked] | None = None,
                        ) -> tuple[list[str], list[tuple[int, int] | None], list[Problem]]:
    """A record's `images` value checked the one way training, benchmark and prediction data all share: one path
    (a string) or a list of paths, each resolved against the data file's folder `base_dir` (relative paths may
    not leave `root`) and checked by `check_image`, with the family's aspect-ratio limit when `spec` is given.
    Returns the absolute paths, each image's displayed size (None when unreadable) and every problem, located
    at `where` (the record's file:line). Anything but a string or a list of strings is one problem, not a crash:
    a bare string would otherwise be read one character per path. `checked`: `decode_check` results already at
    hand by resolved path (`ecomtune.data.images.checks`); other images are decoded here."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        got = type(value).__name__ if not isinstance(value, list) else "a list with non-string entries"
        return [], [], [Problem(f"'images' must be a path or a list of paths, got {got}", where,
                                'e.g. "images": ["images/item1_0.jpg", "images/item1_1.jpg"]')]
    max_aspect, family = (spec.max_aspect_ratio, spec.title) if spec is not None else (None, "")
    paths, sizes, problems = [], [], []
    for image in value:
        path, escape = resolve_image_path(image, base_dir, root)
        if escape:
            size, problem = None, Problem(escape, fix=escape_fix)
        else:
            size, problem = check_image(path, max_aspect, family, checked.get(path) if checked else None)
        if problem is not None:
            problems.append(replace(problem, what=f"image {image!r}: {problem.what}", where=where))
        paths.append(path)
        sizes.append(size)
    return paths, sizes, problems


def checked_image_files(paths: Sequence[str | Path], where: str, spec: BackboneSpec | None = None) -> list[str]:
    """Image files named outside any record (`export --image`), checked as record images are (`check_record_images`:
    decoded in full, the family's aspect-ratio limit): their absolute paths, or one DataError listing every
    problem at `where` (the option that named them)."""
    given = [str(Path(p).absolute()) for p in paths]  # a command-line path is the user's own, from the cwd
    resolved, _sizes, problems = check_record_images(given, Path.cwd(), where, spec=spec)
    if problems:
        raise DataError(f"{where}: {len(problems)} image(s) cannot be used", problems)
    return resolved


def parse_boxes(value: Any, sizes: list[tuple[int, int] | None], where: str) -> tuple[list | None, list[Problem]]:
    """A record's `boxes`: one list of [x0, y0, x1, y1] pixel boxes per image, each inside its image."""
    if value is None:
        return None, []
    fix = 'give one list per image, e.g. "boxes": [[], [[10, 20, 60, 40]]] for boxes on the second image'
    if not isinstance(value, list) or len(value) != len(sizes):
        count = len(value) if isinstance(value, list) else type(value).__name__
        return None, [Problem(f"'boxes' needs one list per image: {len(sizes)} image(s), got {count}", where, fix)]
    problems = []
    for index, (boxes, size) in enumerate(zip(value, sizes, strict=True)):
        for box in boxes if isinstance(boxes, list) else [boxes]:
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                problems.append(Problem(f"image {index}: box {box!r} is not 4 numbers", where, fix))
            elif size is not None:
                x0, y0, x1, y1 = box
                if not (x0 < x1 and y0 < y1 and x1 > 0 and y1 > 0 and x0 < size[0] and y0 < size[1]):
                    problems.append(Problem(f"image {index}: box {box} is empty or outside the {size[0]}x{size[1]} "
                                            "image", where, "boxes are pixels of the original image, x0 < x1, y0 < y1"))
    return (value if not problems else None), problems


def parse_record(record: Any, base_dir: Path, where: str, root: Path | None = None,
                 spec: BackboneSpec | None = None,
                 checked: Mapping[str, Checked] | None = None) -> tuple[Sample | None, list[Problem]]:
    """Check one decoded JSON record; return the sample, or None and every problem with it. Relative image
    paths must stay inside `root` (default: the data file's folder); with `spec`, images must also suit the
    backbone family (aspect ratio), so a record the model would refuse is named before any weights load."""
    problems: list[Problem] = []
    if not isinstance(record, dict):
        return None, [Problem("record is not a JSON object", where, "each line must be one {...} object")]
    if "messages" in record:
        raw_messages = record["messages"]
    elif "prompt" in record and "completion" in record:
        prompt = _as_messages(record["prompt"], "user")
        completion = _as_messages(record["completion"], "assistant")
        if prompt is None or completion is None:
            return None, [Problem("prompt and completion must be strings or lists of messages", where,
                                  'e.g. "prompt": "<image>What colour?", "completion": "red"')]
        raw_messages = prompt + completion
    else:
        return None, [Problem(f"record has neither 'messages' nor 'prompt'+'completion' (keys: {sorted(record)})",
                              where, "see docs/data-formats.md#the-canonical-jsonl")]
    if not isinstance(raw_messages, list) or not raw_messages:
        return None, [Problem("'messages' must be a non-empty list", where, "list the conversation's messages")]

    messages = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            problems.append(Problem(f"message {i} needs a role in {sorted(ROLES)}", where,
                                    'write each message as {"role": "user", "content": ...}'))
            continue
        messages.append({"role": message["role"], "content": _blocks(message.get("content"), where, problems)})
    if problems:
        return None, problems
    messages, leading = without_leading_answers(messages)
    add_markers(messages, record.get("images", []))
    if not any(m["role"] == "user" for m in messages):
        return None, [Problem("the conversation has no user turn: no question to learn an answer to", where,
                              "start each conversation with the user's turn (a system turn may come first)")]
    if messages[-1]["role"] != "assistant":
        problems.append(Problem("the last message is not from the assistant: nothing to learn", where,
                                "end each conversation with the assistant's answer"))
    for i, message in enumerate(messages):
        text = "".join(b.get("text", "") for b in message["content"])
        if message["role"] == "assistant" and not text.strip():
            problems.append(Problem(f"assistant message {i} is empty", where, "give every answer some text"))
        if message["role"] == "assistant" and any(b["type"] == "image" for b in message["content"]):
            problems.append(Problem(f"assistant message {i} contains an image", where,
                                    "images belong in user messages"))

    resolved, sizes, image_problems = check_record_images(record.get("images", []), base_dir, where, root, spec,
                                                              checked=checked)
    problems.extend(image_problems)
    placeholders = sum(b["type"] == "image" for m in messages for b in m["content"])
    if placeholders != len(resolved):
        problems.append(Problem(
            f"{placeholders} image placeholder(s) in the messages but {len(resolved)} path(s) in 'images'", where,
            'put one {"type": "image"} block (or "<image>" in a string) per image, in the order of "images"'))
    boxes, box_problems = parse_boxes(record.get("boxes"), sizes, where)
    problems.extend(box_problems)
    if problems:
        return None, problems
    return Sample(resolved, messages, where, boxes, leading_dropped=leading), []


def add_markers(messages: list[dict[str, Any]], images: Any) -> None:
    """The image marker rule every format shares (LLaVA, ShareGPT, LLaMA-Factory, Hugging Face datasets, TRL,
    ecomtune's JSONL), in place: a record naming more images than its messages hold placeholders (The Cauldron's
    subsets of LLaVA-OneVision and other LLaVA rows without `<image>`) gets the missing ones at the start of its
    first user turn, in order, where LLaVA's data has them. Placeholders a record writes stay where it writes them:
    LLaVA-NeXT's loader moves a lone `<image>` to the front of its turn, ecomtune keeps the row's own placement, in
    every format. More placeholders than images is left to the count check."""
    count = len(images) if isinstance(images, list) else 1 if isinstance(images, str) else 0
    present = sum(b["type"] == "image" for m in messages for b in m["content"])
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if count > present and first_user is not None:
        first_user["content"] = [{"type": "image"} for _ in range(count - present)] + first_user["content"]


def without_leading_answers(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The conversation without the assistant turns that come before its first user turn, and how many there were.

    An answer with no question before it has nothing to learn from: LLaVA-NeXT's loader drops such a turn, and a
    chat template renders it with the system prompt in front (Qwen's default system prompt would be learnt). Its
    text never holds an image (validation refuses images in assistant turns), so dropping it loses no image.
    The stage loader counts the conversations this changed and says so."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    leading = [i for i in range(first_user) if messages[i]["role"] == "assistant"
               and not any(b["type"] == "image" for b in messages[i]["content"])]  # one with an image is refused
    if not leading:
        return messages, 0
    return [m for i, m in enumerate(messages) if i not in leading], len(leading)


def family_problems(sample: Sample, spec: BackboneSpec) -> list[Problem]:
    """What a family cannot take, found before its weights are loaded: more images than it handles, or (for
    prefix-suffix families such as PaliGemma) anything but one prompt with images and one answer."""
    problems = []
    if spec.max_images is not None and len(sample.images) > spec.max_images:
        problems.append(Problem(
            f"{len(sample.images)} images, but {spec.title} takes at most {spec.max_images} per sample",
            sample.source, "set the stage's images.strategy to grid (stitch the views into one image) or primary "
            "(the first image only), or pick a multi-image backbone (`ecomtune backbones`)"))
    if spec.conversation == "prefix-suffix":
        roles = [m["role"] for m in sample.messages]
        if roles != ["user", "assistant"] or not sample.images:
            problems.append(Problem(
                f"{spec.title} learns one prompt with its image(s) and one answer; this record has turns {roles} and "
                f"{len(sample.images)} image(s)", sample.source,
                "split multi-turn conversations into one record per question, fold system text into the prompt"))
    return problems


def raise_if_any(problems: list[Problem], title: str) -> None:
    if problems:
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{title}: {len(problems)} problem(s) in the data{more}; nothing was trained",
                        problems[:MAX_REPORTED])


def presented_or_raise(samples: list[Sample], spec: BackboneSpec | None = None,
                       images: ImageSettings | None = None, title: str = "data") -> list[Sample]:
    """Samples as the multi-image strategy presents them (`images`), checked against the backbone family's
    limits (`spec`); one DataError lists every sample that does not fit."""
    presented, problems = presented_with_problems(samples, spec, images)
    raise_if_any(problems, title)
    return presented


def presented_with_problems(samples: list[Sample], spec: BackboneSpec | None = None,
                            images: ImageSettings | None = None) -> tuple[list[Sample], list[Problem]]:
    """`presented_or_raise` for a batch of a longer read: the samples that fit, and the problems of those that do
    not (the caller reports them with the rest)."""
    from ecomtune.data.images.strategies import apply_strategy

    presented: list[Sample] = []
    problems: list[Problem] = []
    for sample in samples:
        try:
            shown = apply_strategy(sample, images) if images is not None else sample
        except DataError as exc:  # a box the crop cannot use
            problems.extend(exc.problems or [Problem(exc.title, sample.source)])
            continue
        found = family_problems(shown, spec) if spec is not None else []
        problems.extend(found)
        if not found:
            presented.append(shown)
    return presented, problems
