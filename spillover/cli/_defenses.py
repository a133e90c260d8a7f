"""`spillover defenses ...`: list the in-training defenses, show one's parameters, and the tools that
prepare a defense's inputs (persona vectors; SafeLoRA, safe-data selection and on-policy safety data)."""

from __future__ import annotations

import inspect

import typer

defenses_app = typer.Typer(help="In-training defenses against EM: list, show, and prepare their inputs.",
                           no_args_is_help=True)


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


@defenses_app.command("list")
def defenses_list() -> None:
    """Every registered defense with its one-line description."""
    from spillover.defenses import list_defenses

    for name, cls in list_defenses().items():
        typer.echo(f"{name:18} {_summary(cls)}")


def params_table(cls) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` for each parameter of a defense, from its Params model."""
    rows = []
    for key, field in cls.Params.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, field.description or ""))
    return rows


@defenses_app.command("show")
def defenses_show(name: str = typer.Argument(..., help="Defense name (see `spillover defenses list`).")) -> None:
    """A defense's description and every parameter with its default and description."""
    from spillover.defenses import get_defense

    cls = get_defense(name)
    typer.echo(f"{name}\n\n{inspect.getdoc(cls) or ''}\n\nparameters (YAML: defenses: [{{name: {name}, <param>: <value>}}]):")
    for key, default, text in params_table(cls):
        typer.echo(f"  {key:20} default {default}\n      {text}")
