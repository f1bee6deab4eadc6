"""Deterministic synthetic catalog data with ground truth (`ecomtune synth`)."""

from ecomtune.synth.catalog import Product, make_products, render, write_catalog

__all__ = ["Product", "make_products", "render", "write_catalog"]
