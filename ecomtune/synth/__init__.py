"""Deterministic synthetic catalog with ground truth (`ecomtune synth`): items, rendering, data files."""

from ecomtune.synth.catalog import write_catalog
from ecomtune.synth.items import Item, make_item, make_items
from ecomtune.synth.render import render_scene, render_view

__all__ = ["Item", "make_item", "make_items", "render_scene", "render_view", "write_catalog"]
