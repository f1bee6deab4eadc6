"""The run manifest: what was run, on what, with which versions, and what came out.

Written last and atomically (temp file + rename), so a run folder with a manifest whose status is
"complete" is a finished run; an interrupted run has no manifest (or the previous one).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(output: Path, **fields: Any) -> Path:
    payload = {"status": "complete", "finished_at": datetime.now(timezone.utc).isoformat(), "versions": versions()}
    payload.update(fields)
    path = Path(output) / MANIFEST
    write_json_atomic(path, payload)
    return path


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
