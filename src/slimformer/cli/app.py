"""The typer application every command module registers on (kept apart from `cli/__init__`, which
imports those modules, so no module imports the package that imports it)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="slimformer",
    help="Make Transformer models smaller and faster, and prove it with honest measurements.\n\n"
         "Example: slimformer demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
