"""Prompt wording for every task, in one place.

The synthetic catalog writes training instructions with these same builders, and the benchmark asks
with them, so a model is evaluated on the phrasing it was tuned on (as the paper's in-house
instructions mirror its benchmarks). Pure functions of their arguments.
"""

from __future__ import annotations

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


def general_prompt(attribute: str, options: list[str]) -> str:
    """General-skill probe: generic scenes, not products."""
    return f"Look at the shapes in the picture. What is their {attribute}? Choose one of: {', '.join(options)}."
