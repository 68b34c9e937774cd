"""`pareto.png`: task metric vs latency, the Pareto front highlighted, baselines marked.

Each run gets its own colour; within a run, slimformer variants are circles (front ones filled and
joined by a line), the fp32 model a black star, and external baselines (ONNX Runtime, torchao)
labelled squares, so a reader sees at once whether a recipe beats the tools people already use.
Without a task metric the y axis falls back to size on disk (lower is better).
"""

from __future__ import annotations

import io as _io

from .tables import Run, pareto_front

BASELINE_MARKERS = ("s", "D", "^", "v", "P", "X")


def pareto_png(runs: list[Run], metric: str | None, floor: float | None = None) -> bytes:
    """The plot as PNG bytes. floor: the lowest metric a search accepted (drawn as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5.5), dpi=110)
    ylabel = metric or "size on disk (MB, lower is better)"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def y_of(r: dict) -> float | None:
        if metric:
            return r["metrics"].get(metric)
        return None if r["size_mb"] is None else -r["size_mb"]  # negate: front code maximises y

    for k, run in enumerate(runs):
        color = colors[k % len(colors)]
        tag = f" ({run.source})" if len(runs) > 1 else ""
        pts = [(r, r["latency_ms"]["p50"], y_of(r)) for r in run.results]
        pts = [p for p in pts if p[2] is not None]
        ours = [p for p in pts if p[0].get("kind", "slimformer") == "slimformer"]
        front = [ours[i] for i in pareto_front([(p[1], p[2]) for p in ours])]
        sign = 1 if metric else -1
        ax.scatter([p[1] for p in ours], [sign * p[2] for p in ours], s=30, facecolors="none", edgecolors=color,
                   label=f"recipes{tag}", zorder=3)
        if front:
            ax.plot([p[1] for p in front], [sign * p[2] for p in front], "-o", color=color, lw=2, ms=7,
                    label=f"Pareto front{tag}", zorder=4)
            # front points sorted by latency: labels alternate above and below so neighbours do not overlap
            for k, p in enumerate(sorted(front, key=lambda p: p[1])):
                label = p[0]["recipe"] or "fp32"
                ax.annotate(label, (p[1], sign * p[2]), textcoords="offset points",
                            xytext=(6, 6 if k % 2 == 0 else -12), fontsize=7, color=color)
        for p in ours:
            if p[0]["recipe"] == "":
                ax.scatter([p[1]], [sign * p[2]], marker="*", s=220, color="black", zorder=5,
                           label=f"fp32 baseline{tag}")
        baselines = [r for r in run.results if r.get("kind") == "baseline"]
        for j, r in enumerate(baselines):
            x, y = r["latency_ms"]["p50"], y_of(r)
            marker = BASELINE_MARKERS[j % len(BASELINE_MARKERS)]
            if y is None:  # latency only (metric not computed): a labelled vertical line, not a made-up point
                ax.axvline(x, ls=":", color="dimgray", lw=1.5, label=f"baseline: {r['name']} (latency only){tag}")
                ax.annotate(r["name"], (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8,
                            color="dimgray", xytext=(3, 0), textcoords="offset points")
                continue
            ax.scatter([x], [sign * y], marker=marker, s=90, color="dimgray", edgecolors="black", zorder=5,
                       label=f"baseline: {r['name']}{tag}")
            ax.annotate(r["name"], (x, sign * y), textcoords="offset points", xytext=(6, -12), fontsize=8,
                        color="dimgray")
    if floor is not None and metric:
        ax.axhline(floor, ls="--", color="firebrick", lw=1, label=f"budget: {metric} >= {floor:.4f}")
    ax.set_xlabel("p50 latency per batch (ms, lower is better)")
    ax.set_ylabel(ylabel)
    ax.set_title("metric vs latency: Pareto front and baselines")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
