"""The canonical sample format and its loader.

One JSON object per line:
- `images`: list of image paths, relative to the JSONL file (absolute paths also work);
- and either `messages` (TRL conversational: `[{"role": "user"|"assistant"|"system", "content": ...}]`)
  or `prompt` + `completion` (strings, or lists of messages).

Content is a string or a list of blocks (`{"type": "image"}`, `{"type": "text", "text": ...}`). In
strings, `<image>` marks where an image goes (LLaVA style). Every record becomes a `Sample` whose
messages use blocks only, one image block per entry of `images`, in order.

Every record is checked before any model is loaded; all problems are reported together with the
file:line of the record and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecomtune.data.images import check_image
from ecomtune.data.jsonl import read_jsonl
from ecomtune.errors import DataError, Problem

IMAGE_MARKER = "<image>"
ROLES = {"system", "user", "assistant"}
MAX_REPORTED = 20

if TYPE_CHECKING:
    from ecomtune.backbones.spec import BackboneSpec


@dataclass
class Sample:
    """One training conversation with the absolute paths of its images."""

    images: list[str]
    messages: list[dict[str, Any]]
    source: str = ""  # file:line, for messages about this sample later on

    def to_row(self) -> dict[str, Any]:
        """A row for a `datasets.Dataset`: content blocks as JSON text, so that Arrow never merges the
        block schemas of different rows (it would add `text: None` keys to image blocks)."""
        return {"images": self.images, "messages": json.dumps(self.messages), "source": self.source}

    @staticmethod
    def from_row(row: dict[str, Any]) -> Sample:
        return Sample(list(row["images"]), json.loads(row["messages"]), row.get("source", ""))


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


def parse_record(record: Any, base_dir: Path, where: str) -> tuple[Sample | None, list[Problem]]:
    """Check one decoded JSON record; return the sample, or None and every problem with it."""
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
                              where, "see the data format in README.md")]
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

    images = record.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        problems.append(Problem("'images' must be a list of paths", where, 'e.g. "images": ["img/1.jpg"]'))
        images = []
    placeholders = sum(b["type"] == "image" for m in messages for b in m["content"])
    if placeholders != len(images):
        problems.append(Problem(
            f"{placeholders} image placeholder(s) in the messages but {len(images)} path(s) in 'images'", where,
            'put one {"type": "image"} block (or "<image>" in a string) per image, in the order of "images"'))
    resolved = []
    for image in images:
        path = Path(image) if Path(image).is_absolute() else base_dir / image
        error = check_image(path)
        if error:
            problems.append(Problem(f"image {image!r}: {error}", where, "fix or remove the file, or drop the record"))
        resolved.append(str(path.resolve()))
    if problems:
        return None, problems
    return Sample(resolved, messages, where), []


def family_problems(sample: Sample, spec: BackboneSpec) -> list[Problem]:
    """What a family cannot take, found before its weights are loaded: more images than it handles, or (for
    prefix-suffix families such as PaliGemma) anything but one prompt with images and one answer."""
    problems = []
    if spec.max_images is not None and len(sample.images) > spec.max_images:
        problems.append(Problem(
            f"{len(sample.images)} images, but {spec.title} takes at most {spec.max_images} per sample",
            sample.source, "keep fewer images per record (e.g. the primary image only), or stitch them into one "
            "grid image, or pick a multi-image backbone (`ecomtune backbones`)"))
    if spec.conversation == "prefix-suffix":
        roles = [m["role"] for m in sample.messages]
        if roles != ["user", "assistant"] or not sample.images:
            problems.append(Problem(
                f"{spec.title} learns one prompt with its image(s) and one answer; this record has turns {roles} and "
                f"{len(sample.images)} image(s)", sample.source,
                "split multi-turn conversations into one record per question, fold system text into the prompt"))
    return problems


def load_samples(path: Path, spec: BackboneSpec | None = None) -> list[Sample]:
    """Read and check a whole JSONL file (against the backbone family's limits when `spec` is given); raise
    one DataError listing every bad record."""
    from rich.progress import track

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {path}",
                        fix="check the path (relative paths start from the current folder)")
    records = list(read_jsonl(path))
    samples: list[Sample] = []
    problems: list[Problem] = []
    for where, record, problem in track(records, description=f"checking {path.name}", transient=True,
                                        disable=len(records) < 200):
        if problem is not None:
            problems.append(problem)
            continue
        sample, found = parse_record(record, path.parent, where)
        if sample is not None and spec is not None:
            found = family_problems(sample, spec)
            sample = None if found else sample
        problems.extend(found)
        if sample is not None:
            samples.append(sample)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f" (first {MAX_REPORTED} shown)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} problem(s) in the data{more}; nothing was trained", shown)
    if not samples:
        raise DataError(f"{path} has no records", fix="add at least one JSON line")
    return samples
