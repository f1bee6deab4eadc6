"""The commands that make data: `ecomtune synth` (a synthetic catalog), `ecomtune curate` (listings verified
against their images) and `ecomtune crop` (items with a crop per boxed image)."""

from __future__ import annotations

from pathlib import Path

import typer

from ecomtune.cli.options import OverwriteOpt, console, stdout
from ecomtune.library_output import quiet_libraries


def crop(items: Path = typer.Argument(..., help="Items in the canonical JSONL format (several images each)."),
         out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for images/ and items.jsonl."),
         boxes: Path = typer.Option(None, "--boxes", help='JSON {"image path": [[x0, y0, x1, y1], ...]}, each key '
                                    "an image path as the items file writes it (or absolute); default: each "
                                    "record's own 'boxes' (one list per image)."),
         margin: float = typer.Option(0.1, min=0.0, help="Grow each box by this fraction of its size."),
         max_images: int = typer.Option(10, "--max-images", min=1, help="Images per item after cropping."),
         threshold: int = typer.Option(6, "--dedupe-threshold", min=0, help="pHash bits under which two images "
                                       "count as duplicates."),
         backbone: str = typer.Option("tiny-qwen2-vl", "--backbone", "-b",
                                      help="Whose processor counts the visual tokens."),
         grounding: str = typer.Option(None, "--grounding", help="A grounding VLM (alias, folder or run) asked "
                                       "for the boxes of every image, instead of --boxes or the records' own."),
         grounding_coords: str = typer.Option("auto", "--grounding-coords", help="What the grounding model's boxes "
                                              "are in: auto (by family), pixels, norm1000 or resized."),
         overwrite: bool = OverwriteOpt) -> None:
    """Originals plus one square crop per boxed image, de-duplicated and capped; prints images and visual
    tokens per item before and after."""
    quiet_libraries()
    from ecomtune.data.crop_command import run_crop
    from ecomtune.data.images.item_crops import print_crop_summary

    summaries = run_crop(items, out_dir, boxes, margin, max_images, threshold, backbone, grounding, grounding_coords,
                         overwrite, find_boxes=_grounding_boxes, say=stdout.print,
                         warn=lambda text: console.print(text, style="bold yellow", markup=False, highlight=False))
    print_crop_summary(summaries, out_dir, stdout)


def _grounding_boxes(model: str, image_paths: list[str], coords: str):
    """The grounding model's boxes; its inference stack is imported only when --grounding asks for it."""
    from ecomtune.bench.grounding import grounding_boxes

    return grounding_boxes(model, image_paths, coords)


def curate(
    listings: Path = typer.Argument(..., help="Raw listings, JSONL or CSV: id, title, category, aspects, images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the steps, instruct.jsonl, captions.jsonl and "
                             "report.json (resumed when it holds this same curation)."),
    captioner: str = typer.Option(None, "--captioner", help="VLM that describes each primary image: alias, hub id, "
                                  "folder, run folder, or an OpenAI-compatible endpoint URL."),
    verifier: str = typer.Option(None, "--verifier", help="Model that gives the verdicts (default: the captioner): "
                                 "an LLM reading captions, or with --verify vqa a VLM looking at the image."),
    verify: str = typer.Option("caption", "--verify", help="caption (an LLM reads the caption, as in the paper) or "
                               "vqa (the VLM is asked about the image)."),
    caption_images: str = typer.Option("primary", "--caption-images", help="primary, or all (one caption each)."),
    truth: Path = typer.Option(None, "--truth", help="Known truth to score against (default: NAME-truth.jsonl "
                               "beside the listings, as `ecomtune synth` writes it)."),
    cache: Path = typer.Option(None, "--cache", help="Answer cache JSONL shared between curations (default: "
                               "OUT/cache.jsonl)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Questions per generation batch."),
    limit: int = typer.Option(None, "--limit", min=1, help="The first N listings only."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out bad rows (listed in the report) instead of "
                                  "stopping."),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="Model name sent to an endpoint URL."),
    plain_http: bool = typer.Option(False, "--plain-http", help="Allow sending ECOMTUNE_API_KEY over plain http "
                                    "to another machine."),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit/--no-4bit", help="Base precision (as bench)."),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Visual verification: clean seller aspects, caption, keep only what the image supports, build instructions."""
    quiet_libraries()
    from ecomtune.curate.curation_report import render_report
    from ecomtune.curate.runner import CurateOptions, run_curate

    options = CurateOptions(captioner, verifier, verify, caption_images, batch_size, seed=0, load_in_4bit=load_in_4bit,
                            endpoint_model=endpoint_model, plain_http=plain_http, skip_bad=skip_bad, limit=limit,
                            truth=truth, cache=cache, overwrite=overwrite)
    render_report(run_curate(listings, out, options, console), stdout)


def synth(out_dir: Path = typer.Option(..., "--out", help="Folder to write images and JSONL files to."),
          items: int = typer.Option(48, "--items", min=1, help="Number of products."),
          seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
          general: int = typer.Option(180, "--general", min=6, help="General-world probe items (bench/general.jsonl)."),
          general_train: int = typer.Option(1200, "--general-train", min=0,
                                            help="General-world training items for replay (general-train.jsonl)."),
          overwrite: bool = OverwriteOpt) -> None:
    """Generate a deterministic synthetic catalog (rendered products + captions + instructions)."""
    from ecomtune.synth.catalog import write_catalog

    written = write_catalog(out_dir, items, seed, general=general, general_train=general_train, overwrite=overwrite)
    for name, path in written.items():
        stdout.print(f"{name}: {path}")
