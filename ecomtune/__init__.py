"""ecomtune: adapt any Hugging Face vision-language model to e-commerce product understanding.

From Python, the command line's work as functions (`ecomtune.api`), loaded on first use so that `import ecomtune`
stays cheap (no torch, no transformers):

    import ecomtune

    recipe = ecomtune.load_recipe("tiny-qwen2-vl")
    ecomtune.run_stage("align", recipe, "runs/align", data="captions.jsonl")
"""

__version__ = "0.1.0"

# The names `ecomtune.api` offers here (PEP 562): resolved by `__getattr__` when first asked for.
_API = ("load_recipe", "Recipe", "run_stage", "run_bench", "export_run", "load_model", "generate",
       "EcomtuneError", "ConfigError", "DataError", "BackboneError", "ExportError")

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> object:
    if name in _API:
        from ecomtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'ecomtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*(name for name in globals() if not name.startswith("_")), *_API, "__version__"})
