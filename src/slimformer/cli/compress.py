"""`slimformer compress`: apply a recipe to a model and save the result as a model dir."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .app import app

console = Console()


@app.command()
def compress(
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name (vit-tiny, minilm, ...)"),
    recipe: str = typer.Option(..., "--recipe", help="YAML file or inline spec, e.g. prune-heads:ratio=0.25+int8"),
    out: Path = typer.Option(..., "--out", help="model dir to write (atomically: nothing is left on failure)"),
    task: str = typer.Option(None, "--task", help="task for calibration / distillation data "
                                                  "(default: the one the model dir records)"),
) -> None:
    """Compress a model with a recipe and save it; the dir reloads with its compression (pruned shapes,
    factorized layers, int8 weights) and records the recipe and its size in slimformer.json.

    Example: slimformer compress runs/digits --recipe recipes/digits-prune-distill.yaml --out runs/digits-small
    """
    from .. import api, io

    api.compress(model, recipe, out=out, task=task)
    path = out
    meta = io.read_meta(path)
    steps = " + ".join(entry["step"] for entry in meta["recipe"]) or "(none)"
    console.print(f"saved {path}  recipe: {steps}  size {meta['size_mb']:.2f} MB  "
                  f"parameters {meta['n_params']:,}")
