"""Checking an exported folder against the run it came from, on real images through the real processors.

The run is loaded the way `ecomtune bench` loads it (base + adapter, or base + aligned projector, on the 4-bit
base it trained on for a `dequantized` merge, on the full-precision base for a `pristine` one). The export is
loaded with plain transformers (and plain peft for the vLLM layout), nothing of ecomtune. For each sample the
run generates a few greedy tokens; both models then score that same sequence (teacher forcing), so every
position is compared on identical inputs and one early difference cannot snowball:
- the exported processor must produce the same input ids and pixels as the run's (files copied whole);
- the largest logit difference, relative to the run's largest logit, must stay within the rounding of the
  export dtype (`TOLERANCE`);
- greedy-token agreement (the share of positions whose top token is the same) is reported.
A continuation is cut at its first special or image-placeholder token (an untrained model may emit one), and the
prompt's last position is always scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecomtune.data.images.load import load_rgb
from ecomtune.data.schema import checked_image_files
from ecomtune.infer.generate import encode_turns, greedy_ids

if TYPE_CHECKING:
    from ecomtune.backbones.spec import BackboneSpec

# The largest logit difference allowed, as a share of the largest logit magnitude: what rounding every weight
# to the export dtype can cost over a forward pass (float32 differs only by the order of additions).
TOLERANCE = {"float32": 1e-3, "bfloat16": 6e-2, "float16": 1e-2}
NEW_TOKENS = 8


@dataclass(frozen=True)
class Verification:
    samples: int
    positions: int
    max_logit_diff: float
    logit_scale: float
    tolerance: float
    token_agreement: float
    same_inputs: bool
    differing_inputs: tuple[str, ...] = ()  # the processor outputs (input_ids, pixel_values, ...) that differ
    finite: bool = True  # no NaN or infinite logit in the export's output

    @property
    def relative_diff(self) -> float:
        return self.max_logit_diff / max(self.logit_scale, 1.0)

    @property
    def ok(self) -> bool:
        return self.same_inputs and self.finite and self.relative_diff <= self.tolerance

    def problems(self) -> list[str]:
        found = []
        if not self.same_inputs:
            found.append(f"the exported processor gives different inputs than the run's: "
                         f"{', '.join(self.differing_inputs) or 'shapes'} (processor or chat-template files)")
        if not self.finite:
            found.append("the exported model produces NaN or infinite logits (an overflow in this dtype)")
        if self.relative_diff > self.tolerance:
            found.append(f"max logit difference {self.max_logit_diff:.4g} is {self.relative_diff:.2%} of the "
                         f"largest logit (allowed: {self.tolerance:.2%}); greedy tokens agree at "
                         f"{self.token_agreement:.1%} of positions")
        return found

    def fix(self) -> str:
        if not self.same_inputs:
            return ("the run's processor settings did not survive save_pretrained (e.g. resolution defaults kept "
                    "outside preprocessor_config.json); report it with the keys above")
        if not self.finite:
            return "export in bfloat16 or float32 (--dtype), whose range does not overflow"
        return "export in float32 (--dtype float32) to rule out rounding; if it still differs, report it"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_diff": self.relative_diff, "ok": self.ok}


def verification_samples(count: int, images: list[Path] | None = None, spec: BackboneSpec | None = None
                         ) -> list[tuple[Any, str]]:
    """(image, prompt) pairs: the given images (checked as training images are, for the run's family `spec`),
    or rendered catalog products, each with a benchmark prompt."""
    from ecomtune.tasks import prompts

    questions = [prompts.caption_prompt(), prompts.extraction_prompt(), prompts.listing_prompt(),
                 prompts.choice_prompt("colour", ["red", "blue", "green", "black"])]
    if images:
        pictures = [load_rgb(path) for path in checked_image_files(images, "--image", spec)]
    else:
        from ecomtune.synth.items import make_item
        from ecomtune.synth.render import render_view

        items = [make_item(index, seed=0) for index in range(count)]
        pictures = [render_view(item, item.views[0], 0) for item in items]
    return [(picture, questions[index % len(questions)]) for index, picture in enumerate(pictures)]


def _encode(processor, image, prompt: str, device) -> dict[str, torch.Tensor]:
    """One image and its prompt as a user turn, encoded the way generation encodes it (`encode_turns`)."""
    inputs = encode_turns(processor, [prompt], [[image]], device)
    return {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}


def _extend(inputs: dict[str, torch.Tensor], sequence: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prompt's inputs with `sequence` (prompt + generated) as the text: per-token tensors grow with it (the
    attention mask with ones, token types with zeros, as for text)."""
    length = inputs["input_ids"].shape[1]
    grown = {"input_ids": sequence}
    extra = sequence.shape[1] - length
    for key, value in inputs.items():
        if key == "input_ids":
            continue
        if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length and extra > 0:
            fill = torch.ones if key == "attention_mask" else torch.zeros
            value = torch.cat([value, fill((1, extra, *value.shape[2:]), dtype=value.dtype, device=value.device)],
                              dim=1)
        grown[key] = value
    return grown


def _scored_logits(model, inputs: dict[str, torch.Tensor], start: int) -> torch.Tensor:
    """The logits of every position from the prompt's last token on: each predicts the next token."""
    with torch.no_grad():
        logits = model(**inputs).logits[0, start - 1:]
    return logits.float().cpu()


def _placeholder_ids(model, processor) -> set[int]:
    """Token ids a continuation must not hold when it is fed back: special tokens, and the image / video
    placeholders (the model would look for image features that are not there)."""
    config = model.config
    found = set(getattr(processor.tokenizer, "all_special_ids", []) or [])
    for holder in (config, getattr(config, "text_config", None)):
        for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int):
                found.add(value)
    return found


