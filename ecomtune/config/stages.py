"""The recipe's stages as the command line and the recipe schema know them: name, what it does, which finished
runs it may start from. Cheap to import (no torch): the CLI builds one command per entry. How each stage builds
and saves its model is the train registry's (`ecomtune.train.stages.STAGES`), keyed by the same names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str
    title: str
    init_from: tuple[str, ...] = ()  # finished stages `--init-from` may name; () = starts from the backbone


STAGE_INFO: dict[str, StageInfo] = {
    "align": StageInfo("align", "vision-language alignment: the projector only, on captions"),
    "mid": StageInfo("mid", "mid-stage training: re-captions and OCR-style data, QLoRA", ("align", "mid")),
    "sft": StageInfo("sft", "visual instruction tuning, QLoRA", ("align", "mid", "sft")),
}
