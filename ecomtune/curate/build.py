"""Step 4, build: training data from what verification kept.

The instruction families are the synthetic catalog's (`tasks.prompts.instruction_records`: choice and yes/no
VQA, Aspect Prediction with and without title and category, attribute extraction, a title with a required
keyword, a whole listing), made from the supported aspects only, so the model is tuned on the phrasing the
benchmark asks in and never on a seller's unverified claim. The captions become align / mid data. Image paths
are absolute: the output folder is never the listings' folder, and a relative path may not climb out of a data
file's folder. Both files are rewritten whole from the step results on every run, so they always match them.
"""

from __future__ import annotations

import random

from ecomtune.curate.listings import Listing
from ecomtune.tasks import prompts


def supported_aspects(verdicts: list[dict[str, str]]) -> dict[str, str]:
    return {v["aspect"]: v["value"] for v in verdicts if v["verdict"] == "supported"}


def listing_instructions(listing: Listing, verdicts: list[dict[str, str]], options: dict[str, list[str]],
                         seed: int) -> list[dict]:
    """The instruction records of one listing (none when no aspect was verified: its text alone is not checked
    against the picture)."""
    attributes = supported_aspects(verdicts)
    if not attributes:
        return []
    aspects = {name.title(): value for name, value in attributes.items()}
    rng = random.Random(f"{seed}:{listing.id}")
    return prompts.instruction_records(listing.images, attributes, aspects, listing.title, listing.category,
                                       options, [a for a in attributes if a in options], rng)


def caption_records(listing: Listing, captions: list[str]) -> list[dict]:
    """Align / mid samples: each captioned image (the primary, or all of them) with its own caption; empty
    captions are left out."""
    return [prompts.chat_record([image], prompts.caption_prompt(), caption)
            for image, caption in zip(listing.images, captions, strict=False) if caption.strip()]
