"""Measurement commands: bench, report, search."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .app import app

console = Console()
if not console.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
    console = Console(width=200)

BASELINES = ("ort", "openvino", "torchao")


def parse_baselines(text: str | None) -> list[str]:
    from ..errors import SlimformerError

    names = [b.strip() for b in (text or "").split(",") if b.strip()]
    bad = [b for b in names if b not in BASELINES]
    if bad:
        raise SlimformerError(f"--baselines: unknown {', '.join(map(repr, bad))}; choose from {', '.join(BASELINES)}")
    return names


@app.command()
def bench(
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name"),
    recipe: list[str] = typer.Option(None, "--recipe", help="a recipe to measure beside fp32 (repeatable)"),
    batch: int = typer.Option(8, "--batch", help="items per forward call"),
    seq: int = typer.Option(128, "--seq", help="sequence length for text models (ViTs use their patch count)"),
    threads: int = typer.Option(2, "--threads", help="intra-op threads for every variant"),
    baselines: str = typer.Option(None, "--baselines", help="external baselines: ort,openvino,torchao"),
    task: str = typer.Option(None, "--task", help="also compute this task's metric for every variant"),
    rounds: int = typer.Option(10, "--rounds", help="interleaved timing rounds (2 calls per variant each)"),
    json_out: Path = typer.Option(..., "--json", help="write {env, results} here"),
) -> None:
    """Time fp32, each recipe and each baseline in one run (interleaved, same inputs), with peak memory
    in a fresh process per variant, size on disk and parameters.

    Example: slimformer bench minilm --recipe int8 --recipe prune-ffn:ratio=0.25+int8 --baselines ort --json b.json
    """
    from .. import api
    from ..bench.runner import bench as run_bench
    from ..report.tables import Run, headers, primary_metric, rows

    results = run_bench(model, list(recipe or []), batch=batch, seq_len=seq, threads=threads,
                        baselines=parse_baselines(baselines), task=task, rounds=rounds,
                        progress=lambda msg: console.log(msg))
    api.write_results(json_out, results)
    _print_table(Run(str(json_out), {}, results), primary_metric(results), headers, rows)


def _print_table(run, metric, headers, rows) -> None:
    from rich.table import Table

    table = Table(title=run.source)
    for h in headers(metric):
        table.add_column(h, justify="left" if h in ("variant", "recipe", "kind", "dtype") else "right")
    for row in rows(run, metric):
        table.add_row(*row)
    console.print(table)


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="one or more RESULTS.json from bench / evaluate / search"),
    out: Path = typer.Option(..., "--out", help="dir for report.md, report.html and pareto.png"),
) -> None:
    """Turn results files into report.md, a self-contained report.html and pareto.png.

    Example: slimformer report bench.json --out report/
    """
    from ..report import write_report

    paths = write_report(list(results), out)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command()
def search(
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name"),
    task: str = typer.Option(..., "--task", help="task whose metric bounds the search (digits, embedding, ...)"),
    max_drop: float = typer.Option(0.01, "--max-drop", help="largest allowed metric drop vs fp32 (0.01 = 1 pt)"),
    out: Path = typer.Option(..., "--out", help="dir for results.json, front.json, best_recipe.yaml, report"),
    batch: int = typer.Option(None, "--batch", help="batch for latency (default: 64 images / 32 sentences)"),
    seq: int = typer.Option(128, "--seq", help="sequence length for text models"),
    threads: int = typer.Option(2, "--threads", help="intra-op threads"),
    baselines: str = typer.Option("ort,torchao", "--baselines", help="baselines in the final measurement"),
    distill: bool = typer.Option(True, "--distill/--no-distill", help="try distillation to rescue pruning"),
    budget: float = typer.Option(420, "--budget", help="soft time budget for exploring, in seconds (0 = none); "
                                 "the final measurement comes on top (~5 min for MiniLM on 2 cores)"),
    steps: str = typer.Option(None, "--steps", help="only these step families, comma-separated (default: all)"),
) -> None:
    """Search recipes across families (token merging/pruning, head/FFN pruning, low rank, int8/bf16,
    distillation) for the fastest one within the metric budget; cached, so a rerun resumes.

    Example: slimformer search minilm --task embedding --max-drop 0.01 --out runs/search-minilm
    """
    from ..search import SearchConfig, run_search

    cfg = SearchConfig(model=model, task=task, max_drop=max_drop, out=out, batch=batch, seq_len=seq,
                       threads=threads, baselines=parse_baselines(baselines), distill=distill,
                       budget_s=budget or None, steps=[s.strip() for s in steps.split(",")] if steps else None)
    outcome = run_search(cfg, console=console)
    console.print(f"best recipe: {outcome.best or 'fp32'}  ({outcome.summary})")
    console.print(f"wrote {out}/best_recipe.yaml, {out}/results.json, {out}/report.html")
