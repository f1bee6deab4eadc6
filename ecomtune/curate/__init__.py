"""`ecomtune curate`: the paper's visual verification, from raw seller listings to verified instructions.

listings -> clean (aspect names and values normalised, boilerplate dropped) -> caption (a VLM describes the
primary image) -> verify (each aspect supported, contradicted or not visible, from an LLM reading the caption or
a VLM asked about the image) -> build (instruction families and a captions file, canonical JSONL). Each step
appends its results as it goes and skips what an earlier run finished; generations are cached.
"""
