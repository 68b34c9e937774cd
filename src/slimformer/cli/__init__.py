"""The `slimformer` command. Each group of commands lives in its own module and registers on `app`.

User mistakes (`SlimformerError`) print one line to stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import SlimformerError

# Command modules register themselves on `app` when imported.
from . import compress, core, measure, parallel, serve, transcribe, translate  # noqa: E402,F401
from .app import app


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv` (default: sys.argv). Always ends in SystemExit.

    A bad option (click's UsageError) is a user mistake like any other: one line, exit code 2, not
    typer's multi-line panel, so scripts and fuzz tests see one contract.
    """
    try:
        from typer._click import exceptions as click  # typer vendors click since 0.2x
    except ImportError:  # older typer: plain click
        from click import exceptions as click

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        rc = app(args=argv, prog_name="slimformer", standalone_mode=False)
    except SlimformerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except click.NoArgsIsHelpError:
        sys.exit(2)  # the help text was already printed
    except click.UsageError as e:
        where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        print(f"error: {' '.join(e.format_message().split())}{where}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as e:
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # the user's environment: permission denied, disk full, not a directory
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, getattr(click, "Abort", typer.Abort), typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
