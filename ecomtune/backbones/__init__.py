"""Backbones: per-family specs as data, the registry, tiny twins, role discovery, and loading."""

from ecomtune.backbones.families import FAMILIES
from ecomtune.backbones.registry import ResolvedBackbone, aliases, resolve_backbone, sized_aliases, tiny_aliases
from ecomtune.backbones.spec import GENERIC, BackboneSpec, ResolvedRoles, lora_target_regex, resolve_roles

__all__ = [
    "FAMILIES",
    "GENERIC",
    "BackboneSpec",
    "ResolvedBackbone",
    "ResolvedRoles",
    "aliases",
    "lora_target_regex",
    "resolve_backbone",
    "resolve_roles",
    "sized_aliases",
    "tiny_aliases",
]
