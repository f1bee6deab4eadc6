"""The backbone registry: every family ecomtune knows, and the lookup from a user's `--backbone` value.

A backbone is a `tiny-` alias (built locally), a registry alias (-> hub id), a local folder, or any
hub id. Lookups that match nothing list the valid aliases and the closest one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ecomtune.backbones.spec import BackboneSpec
from ecomtune.backbones.tiny import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, ensure_tiny
from ecomtune.errors import BackboneError, Problem

# transformers >= 5 nests the vision tower and language model under `model.`; 4.x kept them at the top.
QWEN2_VL = BackboneSpec(
    family="qwen2-vl",
    model_types=("qwen2_vl",),
    hub_ids={
        "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
        "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
        "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    },
    vision_tower=("model.visual", "visual"),
    projector=("model.visual.merger", "visual.merger"),
    language_model=("model.language_model", "model"),
    tiny_builder=build_tiny_qwen2_vl,
)

QWEN2_5_VL = BackboneSpec(
    family="qwen2.5-vl",
    model_types=("qwen2_5_vl",),
    hub_ids={
        "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
        "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    },
    vision_tower=("model.visual", "visual"),
    projector=("model.visual.merger", "visual.merger"),
    language_model=("model.language_model", "model"),
    tiny_builder=build_tiny_qwen2_5_vl,
)

FAMILIES: tuple[BackboneSpec, ...] = (QWEN2_VL, QWEN2_5_VL)


@dataclass(frozen=True)
class ResolvedBackbone:
    """A backbone ready to load: its spec and where its files come from."""

    spec: BackboneSpec
    source: str  # local folder or hub id, as given to from_pretrained
    is_local: bool
    revision: str | None = None


def aliases() -> dict[str, tuple[BackboneSpec, str | None]]:
    """Every alias -> (spec, hub id); tiny twins map to None."""
    table: dict[str, tuple[BackboneSpec, str | None]] = {}
    for spec in FAMILIES:
        for alias, hub_id in spec.hub_ids.items():
            table[alias] = (spec, hub_id)
        if spec.tiny_builder is not None:
            table[f"tiny-{spec.family}"] = (spec, None)
    return table


def tiny_aliases() -> list[str]:
    return [a for a, (_, hub) in aliases().items() if hub is None]


def spec_for_model_type(model_type: str) -> BackboneSpec | None:
    return next((s for s in FAMILIES if model_type in s.model_types), None)


def _unknown(name: str) -> BackboneError:
    names = list(aliases())
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return BackboneError(
        f"Unknown backbone '{name}'",
        fix=f"{hint}use an alias ({', '.join(names)}), a hub id such as Qwen/Qwen2-VL-2B-Instruct, "
        "or a local model folder; `ecomtune backbones` shows the registry",
    )


def resolve_backbone(name: str, seed: int = 0, revision: str | None = None) -> ResolvedBackbone:
    """Turn a `--backbone` value into a spec and a loadable source. Builds tiny twins on first use."""
    table = aliases()
    if name in table:
        spec, hub_id = table[name]
        if hub_id is None:
            assert spec.tiny_builder is not None
            folder = ensure_tiny(name, spec.tiny_builder, seed)
            return ResolvedBackbone(spec, str(folder), is_local=True)
        return ResolvedBackbone(spec, hub_id, is_local=False, revision=revision)
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise BackboneError(f"{path} is a folder but has no config.json",
                                fix="point --backbone at a folder written by save_pretrained")
        model_type = json.loads(config.read_text()).get("model_type", "")
        spec = spec_for_model_type(model_type)
        if spec is None:
            raise BackboneError(
                f"Model type '{model_type}' in {config} is not in the registry",
                [Problem(f"known model types: {sorted(t for s in FAMILIES for t in s.model_types)}", str(config))],
                fix="use a supported family, or add a BackboneSpec for it in ecomtune/backbones/registry.py",
            )
        return ResolvedBackbone(spec, str(path), is_local=True)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        lowered = name.lower()
        spec = next((s for s in FAMILIES if any(h.lower() == lowered for h in s.hub_ids.values())), None)
        spec = spec or next((s for s in FAMILIES if s.family.replace("-", "").replace(".", "")
                             in lowered.replace("-", "").replace(".", "")), None)
        if spec is None:
            raise BackboneError(
                f"Hub id '{name}' does not name a family ecomtune knows",
                fix=f"known families: {', '.join(s.family for s in FAMILIES)}; or download it and pass the folder",
            )
        return ResolvedBackbone(spec, name, is_local=False, revision=revision)
    if any(c in name for c in "/\\") or name.startswith((".", "~")):
        raise BackboneError(f"Backbone folder {name} does not exist", fix="check the path, or use an alias")
    raise _unknown(name)
