"""`slimformer demo`: the whole story on the built-in default in a few minutes.

Train (or reuse) the digits ViT, take the best recipe `slimformer search` found for it, and measure
it beside the fp32 model and ONNX Runtime's dynamic int8 (the tool people already reach for): top-1
on the real held-out digits, latency, throughput, peak memory and size, all measured in this run on
this machine with the same harness as `slimformer bench` (interleaved timing, fresh-process memory).

The recipe comes from the last `slimformer search` of this very model when one is cached (the demo
writes it there with `--search`); otherwise from DEMO_RECIPE, which is what that search returned on
the development machine (benchmarks/results/search_digits.md). Only the recipe is fixed, never a number.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from . import io
from .api import compress_model
from .bench.inputs import example_inputs
from .errors import SlimformerError
from .paths import cache_dir
from .tasks import digits

log = logging.getLogger(__name__)

DEMO_MODEL_VERSION = "digits-vit-v1"
DEMO_RECIPE = "prune-layers:ratio=0.5+distill+int8:activations=static,compile=true"
BATCH = 64
MAX_DROP = 0.01


def cached_digits_model(retrain: bool = False):
    """The digits ViT from the cache, trained once (~1-2 min on 2 cores) if missing or unreadable."""
    path = cache_dir() / DEMO_MODEL_VERSION
    if not retrain and path.exists():
        try:
            return io.load_model_dir(path), path
        except SlimformerError as e:
            log.warning("cached model unusable (%s); training again", e)
    return digits.train(out=path), path


def search_dir(model_path: Path) -> Path:
    return cache_dir() / f"demo-search-{io.read_meta(model_path)['sha256'][:12]}"


def best_recipe(model_path: Path, run_search: bool, threads: int, console: Console) -> tuple[str, str]:
    """(recipe, where it came from): a cached search of this model, a fresh search, or DEMO_RECIPE."""
    from .compress.recipe import parse_recipe

    out = search_dir(model_path)
    if run_search:
        from .search import SearchConfig
        from .search import run_search as search

        search(SearchConfig(model=str(model_path), task="digits", max_drop=MAX_DROP, out=out, batch=BATCH,
                            threads=threads, baselines=[]), console=console)
    best = out / "best_recipe.yaml"
    if best.exists():
        try:
            steps = parse_recipe(str(best))
            return "+".join(str(s) for s in steps), f"search cached in {out}"
        except SlimformerError as e:
            log.warning("ignoring cached search result (%s)", e)
    return DEMO_RECIPE, "DEMO_RECIPE (the search's pick on the development machine; --search to redo it here)"


def run_demo(threads: int = 2, retrain: bool = False, search: bool = False) -> list[dict]:
    """Measure fp32, the best recipe and ONNX Runtime int8 on the digits ViT; print and report them."""
    from .api import write_results
    from .bench.runner import baseline_variants, measure_variants, tokens_of, torch_variant
    from .report import write_report

    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=160)
    torch.set_num_threads(threads)
    base, path = cached_digits_model(retrain)
    recipe, source = best_recipe(path, search, threads, console)
    console.print(f"digits ViT: {path}\nrecipe: [bold]{recipe}[/] ({source})")
    inputs = example_inputs(base, batch=BATCH)
    seq = tokens_of(base, 0)
    with tempfile.TemporaryDirectory(prefix="slimformer-demo-") as tmp:
        work = Path(tmp)
        variants = [torch_variant("fp32", base, "", [], inputs, work, BATCH, seq, digits.evaluate(base))]
        small, record = compress_model(io.load_model_dir(path), recipe, task="digits")
        variants.append(torch_variant("best recipe", small, recipe, record, inputs, work, BATCH, seq,
                                      digits.evaluate(small)))
        try:
            variants += baseline_variants(base, ["ort"], inputs, work, threads, "digits")
        except (ImportError, SlimformerError) as e:
            log.warning("ONNX Runtime baseline unavailable: %s", e)
        console.print("measuring (interleaved timing, same inputs)...")
        # peak memory skipped here: a fresh process per variant would recompile a compiled recipe and
        # push the demo past its few minutes (`slimformer bench` measures it)
        rows = measure_variants(variants, BATCH, seq, threads, "digits", rounds=15, memory=False)
    out = cache_dir() / "demo-report"
    write_results(out / "results.json", rows)
    paths = write_report([out / "results.json"], out, best=recipe, title="slimformer demo: digits ViT")
    print_table(console, rows, threads)
    console.print(f"report: {paths['html']}")
    return rows


def print_table(console: Console, rows: list[dict], threads: int) -> None:
    base = rows[0]
    table = Table(title=f"digits ViT, batch {BATCH}, {threads} threads, torch {torch.__version__} "
                        "(all measured now, same inputs)")
    for col in ("variant", "recipe", "top-1", "p50 ms", "p99 ms", "images/s", "speedup", "peak MB", "size MB"):
        table.add_column(col, justify="left" if col in ("variant", "recipe") else "right")
    for r in rows:
        acc = r["metrics"].get("accuracy")
        table.add_row(r["name"], r["recipe"] or "-", "-" if acc is None else f"{acc * 100:.1f}%",
                      f"{r['latency_ms']['p50']:.2f}", f"{r['latency_ms']['p99']:.2f}", f"{r['throughput']:.0f}",
                      f"{base['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x",
                      "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}",
                      "-" if r["size_mb"] is None else f"{r['size_mb']:.2f}")
    console.print(table)
