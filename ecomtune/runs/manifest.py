"""The run manifest: what was run, on what, with which versions, and what came out.

A stage writes `manifest.json` twice, each time atomically (temp file + rename): with status "running" before
the model loads (the resolved recipe, so `--resume` can check that the model's shape is unchanged), and with
status "complete" after every output is saved. A folder is a finished run only when its manifest says
"complete"; `finished_run` is the one reader that every consumer of a run (bench, predict, `--init-from`) uses.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ecomtune.errors import ConfigError
from ecomtune.runs.file_modes import write_text_atomic
from ecomtune.runs.files import MANIFEST

PACKAGES = ("ecomtune", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def fingerprint_file(path: Path, images: list[str] | None = None) -> str:
    """sha256 over the data file and every image it references, so a manifest pins the exact data."""
    digest = hashlib.sha256(Path(path).read_bytes())
    for image in sorted(set(images or [])):
        digest.update(Path(image).read_bytes())
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """`payload` as indented JSON, written atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_manifest(output: Path, status: str = "complete", **fields: Any) -> Path:
    """The run's manifest with `status` ("running" at the start, "complete" once every output is saved)."""
    stamp = "finished_at" if status == "complete" else "started_at"
    payload = {"status": status, stamp: datetime.now(timezone.utc).isoformat(), "versions": versions()}
    payload.update(fields)
    path = Path(output) / MANIFEST
    write_json_atomic(path, payload)
    return path


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of `run_dir` as written (any status), or None when there is none or it is unreadable."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


@dataclass(frozen=True)
class FinishedRun:
    """A run folder whose manifest says complete, with every output it names present."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage", ""))

    @property
    def base(self) -> str:
        """The backbone the run trained on (hub id or folder)."""
        return str(self.manifest["backbone"]["source"])

    @property
    def adapter(self) -> str | None:
        """The PEFT adapter file the run saved (LoRA stages), if any."""
        return self.manifest.get("outputs", {}).get("adapter")

    @property
    def projector(self) -> str | None:
        """The projector weights file the run saved (projector-only stages), if any."""
        return self.manifest.get("outputs", {}).get("projector")

    def stage_settings(self) -> dict[str, Any]:
        """The recipe section of the run's stage, as it trained."""
        return dict(self.manifest.get("recipe", {}).get(self.stage, {}))


def output_files(manifest: dict[str, Any]) -> list[str]:
    """The files a complete run of this manifest must hold (weights, never the processor's many files)."""
    outputs = manifest.get("outputs", {})
    return [name for key, name in outputs.items() if key in ("projector", "adapter")]


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` was written by an ecomtune stage (finished or not)."""
    found = read_manifest(folder)
    return found is not None and "stage" in found


def finished_run(folder: Path, purpose: str, stages: tuple[str, ...] | None = None) -> FinishedRun:
    """`folder` as a finished run, or a ConfigError that says what is missing. `purpose` names the option or
    command in the message (e.g. "--init-from"); `stages` limits which stages are accepted."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    what = f"{purpose} {folder}"
    if not folder.is_dir():
        raise ConfigError(f"{what}: no such folder", fix="point it at the --output of a finished ecomtune run")
    if manifest is None or "stage" not in manifest:
        raise ConfigError(f"{what} is not an ecomtune run: it has no readable {MANIFEST}",
                          fix="point it at the --output of a finished ecomtune run")
    if manifest.get("status") != "complete":
        raise ConfigError(f"{what} is an unfinished {manifest['stage']} run (manifest status "
                          f"{manifest.get('status')!r}): it was interrupted or is still training",
                          fix=f"finish it with `ecomtune {manifest['stage']} ... --output {folder} --resume`, or "
                          "use another run")
    if stages is not None and manifest["stage"] not in stages:
        raise ConfigError(f"{what} is a {manifest['stage']} run; {purpose} takes a {' or '.join(stages)} run",
                          fix=f"point {purpose} at the --output of a finished `ecomtune {stages[0]}`")
    missing = [name for name in output_files(manifest) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{what} is incomplete: {', '.join(missing)} is missing",
                          fix="the run's files were moved or deleted; train it again into a new --output")
    for name in output_files(manifest):
        problem = weights_problem(folder / name)
        if problem:
            raise ConfigError(f"{what}: {name} is damaged ({problem})",
                              fix="the file was cut short or overwritten; train the run again into a new --output")
    return FinishedRun(folder, manifest)


def weights_problem(path: Path) -> str | None:
    """None when a safetensors file is whole (its header parses and covers the file), else what is wrong. Reads
    the header only, not the weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            return None
    except (SafetensorError, OSError) as exc:
        return str(exc)
