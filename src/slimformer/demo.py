"""`slimformer demo`: the whole story on the built-in default in a few minutes.

Train (or reuse) the digits ViT, apply each demo recipe, and put accuracy, latency, throughput and
size side by side, all measured in this run on this machine.
"""

from __future__ import annotations

import logging

import torch
from rich.console import Console
from rich.table import Table

from . import io
from .api import compress_model
from .bench.inputs import example_inputs
from .bench.timing import measure
from .errors import SlimformerError
from .paths import cache_dir
from .tasks import digits

log = logging.getLogger(__name__)

# (label, recipe). Recipes are inline specs; each must be valid for the digits ViT.
DEMO_VARIANTS: list[tuple[str, str | None]] = [
    ("fp32 baseline", None),
]
DEMO_MODEL_VERSION = "digits-vit-v1"
BATCH = 64


def cached_digits_model(retrain: bool = False):
    """The digits ViT from the cache, trained once (~1-2 min on 2 cores) if missing or unreadable."""
    path = cache_dir() / DEMO_MODEL_VERSION
    if not retrain and path.exists():
        try:
            return io.load_model_dir(path), path
        except SlimformerError as e:
            log.warning("cached model unusable (%s); training again", e)
    return digits.train(out=path), path


def size_mb(model) -> float:
    tensors, _ = io.plain_state_dict(model)
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def run_demo(threads: int = 2, retrain: bool = False, variants=None) -> list[dict]:
    console = Console()
    torch.set_num_threads(threads)
    base, path = cached_digits_model(retrain)
    console.print(f"digits ViT: {path}")
    args, _ = example_inputs(base, batch=BATCH)
    rows = []
    for label, recipe in variants or DEMO_VARIANTS:
        model = io.load_model_dir(path)
        if recipe:
            model, _ = compress_model(model, recipe, task="digits")
        metrics = digits.evaluate(model)
        timing = measure(lambda m=model: m(*args), batch=BATCH, repeats=30)
        rows.append({"name": label, "recipe": recipe or "", "accuracy": metrics["accuracy"],
                     "p50_ms": timing.p50_ms, "p99_ms": timing.p99_ms, "throughput": timing.throughput,
                     "size_mb": size_mb(model)})
    base_tp = rows[0]["throughput"]
    table = Table(title=f"digits ViT, batch {BATCH}, {threads} threads, {torch.__version__}")
    for col in ("variant", "recipe", "top-1", "p50 ms", "p99 ms", "images/s", "speedup", "size MB"):
        table.add_column(col, justify="right" if col not in ("variant", "recipe") else "left")
    for r in rows:
        table.add_row(r["name"], r["recipe"], f"{r['accuracy'] * 100:.1f}%", f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['throughput']:.0f}", f"{r['throughput'] / base_tp:.2f}x",
                      f"{r['size_mb']:.2f}")
    console.print(table)
    return rows
