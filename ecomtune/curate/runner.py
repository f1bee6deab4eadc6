"""`ecomtune curate`: listings -> clean -> caption -> verify -> build, into one output folder.

Output folder:
- `curate.json`: what made it (listings, models and their fingerprints, mode, generation settings); a later run
  resumes it only when these are the same;
- `steps/clean.jsonl`, `steps/captions.jsonl`, `steps/verdicts.jsonl`: one line per listing per step, appended
  as work finishes (synced); finished listings are skipped on a rerun, a torn last line is dropped;
- `cache.jsonl` (or `--cache FILE`, shareable between curations): every model answer by (model, prompt, images,
  settings);
- `instruct.jsonl` (for `ecomtune sft`), `captions.jsonl` (for `ecomtune align` / `mid`), `report.json`.
The folder may not be, hold, or sit inside the listings' folder, an image folder or a model folder. A non-empty
folder that is not this very curation is refused unless `overwrite`, which builds the new one aside and swaps it
in only when it is complete.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ecomtune.curate.build import caption_records, listing_instructions
from ecomtune.curate.clean import clean_aspects, vocabulary
from ecomtune.curate.curation_report import build_report
from ecomtune.curate.generation import GenerationCache, Generator, Request, make_generator
from ecomtune.curate.listings import Listing, read_listings
from ecomtune.curate.steps import StepLog, run_generation_step, step_key
from ecomtune.curate.truth import read_truth, score_against_truth
from ecomtune.curate.verify import MODES, caption_verdicts, verify_prompt, vqa_requests, vqa_verdicts
from ecomtune.data.jsonl import write_jsonl_atomic
from ecomtune.errors import ConfigError, Problem
from ecomtune.infer.client import is_endpoint
from ecomtune.runs.appendlog import recorded_settings, settings_differences
from ecomtune.runs.manifest import write_json_atomic
from ecomtune.runs.outputs import Guarded, check_location, check_writable, is_empty, locked, replacing_folder
from ecomtune.tasks import prompts

SETTINGS_FILE = "curate.json"
CLEAN_VERSION = "clean-1"  # bump when cleaning changes, so earlier clean lines are redone


@dataclass
class CurateOptions:
    """Everything a curation is made with besides its listings and output folder."""

    captioner: str | None = None
    verifier: str | None = None
    verify: str = "caption"
    caption_images: str = "primary"  # or "all"
    batch_size: int = 16
    caption_tokens: int = 96
    verify_tokens: int = 256  # caption mode: one JSON object for all aspects (vqa answers need only 8)
    max_options: int = 12
    seed: int = 0
    load_in_4bit: bool | None = None
    endpoint_model: str = "default"
    plain_http: bool = False
    skip_bad: bool = False
    limit: int | None = None
    truth: Path | None = None
    cache: Path | None = None
    overwrite: bool = False


def _check_options(options: CurateOptions) -> CurateOptions:
    """The options with defaults filled (the verifier is the captioner unless named), or a ConfigError."""
    if options.verify not in MODES:
        raise ConfigError(f"--verify {options.verify} is not known", fix="use caption (an LLM reads the caption) or "
                          "vqa (a VLM is asked about the image)")
    if options.caption_images not in ("primary", "all"):
        raise ConfigError(f"--caption-images {options.caption_images} is not known", fix="use primary or all")
    if options.verify == "caption" and not options.captioner:
        raise ConfigError("--verify caption reads captions, and no --captioner was given",
                          fix="pass --captioner MODEL (a VLM or an endpoint URL), or --verify vqa --verifier MODEL")
    verifier = options.verifier or options.captioner
    if not verifier:
        raise ConfigError("no --verifier (and no --captioner to stand in for it)", fix="pass --verifier MODEL")
    return CurateOptions(**{**asdict(options), "verifier": verifier})


def _default_truth(listings: Path) -> Path | None:
    """`<name>-truth.jsonl` beside the listings, as `ecomtune synth` writes it."""
    found = listings.with_name(f"{listings.stem}-truth.jsonl")
    return found if found.is_file() else None


def _guarded(listings: Path, read: list[Listing], options: CurateOptions) -> Guarded:
    """What the output may not touch: the listings and their folder, the truth file, the images and their
    folders, model folders."""
    files = [("listings file", listings)] + ([("truth file", options.truth)] if options.truth else [])
    folders = [("listings folder", listings.resolve().parent)]
    folders += [(f"{what} model folder", Path(spec)) for what, spec in (("captioner", options.captioner),
                                                                          ("verifier", options.verifier))
                if spec and not is_endpoint(spec) and Path(spec).is_dir()]
    return Guarded(files, folders).add_images(p for listing in read for p in listing.images)


def _settings(listings: Path, options: CurateOptions, captioner: Generator | None, verifier: Generator) -> dict:
    return {"listings": str(listings.resolve()), "captioner": options.captioner,
            "captioner_fingerprint": captioner.fingerprint if captioner else None, "verifier": options.verifier,
            "verifier_fingerprint": verifier.fingerprint, "verify": options.verify,
            "caption_images": options.caption_images, "caption_tokens": options.caption_tokens,
            "verify_tokens": options.verify_tokens, "max_options": options.max_options, "seed": options.seed}


def _refuse_other_curation(out: Path, settings: dict) -> None:
    """A non-empty `out` is resumed only when it is this very curation (same listings, models and settings)."""
    if is_empty(out):
        return
    before = recorded_settings(out / SETTINGS_FILE)
    specs = ("captioner", "verifier")  # the arguments as typed: their fingerprints say whether they are the same
    changes = ["(it holds no curate.json: it is not a curation)"] if before is None else settings_differences(
        {k: v for k, v in before.items() if k not in specs}, {k: v for k, v in settings.items() if k not in specs},
        shown_not_compared="", fingerprint="")
    if before is not None:
        changes = [f"{spec}: {before.get(spec)!r} -> {settings[spec]!r} (another model)" for spec in specs
                   if before.get(f"{spec}_fingerprint") != settings[f"{spec}_fingerprint"]] + changes
    if changes:
        raise ConfigError(f"--out {out} is not empty and holds another curation (or none)",
                          [Problem(change, str(out / SETTINGS_FILE)) for change in changes],
                          fix="pass the same listings and options to resume it, --overwrite to replace it, or a new "
                          "--out")


def run_curate(listings: Path, out: Path, options: CurateOptions, console: Console | None = None) -> dict[str, Any]:
    """Curate `listings` into `out` (see the module docstring); returns the report. Every input is checked
    before any model loads."""
    listings, out = Path(listings), Path(out)
    options = _check_options(options)
    options.truth = options.truth or _default_truth(listings)
    read = read_listings(listings, options.skip_bad, options.limit)
    truth = read_truth(options.truth) if options.truth else None
    make = {"load_in_4bit": options.load_in_4bit, "endpoint_model": options.endpoint_model,
            "allow_plain_http": options.plain_http}
    captioner = make_generator(options.captioner, "--captioner", **make) if options.captioner else None
    verifier = captioner if options.verifier == options.captioner and captioner else make_generator(
        options.verifier, "--verifier", needs_images=options.verify == "vqa", **make)
    guarded = _guarded(listings, read.listings, options)
    check_location(out, guarded, "--out")
    if options.cache:
        check_location(options.cache, guarded, "--cache")
    settings = _settings(listings, options, captioner, verifier)
    bad = [{"where": p.where, "what": p.what} for p in read.bad]
    # a shared cache has one writer at a time; its lock comes first, so a refusal leaves no trace in --out
    with locked(options.cache, enabled=options.cache is not None, what="--cache file"), \
            _output_folder(out, settings, guarded, options.overwrite) as folder:
        report = _curate(folder, out, read.listings, options, captioner, verifier, truth, settings, bad, console)
    return report


@contextmanager
def _output_folder(out: Path, settings: dict, guarded: Guarded, overwrite: bool) -> Iterator[Path]:
    """The folder to work in: `out` itself (new, or this curation resumed), or with `overwrite` a staging folder
    swapped in for `out` once the curation is complete."""
    if overwrite:
        with replacing_folder(out, True, guarded) as staging:
            write_json_atomic(staging / SETTINGS_FILE, settings)
            yield staging
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder", fix="give --out a folder path")
    with locked(out):
        _refuse_other_curation(out, settings)
        check_writable(out, option="--out")
        write_json_atomic(out / SETTINGS_FILE, settings)
        yield out


def _progress(console: Console | None) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True)


def _clean_step(listings: list[Listing], log: StepLog, progress: Progress) -> dict[str, Any]:
    bar = progress.add_task("clean", total=len(listings))
    started, todo = time.perf_counter(), []
    for listing in listings:
        key = step_key(listing, [Request(CLEAN_VERSION)])
        if log.finished(listing.id, key) is None:
            cleaned = clean_aspects(listing.aspects)
            todo.append({"id": listing.id, "key": key, "aspects": cleaned.aspects, "log": cleaned.log})
    with log.opened():
        for start in range(0, len(todo), 1000):
            log.add(todo[start:start + 1000])
            progress.advance(bar, len(todo[start:start + 1000]))
    progress.update(bar, completed=len(listings))
    return _rate({"model": None, "done": len(todo), "skipped": len(listings) - len(todo), "generated": 0,
                  "cached": 0, "seconds": time.perf_counter() - started})


def _rate(row: dict[str, Any]) -> dict[str, Any]:
    """The step's row with listings per second (of the listings it did now)."""
    return {**row, "listings_per_second": round(row["done"] / row["seconds"], 3) if row["seconds"] else None}


