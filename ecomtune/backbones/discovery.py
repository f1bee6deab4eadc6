"""Finding a VLM's components in a model ecomtune has no spec for (the generic fallback).

transformers' vision-language models share a shape: a language model that owns the input
embeddings, a vision encoder with a convolutional patch embedding, and a connector between them.
Roles are found from that structure plus the names the library uses across families:
- language model: the parent of `get_input_embeddings()`;
- lm_head: `get_output_embeddings()`;
- vision tower: the shallowest module outside the language model named like a vision encoder
  (vision_tower, vision_model, visual, ...), else the outermost module holding a convolution;
- projector: the outermost modules outside the language model and outside any numbered layer stack whose
  name contains projector, merger, connector, aligner or projection; inside the vision tower only as its
  direct child (Qwen's `visual.merger`), so a patch embedding's projection never counts.
"""

from __future__ import annotations

from torch import nn

VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder", "vision", "vpm", "vit")
PROJECTOR_WORDS = ("projector", "merger", "connector", "aligner", "projection", "mlp1")


def _path_of(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((name for name, m in model.named_modules() if m is module), None)


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _inside(path: str, root: str) -> bool:
    return bool(root) and (path == root or path.startswith(root + "."))


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(_inside(p, other) and p != other for other in paths)]


def discover_roles(model: nn.Module) -> dict[str, str | tuple[str, ...] | None]:
    """Best guesses for each role's module path (None where nothing fits)."""
    embeddings = _path_of(model, model.get_input_embeddings())
    language_model = _parent(embeddings) if embeddings else None
    lm_head = _path_of(model, model.get_output_embeddings())
    modules = [(n, m) for n, m in model.named_modules() if n and not (language_model and _inside(n, language_model))]

    named = [n for n, _ in modules if n.rsplit(".", 1)[-1] in VISION_NAMES]
    if named:
        vision_tower = min(named, key=lambda n: (n.count("."), n))
    else:
        convolutions = [n for n, m in modules if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        holders = {_parent(n) for n in convolutions}
        vision_tower = min((_top_holder(h) for h in holders), key=lambda n: n.count("."), default=None)

    def looks_like_projector(name: str) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        if not any(word in leaf.split("_") or leaf == word for word in PROJECTOR_WORDS):
            return False
        if any(part.isdigit() for part in name.split(".")):  # a layer's own projection, inside a stack
            return False
        # inside the vision tower only as its direct child (Qwen's visual.merger), never deeper (a patch embedding)
        return not (vision_tower and _inside(name, vision_tower)) or _parent(name) == vision_tower

    projector = tuple(_outermost([n for n, _ in modules if looks_like_projector(n) and n != lm_head]))  # model order
    return {"vision_tower": vision_tower, "projector": projector or None, "language_model": language_model or None,
            "lm_head": lm_head}


def _top_holder(path: str) -> str:
    """The module one level below the model's own wrapper that holds `path` (`model.vision.embed` ->
    `model.vision`), so a convolution points at the whole encoder rather than its patch embedding."""
    parts = path.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else path


def linear_layer_names(model: nn.Module, root: str) -> list[str]:
    """Leaf names of the Linear layers inside `root`: LoRA targets for a model without a spec."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and _inside(n, root)})
