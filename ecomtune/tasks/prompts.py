"""Prompt wording for every task, in one place.

The synthetic catalog writes training instructions with these same builders, and the benchmark asks
with them, so a model is evaluated on the phrasing it was tuned on (as the paper's in-house
instructions mirror its benchmarks). Pure functions of their arguments.
"""

from __future__ import annotations

import json
import random

from ecomtune.tasks.image_turn import image_turn

COMPLIANCE_SECTIONS = ("identifiers", "attributes", "origin", "safety")


def aspect_prompt(aspects: list[str], title: str | None = None, category: str | None = None) -> str:
    """Aspect Prediction: values for the named aspects, as JSON. Context (title, category) is optional."""
    context = ""
    if title:
        context += f"Title: {title}\n"
    if category:
        context += f"Category: {category}\n"
    return f"{context}Give the value of each aspect as JSON: {', '.join(aspects)}."


def choice_prompt(attribute: str, options: list[str]) -> str:
    """Deep Fashion Understanding: pick one of the given options."""
    return f"What is the {attribute} of this item? Choose one of: {', '.join(options)}."


def extraction_prompt(limit: int | None = None) -> str:
    """Dynamic Attribute Extraction: every visually supported attribute, no fixed schema."""
    cap = f" List at most {limit}." if limit else ""
    return f"List all attributes you can see as compact JSON key-value pairs. Include only what the image shows.{cap}"


def compliance_prompt(image_count: int) -> str:
    """Multi-image Item Intelligence: the compliance JSON from all images of an item."""
    schema = "{" + ", ".join(f'"{section}": {{}}' for section in COMPLIANCE_SECTIONS) + "}"
    return (f"These {image_count} images show one item. Fill this JSON with what the images show, leaving out "
            f"anything not visible: {schema}.")


def yes_no_prompt(attribute: str, value: str) -> str:
    return f"Is the {attribute} of this item {value}? Answer yes or no."


def title_prompt(keyword: str | None = None) -> str:
    """Precise instruction following: a listing title, optionally with a required keyword."""
    return f"Write a listing title for this item that includes the word '{keyword}'." if keyword else \
        "Write a listing title for this item."


def listing_prompt() -> str:
    """Listings: a whole listing (title, category, aspects) from the images alone."""
    return "Write a listing for this item as JSON with its title, category and aspects."


def caption_prompt() -> str:
    return "Describe the product in the image."


def general_prompt(question: str, options: list[str]) -> str:
    """General-skill probe and general replay: a question on a generic scene (not a product), one of the options."""
    return f"{question} Choose one of: {', '.join(options)}."


def general_question(record: dict) -> str:
    """The question of a `general` bench record; records written before questions were stored ask about an
    attribute of the shapes."""
    return record.get("question") or f"Look at the shapes in the picture. What is their {record['attribute']}?"


def chat_record(images: list[str], question: str, answer: str, boxes: list | None = None) -> dict:
    """A canonical training record (docs/data-formats.md#the-canonical-jsonl): one user turn with its images,
    one answer. `boxes` (one list per image) where the text on the views matters."""
    record = {"images": images, "messages": [image_turn(len(images), question),
                                             {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    if boxes is not None:
        record["boxes"] = boxes
    return record


def compact(mapping: dict) -> str:
    """A JSON answer as the instructions and the benchmark write it."""
    return json.dumps(mapping, separators=(", ", ": "))


def instruction_records(images: list[str], attributes: dict[str, str], aspects: dict[str, str], title: str,
                        category: str, options: dict[str, tuple[str, ...] | list[str]], choice_attributes: list[str],
                        rng: random.Random, boxes: list | None = None) -> list[dict]:
    """The paper's single-item instruction families for one item, from what its pictures are known to show:
    choice and yes/no VQA, Aspect Prediction (with title and category or without), attribute extraction, a title
    with a required keyword (precise instruction following) and a whole listing from all `images`.

    `attributes`: the visually verified aspects (lower-case names); `aspects`: the Aspect Prediction targets;
    `options`: the values each attribute can take (for choice questions and "no" answers); `choice_attributes`:
    the attributes asked as choice questions. Shared by the synthetic catalog (which knows the truth) and
    curation (which verified it), so a curated set trains the phrasing the benchmark asks in. `rng` is drawn in
    a fixed order, so the catalog's bytes depend only on its seed."""
    primary = images[:1]
    records = [chat_record(primary, choice_prompt(attr, list(options[attr])), attributes[attr])
               for attr in choice_attributes if attr in attributes and attr in options]
    askable = [a for a in attributes if a in options and len(options[a]) > 1]
    if askable:
        attr = rng.choice(askable)
        asked = attributes[attr] if rng.random() < 0.5 else rng.choice(
            [o for o in options[attr] if o != attributes[attr]])
        records.append(chat_record(primary, yes_no_prompt(attr, asked), "yes" if asked == attributes[attr] else "no"))
    if aspects:
        with_context = rng.random() < 0.5
        records.append(chat_record(primary, aspect_prompt(list(aspects), title if with_context else None,
                                                          category if with_context else None), compact(aspects)))
    if attributes:
        records.append(chat_record(primary, extraction_prompt(), compact(attributes)))
    if title.split():
        keyword = rng.choice(title.split())
        records.append(chat_record(primary, title_prompt(keyword), title))
    listing = {"title": title, "category": category, "aspects": aspects}
    records.append(chat_record(images, listing_prompt(), compact(listing), boxes))
    return records