def _generation_step(name: str, listings: list[Listing], log: StepLog, cache: GenerationCache,
                     generator: Generator, requests_of, line_of, tokens: int, batch_size: int,
                     progress: Progress) -> dict[str, Any]:
    bar = progress.add_task(name, total=len(listings))
    started, generated, hits = time.perf_counter(), cache.generated, cache.hits
    done = run_generation_step(listings, log, cache, generator, requests_of, line_of, tokens, batch_size,
                               lambda n: progress.advance(bar, n))
    return _rate({"model": generator.spec, "done": done, "skipped": len(listings) - done,
                  "generated": cache.generated - generated, "cached": cache.hits - hits,
                  "seconds": time.perf_counter() - started})


def _caption_requests(listing: Listing, all_images: bool) -> list[Request]:
    return [Request(prompts.caption_prompt(), (image,)) for image in (listing.images if all_images
                                                                      else listing.images[:1])]


def _caption_line(listing: Listing, answers: list[str]) -> dict[str, Any]:
    text = answers[0] if len(answers) == 1 else "\n".join(f"Image {i}: {a}" for i, a in enumerate(answers, 1))
    return {"caption": text, "captions": answers}


def _curate(folder: Path, out: Path, listings: list[Listing], options: CurateOptions, captioner: Generator | None,
            verifier: Generator, truth: dict | None, settings: dict, bad: list[dict],
            console: Console | None) -> dict[str, Any]:
    steps = {name: StepLog(folder / "steps" / f"{name}.jsonl") for name in ("clean", "captions", "verdicts")}
    cache = GenerationCache(options.cache or folder / "cache.jsonl")
    throughput: dict[str, dict[str, Any]] = {}
    with _progress(console) as progress:
        throughput["clean"] = _clean_step(listings, steps["clean"], progress)
        cleaned = {listing.id: steps["clean"].lines[listing.id]["aspects"] for listing in listings}
        options_by_aspect = vocabulary(list(cleaned.values()), options.max_options)
        if captioner is not None:
            throughput["caption"] = _generation_step(
                "caption", listings, steps["captions"], cache, captioner,
                lambda listing: _caption_requests(listing, options.caption_images == "all"), _caption_line,
                options.caption_tokens, options.batch_size, progress)
        if options.verify == "caption":
            def requests_of(listing: Listing) -> list[Request]:
                aspects, caption = cleaned[listing.id], steps["captions"].lines[listing.id]["caption"]
                return [Request(verify_prompt(caption, aspects))] if aspects else []

            def line_of(listing: Listing, answers: list[str]) -> dict[str, Any]:
                return {"verdicts": caption_verdicts(cleaned[listing.id], answers[0]) if answers else [],
                        "raw": answers}
            tokens = options.verify_tokens
        else:
            def requests_of(listing: Listing) -> list[Request]:
                return vqa_requests(listing.images[0], cleaned[listing.id], options_by_aspect)

            def line_of(listing: Listing, answers: list[str]) -> dict[str, Any]:
                return {"verdicts": vqa_verdicts(cleaned[listing.id], options_by_aspect, answers), "raw": answers}
            tokens = 8
        throughput["verify"] = _generation_step("verify", listings, steps["verdicts"], cache, verifier, requests_of,
                                                line_of, tokens, options.batch_size, progress)
    return _build(folder, out, listings, steps, options_by_aspect, options, truth, settings, throughput, bad)


