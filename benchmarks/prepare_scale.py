"""How long a stage's pre-flight takes on N distinct samples, and how much memory it needs.

    .venv/bin/python benchmarks/prepare_scale.py --samples 100000            # build the data once, then measure
    .venv/bin/python benchmarks/prepare_scale.py --samples 2000 --runs 1     # a quick look
    .venv/bin/python benchmarks/prepare_scale.py --samples 1000000 --share-images 100000   # memory at 1M

Builds N samples from the synthetic catalog, each with its own image files (distinct bytes, a spread of sizes),
in `--folder` (reused when it already holds N samples). Then, in a fresh process, `--runs` times against one new
cache folder:
- the sft stage's preparation (`prepare_stage`: every record read and checked, every image decoded, every sample
  measured exactly with the tiny Qwen2-VL's processor, packed rows planned when the stage packs);
- the rows a trainer reads (with `--set sft.packing=true`, the packed rows are written).
The first run finds nothing cached (only the tiny backbone, built beforehand), the later ones find everything.
Prints per run: wall time (the whole process, imports included), preparation time, the rows' time, samples/s, peak
RSS of the preparing process, the peak of its anonymous part (RssAnon, sampled every 50 ms: RSS without the pages of
memory-mapped files, which the kernel can drop and read again), and the peak RSS of its largest worker. Nothing here
passes or fails: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = [(112, 112), (96, 128), (160, 120), (128, 128), (200, 150), (84, 112), (140, 140), (120, 90)]
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-qwen2-vl.yaml"


def _write_images(job: tuple[str, list[tuple[str, str, int]]]) -> int:
    """Each (source image, target file, index): the source resized to one of SIZES with the index written into its
    first pixels, so every file has its own bytes."""
    from PIL import Image

    folder, todo = job
    for source, target, index in todo:
        with Image.open(Path(folder) / source) as image:
            picture = image.convert("RGB").resize(SIZES[index % len(SIZES)])
        for bit in range(24):
            picture.putpixel((bit, 0), (255, 255, 255) if index >> bit & 1 else (0, 0, 0))
        picture.save(Path(folder) / target, compress_level=1)
    return len(todo)


def _scaled(box: list[float], old: tuple[int, int], new: tuple[int, int]) -> list[int]:
    """A pixel box of an `old`-sized picture on the picture resized to `new`."""
    import math

    sx, sy = new[0] / old[0], new[1] / old[1]
    return [math.floor(box[0] * sx), math.floor(box[1] * sy), min(new[0], math.ceil(box[2] * sx)),
            min(new[1], math.ceil(box[3] * sy))]


def build(folder: Path, samples: int) -> Path:
    """`folder/data.jsonl` with `samples` records, each naming its own image files."""
    data = folder / "data.jsonl"
    if data.is_file() and sum(1 for _ in data.open()) == samples:
        return data
    catalog = folder / "catalog"
    if not catalog.is_dir():
        subprocess.run([sys.executable, "-m", "ecomtune", "synth", "--out", str(catalog), "--items", "200"],
                       check=True, capture_output=True)
    base = [json.loads(line) for line in (catalog / "instruct.jsonl").open()]
    (folder / "images").mkdir(exist_ok=True)
    sizes: dict[Path, tuple[int, int]] = {}

    def size_of(path: Path) -> tuple[int, int]:
        from PIL import Image

        if path not in sizes:
            with Image.open(path) as image:
                sizes[path] = image.size
        return sizes[path]

    records, work = [], []
    for index in range(samples):
        record = dict(base[index % len(base)])
        names = []
        for view, image in enumerate(record["images"]):
            name = f"images/s{index:07d}_{view}.png"
            work.append((f"catalog/{image}", name, index * 16 + view))
            names.append(name)
        record["images"] = names
        if record.get("boxes"):  # drawn on the catalog's pictures: scaled with them
            record["boxes"] = [[_scaled(box, size_of(catalog / image), SIZES[(index * 16 + view) % len(SIZES)])
                                for box in boxes] for view, (image, boxes) in enumerate(zip(
                                    base[index % len(base)]["images"], record["boxes"], strict=True))]
        records.append(record)
    from concurrent.futures import ProcessPoolExecutor

    chunks = [work[i:i + 2000] for i in range(0, len(work), 2000)]
    started = time.time()
    with ProcessPoolExecutor() as pool:
        done = 0
        for count in pool.map(_write_images, [(str(folder), chunk) for chunk in chunks]):
            done += count
            print(f"\r  writing images {done:,}/{len(work):,}", end="", file=sys.stderr)
    print(f"\r  wrote {len(work):,} images in {time.time() - started:.0f} s", file=sys.stderr)
    partial = data.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    partial.replace(data)
    return data


PREPARE = """
import json, resource, sys, threading, time

