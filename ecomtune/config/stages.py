"""The recipe's stages, declared: the one list of them (`STAGES`), which the command line, the recipe schema's
readers, `plan`, `profile` and training all read.

A stage is declared here by what can be known without torch: its name and title, its settings type and the recipe
field that holds them, which finished runs `--init-from` may name, and where its behaviour lives (`unit`, the
dotted path of a class of `ecomtune.train.stage_units`' kind: how the model is built, what trains per component,
what it saves). The behaviour stays in train, above config, so the CLI builds one command per stage without
loading a model library; it is found by its path (`ecomtune.train.stage_units.stage_unit`), never imported here.

A new stage is its settings class and its recipe field, named as the stage (`ecomtune.config.schema.Recipe`), one
`StageInfo` given to `register_stage`, and its unit class; nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecomtune.config.schema import AlignStage, MidStage, Recipe, SftStage, StageSettings
from ecomtune.errors import ConfigError
from ecomtune.registries import Registry


@dataclass(frozen=True)
class StageInfo:
    """One stage as data (see the module docstring)."""

    name: str
    title: str
    settings: type[StageSettings]
    unit: str  # "module.path:ClassName" of the stage's behaviour, resolved by train
    init_from: tuple[str, ...] = ()  # finished stages `--init-from` may name; () = starts from the backbone

    @property
    def field(self) -> str:
        """The recipe field that holds the stage's settings: its name, which `--set STAGE.KEY`, the manifest's
        recipe and `--resume`'s comparison key it by too."""
        return self.name

    def settings_of(self, recipe: Recipe) -> StageSettings:
        """The stage's section of `recipe`."""
        return getattr(recipe, self.field)


STAGES: Registry[StageInfo] = Registry("stage")


def register_stage(info: StageInfo) -> StageInfo:
    """Add a stage to `STAGES` (in the order stages run); a name is registered once."""
    return STAGES.register(info)


def stage_info(name: str) -> StageInfo:
    """The registered stage called `name`; a ConfigError naming the stages there are otherwise."""
    if name not in STAGES:
        raise ConfigError(f"{name} is not a stage", fix=f"use one of {', '.join(STAGES)}")
    return STAGES[name]


def stage_settings(recipe: Recipe, name: str) -> StageSettings:
    """The settings of stage `name` in `recipe`."""
    return stage_info(name).settings_of(recipe)


register_stage(StageInfo("align", "vision-language alignment: the projector only, on captions", AlignStage,
                         "ecomtune.train.stage_units:Align"))
register_stage(StageInfo("mid", "mid-stage training: re-captions and OCR-style data, QLoRA", MidStage,
                         "ecomtune.train.stage_units:Mid", ("align", "mid")))
register_stage(StageInfo("sft", "visual instruction tuning, QLoRA", SftStage, "ecomtune.train.stage_units:Sft",
                         ("align", "mid", "sft")))
