"""Data: the canonical sample schema (`schema`), the formats the world writes data in (`sources`), images and
multi-image strategies (`images`), preparing a stage's mixture (`prepare`) and training batches (`batches`)."""

from ecomtune.data.batches.collator import IGNORE_INDEX, VisionChatCollator, count_tokens, render_with_spans
from ecomtune.data.canonical_file import load_canonical_file
from ecomtune.data.schema import Sample, parse_record

__all__ = [
    "IGNORE_INDEX",
    "Sample",
    "VisionChatCollator",
    "count_tokens",
    "load_canonical_file",
    "parse_record",
    "render_with_spans",
]