def anonymous_mib():  # resident memory that is not a mapped file's pages (those the kernel can drop and re-read)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024

peak_anonymous = [0.0]
def sample_memory():
    while True:
        peak_anonymous[0] = max(peak_anonymous[0], anonymous_mib())
        time.sleep(0.05)
threading.Thread(target=sample_memory, daemon=True).start()
from ecomtune.config.recipe_files import load_recipe
from ecomtune.data.batches.packing import pack_rows
from ecomtune.data.prepare.mapped_rows import mapped_dataset
from ecomtune.train.preparation import prepare_stage
recipe = load_recipe(sys.argv[1], [f"sft.data={sys.argv[2]}", *sys.argv[3:]])
started = time.perf_counter()
prepared = prepare_stage(recipe, recipe.sft, "sft")
seconds = time.perf_counter() - started
rows = prepared.samples.rows  # what an unpacked run trains on
if prepared.packs is not None:  # a packed run writes its rows first
    rows = mapped_dataset(pack_rows(prepared.samples, prepared.packs))
print(json.dumps({"seconds": seconds, "rows_seconds": time.perf_counter() - started - seconds,
                  "samples": len(prepared.samples), "rows": len(rows), "tokens": sum(prepared.lengths),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anonymous_mib": max(peak_anonymous[0], anonymous_mib()),
                  "worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build_sharing(folder: Path, samples: int, images_of: Path) -> Path:
    """`folder/data.jsonl` with `samples` records naming the image files of the `build` data in `images_of`, in
    turn; each record's question ends with its number, so every sample is distinct (and measured) all the same."""
    data = folder / "data.jsonl"
    if data.is_file() and sum(1 for _ in data.open()) == samples:
        return data
    source = images_of / "data.jsonl"
    base = [json.loads(line) for line in source.open()]
    partial = data.with_suffix(".partial")
    with partial.open("w") as out:
        for index in range(samples):
            record = json.loads(json.dumps(base[index % len(base)]))
            record["images"] = [str((images_of / image).resolve()) for image in record["images"]]
            record["messages"][0]["content"].append({"type": "text", "text": f" (sample {index})"})
            out.write(json.dumps(record) + "\n")
    partial.replace(data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=None, help="where the data is built (default: a folder in "
                        "the system's temporary folder, named after N)")
    parser.add_argument("--runs", type=int, default=2, help="preparations in a row against one cache (default 2)")
    parser.add_argument("--set", action="append", default=[], help="recipe override, e.g. sft.prepare_workers=1")
    parser.add_argument("--share-images", type=int, default=None, metavar="K", help="build K samples with their "
                        "own images as usual, then N samples that name those images in turn (each with its own "
                        "question): a million samples without writing 1.5 million image files")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"ecomtune-prepare-{args.samples}"
    if args.share_images:
        images = Path(tempfile.gettempdir()) / f"ecomtune-prepare-{args.share_images}"
        images.mkdir(parents=True, exist_ok=True)
        build(images, args.share_images)
        folder = args.folder or Path(tempfile.gettempdir()) / \
            f"ecomtune-prepare-{args.samples}-over-{args.share_images}"
    folder.mkdir(parents=True, exist_ok=True)
    data = build_sharing(folder, args.samples, images) if args.share_images else build(folder, args.samples)
    cache = Path(tempfile.mkdtemp(prefix="ecomtune-cache-"))
    env = {**os.environ, "ECOMTUNE_CACHE": str(cache)}
    # the tiny backbone is built into the cache folder first, so the first run times the data, not the build
    subprocess.run([sys.executable, "-c", "from ecomtune.backbones.registry import resolve_backbone; "
                    "resolve_backbone('tiny-qwen2-vl')"], env=env, check=True, capture_output=True)
    print(f"{args.samples:,} samples in {data}; cache {cache} (no image or sample in it at the first run)")
    print(f"{'run':>4} {'wall s':>8} {'prep s':>8} {'rows s':>7} {'samples/s':>10} {'peak RSS MiB':>13} "
          f"{'anonymous MiB':>14} {'worker RSS MiB':>15}")
    try:
        for run in range(1, args.runs + 1):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PREPARE, str(RECIPE), str(data), *args.set], env=env,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - started
            if out.returncode != 0:
                sys.exit(f"preparation failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{run:>4} {wall:>8.1f} {result['seconds']:>8.1f} {result['rows_seconds']:>7.1f} "
                  f"{result['samples'] / result['seconds']:>10,.0f} {result['rss_mib']:>13,.0f} "
                  f"{result['anonymous_mib']:>14,.0f} {result['worker_rss_mib']:>15,.0f}   "
                  f"({result['samples']:,} samples, {result['rows']:,} rows, {result['tokens']:,} tokens)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
