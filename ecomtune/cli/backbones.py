"""`ecomtune backbones`: the families ecomtune knows, or what it finds in one model."""

from __future__ import annotations

import typer

from ecomtune.cli.options import stdout
from ecomtune.library_output import quiet_libraries


def backbones(
    inspect: str = typer.Option(None, "--inspect", help="A model (alias, hub id or folder) to show the resolved "
                                "roles and parameter counts of; weights are not loaded."),
    vision_tower: str = typer.Option(None, "--vision-tower", help="With --inspect: the vision tower's module path."),
    projector: list[str] = typer.Option(None, "--projector", help="With --inspect: the projector's module path(s)."),
    language_model: str = typer.Option(None, "--language-model", help="With --inspect: the LM's module path."),
) -> None:
    """The capability matrix of every family, or (--inspect MODEL) what ecomtune finds in one model."""
    if inspect:
        quiet_libraries()
        from ecomtune.backbones.inspection import inspect_backbone, print_inspection
        from ecomtune.backbones.spec import RoleOverrides

        overrides = RoleOverrides(vision_tower, tuple(projector) if projector else None, language_model)
        print_inspection(inspect_backbone(inspect, overrides), stdout)
        return
    from ecomtune.backbones.inspection import print_capabilities

    print_capabilities(stdout)
