"""Backbones: per-family specs as data, the registry, tiny twins, and loading."""

from ecomtune.backbones.registry import FAMILIES, ResolvedBackbone, aliases, resolve_backbone, tiny_aliases
from ecomtune.backbones.spec import BackboneSpec, ResolvedRoles, lora_target_regex, resolve_roles

__all__ = [
    "FAMILIES",
    "BackboneSpec",
    "ResolvedBackbone",
    "ResolvedRoles",
    "aliases",
    "lora_target_regex",
    "resolve_backbone",
    "resolve_roles",
    "tiny_aliases",
]
