"""The backbone registry: the lookup from a user's `--backbone` value to a family spec and a source.

A backbone is a `tiny-` alias (built locally; `tiny-qwen2-vl-general` is also trained on the general world), a
registry alias (-> hub id), a `sized:` alias (the alias's checkpoint at its published dimensions with random
weights, built locally), a local folder, or any hub id. A folder or hub id whose `model_type` is in no family gets
the generic spec: its roles are found by inspection when the model loads. Lookups that match nothing list the
valid aliases and the closest one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.pretrained import PRETRAINED_ALIASES, ensure_pretrained
from ecomtune.backbones.spec import GENERIC, BackboneSpec
from ecomtune.backbones.tiny import ensure_tiny
from ecomtune.errors import BackboneError


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
        if spec.tiny is not None:
            table[f"tiny-{spec.family}"] = (spec, None)
    for alias, twin_alias in PRETRAINED_ALIASES.items():
        table[alias] = (table[twin_alias][0], None)
    return table


def tiny_aliases() -> list[str]:
    return [a for a, (_, hub) in aliases().items() if hub is None]


def sized_aliases() -> list[str]:
    """`sized:<alias>` for every registry alias whose checkpoint's dimensions are on record (`published.py`)."""
    from ecomtune.backbones.sized import SIZED_PREFIX, checkpoint_of

    return [SIZED_PREFIX + a for a, (_, hub) in aliases().items() if checkpoint_of(hub) is not None]


def _resolve_sized(name: str) -> ResolvedBackbone:
    from ecomtune.backbones.sized import SIZED_PREFIX, checkpoint_of, ensure_sized

    alias = name.removeprefix(SIZED_PREFIX)
    spec, hub_id = aliases().get(alias, (None, None))
    checkpoint = checkpoint_of(hub_id)
    if spec is None or checkpoint is None or spec.tiny is None:
        names = sized_aliases()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        raise BackboneError(f"No real-size twin '{name}': " + (f"'{alias}' is not a registry alias" if spec is None
                            else f"the dimensions of {hub_id} are not on record"),
                            fix=(f"did you mean '{close[0]}'? " if close else "") + f"use one of {', '.join(names)}")
    folder = ensure_sized(alias, checkpoint, spec.tiny)
    return ResolvedBackbone(spec, str(folder), is_local=True)


def spec_for_model_type(model_type: str, source: str = "") -> BackboneSpec:
    """The family of a config's `model_type`, or the generic spec for any other vision-language model type that
    transformers' image-text-to-text auto class knows. A text-only (or any other) model is refused here, before
    anything tries to load a processor it does not have."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    spec = next((s for s in FAMILIES if model_type in s.model_types), None)
    if spec is not None:
        return spec
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise BackboneError(f"'{source or model_type}' is a '{model_type or 'unknown'}' model, not a vision-language "
                            "model: AutoModelForImageTextToText has no class for it",
                            fix="use a vision-language model (`ecomtune backbones` lists the families; any model "
                            "type transformers loads with AutoModelForImageTextToText works)")
    return GENERIC


def _unknown(name: str) -> BackboneError:
    names = list(aliases())
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return BackboneError(
        f"Unknown backbone '{name}'",
        fix=f"{hint}use an alias ({', '.join(names)}), a real-size twin (sized:<alias>), a hub id such as "
        "Qwen/Qwen2-VL-2B-Instruct, or a local model folder; `ecomtune backbones` shows the registry",
    )


def _hub_model_type(repo_id: str, revision: str | None) -> str:
    """`model_type` from a hub repository's config.json (cached or downloaded: a few kB)."""
    from transformers import AutoConfig

    from ecomtune.backbones.model_loading import check_available

    check_available(ResolvedBackbone(GENERIC, repo_id, is_local=False, revision=revision))
    try:
        return AutoConfig.from_pretrained(repo_id, revision=revision).model_type
    except (OSError, ValueError) as exc:
        raise BackboneError(f"Cannot read the config of '{repo_id}': {str(exc).splitlines()[0]}",
                            fix="check the hub id (owner/name) and revision, or pass a local folder") from None


def _tell_building(message: str) -> None:
    """A build of minutes is announced, so a first run that pauses says why."""
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{message}[/dim]")


def resolve_backbone(name: str, seed: int = 0, revision: str | None = None) -> ResolvedBackbone:
    """Turn a `--backbone` value into a spec and a loadable source. Builds tiny twins on first use."""
    from ecomtune.backbones.sized import SIZED_PREFIX

    if name.startswith(SIZED_PREFIX):
        return _resolve_sized(name)
    table = aliases()
    if name in PRETRAINED_ALIASES:
        twin_alias = PRETRAINED_ALIASES[name]
        spec = table[twin_alias][0]
        assert spec.tiny is not None
        folder = ensure_pretrained(name, twin_alias, spec.tiny, seed, on_build=_tell_building)
        return ResolvedBackbone(spec, str(folder), is_local=True)
    if name in table:
        spec, hub_id = table[name]
        if hub_id is None:
            assert spec.tiny is not None
            folder = ensure_tiny(name, spec.tiny, seed)
            return ResolvedBackbone(spec, str(folder), is_local=True)
        return ResolvedBackbone(spec, hub_id, is_local=False, revision=revision)
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise BackboneError(f"{path} is a folder but has no config.json",
                                fix="point --backbone at a folder written by save_pretrained")
        try:
            model_type = json.loads(config.read_text()).get("model_type", "")
        except json.JSONDecodeError as exc:
            raise BackboneError(f"{config} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return ResolvedBackbone(spec_for_model_type(model_type, str(path)), str(path), is_local=True)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        known = next((s for s in FAMILIES if name.lower() in (h.lower() for h in s.hub_ids.values())), None)
        spec = known or spec_for_model_type(_hub_model_type(name, revision), name)
        return ResolvedBackbone(spec, name, is_local=False, revision=revision)
    if any(c in name for c in "/\\") or name.startswith((".", "~")):
        raise BackboneError(f"Backbone folder {name} does not exist", fix="check the path, or use an alias")
    raise _unknown(name)
