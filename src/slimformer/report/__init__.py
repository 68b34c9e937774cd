"""Reports: markdown tables, self-contained HTML, Pareto plots (`slimformer report`)."""

from __future__ import annotations

from pathlib import Path

from .. import atomic
from .html import render
from .plots import pareto_png
from .tables import Run, load_runs, markdown, primary_metric


def write_report(results: list[str | Path] | list[Run], out: str | Path, best: str | None = None,
                 title: str = "slimformer report", floor: float | None = None) -> dict[str, Path]:
    """Write `report.md`, `report.html` and `pareto.png` into `out` from results files (or loaded runs).

    best: the recipe a search picked, shown at the top (None: no search, nothing shown).
    floor: the lowest metric the search accepted, drawn on the plot.
    """
    runs = results if results and isinstance(results[0], Run) else load_runs(list(results))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metric = primary_metric([r for run in runs for r in run.results])
    png = pareto_png(runs, metric, floor)
    paths = {"png": out / "pareto.png", "md": out / "report.md", "html": out / "report.html"}
    atomic.write_bytes(paths["png"], png)
    atomic.write_text(paths["md"], markdown(runs, metric, best))
    atomic.write_text(paths["html"], render(runs, metric, png, best, title))
    return paths