def _cut(sequence: torch.Tensor, start: int, stop: set[int]) -> torch.Tensor:
    """The sequence up to (without) the first generated token in `stop`."""
    for index in range(start, sequence.shape[1]):
        if int(sequence[0, index]) in stop:
            return sequence[:, :index]
    return sequence


def reference(model, processor, samples) -> list[dict[str, Any]]:
    """For each sample: the run's prompt inputs, its greedy continuation, and its logits along it."""
    device = next(model.parameters()).device
    stop = _placeholder_ids(model, processor)
    found = []
    for image, prompt in samples:
        inputs = _encode(processor, image, prompt, device)
        sequence = greedy_ids(model, inputs, NEW_TOKENS)
        start = inputs["input_ids"].shape[1]
        sequence = _cut(sequence, start, stop)
        logits = _scored_logits(model, _extend(inputs, sequence), start)
        found.append({"inputs": {k: v.cpu() for k, v in inputs.items()}, "sequence": sequence.cpu(),
                      "start": start, "logits": logits})
    return found


def compare(model, processor, samples, expected: list[dict[str, Any]], dtype: str) -> Verification:
    """Score the run's sequences with the exported model and compare (see the module docstring)."""
    device = next(model.parameters()).device
    differing: set[str] = set()
    worst, scale, agree, positions, finite = 0.0, 0.0, 0, 0, True
    for (image, prompt), ref in zip(samples, expected, strict=True):
        inputs = _encode(processor, image, prompt, device)
        for key, value in ref["inputs"].items():
            mine = inputs.get(key)
            if mine is None or mine.shape != value.shape or not torch.equal(mine.cpu().to(value.dtype), value):
                differing.add(key)
        if differing:
            continue
        logits = _scored_logits(model, _extend(inputs, ref["sequence"].to(device)), ref["start"])
        if logits.shape != ref["logits"].shape:
            differing.add("logits shape")
            continue
        finite = finite and bool(torch.isfinite(logits).all())
        worst = max(worst, float(torch.nan_to_num((logits - ref["logits"]).abs(), nan=float("inf")).max()))
        scale = max(scale, float(ref["logits"].abs().max()))
        agree += int((logits.argmax(-1) == ref["logits"].argmax(-1)).sum())
        positions += logits.shape[0]
    return Verification(len(samples), positions, worst, scale, TOLERANCE[dtype],
                        agree / positions if positions else 0.0, not differing, tuple(sorted(differing)), finite)


def load_exported(folder: Path, adapter: Path | None = None, dtype: str = "auto"):
    """The export as a user loads it: plain transformers (and plain peft for a separate adapter), in `dtype`
    ("auto": as saved)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"dtype": dtype}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForImageTextToText.from_pretrained(str(folder), **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), AutoProcessor.from_pretrained(str(folder))
