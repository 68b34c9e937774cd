"""The `slimformer` command. Each group of commands lives in its own module and registers on `app`.

User mistakes (`SlimformerError`) print one line to stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import SlimformerError

app = typer.Typer(
    name="slimformer",
    help="Make Transformer models smaller and faster, and prove it with honest measurements.\n\n"
         "Example: slimformer demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Command modules register themselves on `app` when imported.
from . import compress, core, measure, parallel, translate  # noqa: E402,F401


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        app()
    except SlimformerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
