"""Training data at the size users have: the synthetic catalog's records with every photo enlarged to a full-size
product shot (1200 x 1600 by default), shared by the real-size benchmarks (`planner_check.py`, `gpu_check.py`).

The records are the catalog's own instruction records (`ecomtune synth`'s layout), kept when they carry at most
`max_images` photos; the photos are the catalog's renders resized (bicubic) to the
requested size, so the processor sees an image of that size exactly as it would a seller's photo.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def full_size_data(work: Path, photo: tuple[int, int] = (1200, 1600), items: int = 8, max_images: int = 1,
                   seed: int = 0) -> Path:
    """Write the catalog under `work` with full-size photos; returns the JSONL of the kept instruction records."""
    from ecomtune.synth.catalog import write_catalog

    folder = Path(work) / f"catalog-{items}-{photo[0]}x{photo[1]}-s{seed}"
    out = folder / f"sft-max{max_images}.jsonl"
    if out.is_file():
        return out
    paths = write_catalog(folder, items, seed, general=1, overwrite=True)
    for path in sorted((folder / "images").glob("*.png")):
        with Image.open(path) as image:
            image.convert("RGB").resize(photo, Image.Resampling.BICUBIC).save(path)
    kept = [line for name in ("instruct", "compliance") for line in paths[name].read_text().splitlines()
            if line.strip() and len(json.loads(line).get("images", [])) in range(1, max_images + 1)]
    if not kept:
        raise SystemExit(f"no instruction record with 1 to {max_images} images among {items} items: raise --items")
    tmp = out.with_suffix(".partial")
    tmp.write_text("\n".join(kept) + "\n")
    tmp.rename(out)
    return out