def _build(folder: Path, out: Path, listings: list[Listing], steps: dict[str, StepLog], options_by_aspect: dict,
           options: CurateOptions, truth: dict | None, settings: dict, throughput: dict, bad: list[dict]
           ) -> dict[str, Any]:
    """Step 4 and the report: the training files rewritten whole from the step results of these listings."""
    started = time.perf_counter()
    clean = {listing.id: steps["clean"].lines[listing.id] for listing in listings}
    verdicts = {listing.id: steps["verdicts"].lines[listing.id] for listing in listings}
    instruct = [record for listing in listings for record in
                listing_instructions(listing, verdicts[listing.id]["verdicts"], options_by_aspect, options.seed)]
    write_jsonl_atomic(folder / "instruct.jsonl", instruct)
    outputs = {"instruct": str(out / "instruct.jsonl"), "report": str(out / "report.json"), "captions": None}
    if options.captioner:
        captions = [record for listing in listings
                    for record in caption_records(listing, steps["captions"].lines[listing.id]["captions"])]
        write_jsonl_atomic(folder / "captions.jsonl", captions)
        outputs["captions"] = str(out / "captions.jsonl")
    throughput["build"] = _rate({"model": None, "done": len(listings), "skipped": 0, "generated": 0, "cached": 0,
                                 "seconds": time.perf_counter() - started})
    scored = score_against_truth(truth, clean, verdicts) if truth is not None else None
    report = build_report({**settings, "truth": str(options.truth) if options.truth else None},
                          list(clean.values()), list(verdicts.values()), throughput, bad, outputs, len(instruct),
                          scored)
    write_json_atomic(folder / "report.json", report)
    return report
