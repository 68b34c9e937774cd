"""Result files in, comparable rows out: loading, validation, Pareto front and the markdown report.

Speedups are ratios to the fp32 variant *of the same run* (same file): numbers from different runs
were taken under different machine conditions and are never divided by each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SlimformerError

REQUIRED = ("name", "recipe", "metrics", "latency_ms", "throughput", "peak_mem_mb", "size_mb", "batch", "seq_len",
            "threads", "dtype")


@dataclass
class Run:
    """One results file: its environment and its result records."""

    source: str
    env: dict[str, Any]
    results: list[dict[str, Any]]

    @property
    def reference(self) -> dict[str, Any] | None:
        """The fp32 variant of this run (what speedups are relative to)."""
        for r in self.results:
            if r.get("recipe", "") == "" and r.get("kind", "slimformer") == "slimformer":
                return r
        return None


def validate(data: Any, source: str) -> Run:
    """Check a results document against the contract; name the first thing that is missing."""
    if not isinstance(data, dict) or not isinstance(data.get("env"), dict) or not isinstance(data.get("results"),
                                                                                              list):
        raise SlimformerError(f"{source}: not a results file (expected {{'env': {{...}}, 'results': [...]}})")
    for i, r in enumerate(data["results"]):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise SlimformerError(f"{source}: result {i} ({r.get('name', '?')!r}) lacks {', '.join(missing)}")
        if not isinstance(r["latency_ms"], dict) or not {"p50", "p99"} <= set(r["latency_ms"]):
            raise SlimformerError(f"{source}: result {i} latency_ms must hold p50 and p99")
    return Run(source, data["env"], data["results"])


def load_runs(paths: list[str | Path]) -> list[Run]:
    if not paths:
        raise SlimformerError("give at least one RESULTS.json")
    runs = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise SlimformerError(f"{path}: no such results file")
        try:
            runs.append(validate(json.loads(path.read_text()), str(path)))
        except json.JSONDecodeError as e:
            raise SlimformerError(f"{path}: not valid JSON ({e})") from e
    return runs


def primary_metric(results: list[dict[str, Any]]) -> str | None:
    """The task's headline metric (accuracy, cosine, bleu) if the results carry one, else None."""
    from ..tasks import TASKS

    for r in results:
        task = r.get("task")
        if task in TASKS and TASKS[task].metric in r["metrics"]:
            return TASKS[task].metric
    keys = [k for r in results for k in r["metrics"]]
    return keys[0] if keys else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated: no other point is at least as fast AND at least as good, and
    strictly better in one. points: (latency, quality), lower latency and higher quality are better.
    Returned in order of increasing latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = ("variant", "recipe", "kind", "dtype", "METRIC", "p50 ms", "p99 ms", "items/s", "speedup",
           "peak MB", "size MB")


def rows(run: Run, metric: str | None) -> list[list[str]]:
    """Table rows of one run, fastest first, speedup vs that run's fp32."""
    ref = run.reference
    out = []
    for r in sorted(run.results, key=lambda r: r["latency_ms"]["p50"]):
        speed = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"] if ref else None
        m = r["metrics"].get(metric) if metric else None
        out.append([r["name"], r["recipe"] or "-", r.get("kind", "slimformer"), r["dtype"],
                    fmt(m, ".4f"), fmt(r["latency_ms"]["p50"]), fmt(r["latency_ms"]["p99"]),
                    fmt(r["throughput"], ".1f"), fmt(speed, ".2f") + ("x" if speed else ""),
                    fmt(r["peak_mem_mb"], ".1f"), fmt(r["size_mb"], ".2f")])
    return out


def headers(metric: str | None) -> list[str]:
    return [metric or "metric" if c == "METRIC" else c for c in COLUMNS]


def env_line(run: Run) -> str:
    """The run's machine (CPU model, cores and the features that decide which recipe is fast) and shapes."""
    from ..bench.env import features_line

    e, first = run.env, run.results[0] if run.results else {}
    versions = e.get("versions", {})
    return (f"{features_line(e)}; {first.get('threads', '?')} threads, "
            f"batch {first.get('batch', '?')}, seq {first.get('seq_len', '?')}, torch {versions.get('torch', '?')}"
            + "".join(f", {pkg} {versions[pkg]}" for pkg in ("onnxruntime", "openvino", "nncf") if pkg in versions)
            + (f", GPU {e['gpu']}" if e.get("gpu") else ""))


def markdown(runs: list[Run], metric: str | None, best: str | None = None, png: str | None = "pareto.png") -> str:
    lines = ["# slimformer report", ""]
    if best is not None:
        lines += [f"Best recipe: `{best or 'fp32 (nothing beat it within the budget)'}`", ""]
    for run in runs:
        lines += [f"## {run.source}", "", env_line(run), ""]
        head = headers(metric)
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows(run, metric)]
        lines.append("")
    if png:
        lines += [f"![pareto]({png})", ""]
    lines += ["Speedup: fp32 p50 / variant p50, both from the same run (variants timed interleaved). "
              "Peak MB: peak RSS above the interpreter baseline, each variant alone in a fresh process.", ""]
    return "\n".join(lines)
