"""`slimformer demo`: the whole story on the built-in default in a few minutes.

Train (or reuse) the digits ViT, take the recipe picked for it, and measure it beside the fp32 model,
ONNX Runtime and OpenVINO (the tools people already reach for): top-1 on the real held-out digits,
latency, throughput, peak memory and size, all measured in this run on this machine with the same
harness as `slimformer bench` (interleaved timing, fresh-process memory).

Nothing is claimed that was not measured here. The candidates, in order: the last `slimformer search`
of this very model when one is cached (`--search` runs it), then the `fast` preset for digits on this
CPU kind (compress/presets.py: measured on a CPU of this kind, or a labelled rule), then plain static
and dynamic int8. Each is compressed and evaluated here; the first within the accuracy budget is
timed, the ones that missed it are listed with their drop. If none passes, or the pick is not faster
than fp32 on this machine, its row says so instead of "within budget".
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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
FALLBACKS = ("int8:activations=static,compile=true", "int8:compile=true")
BATCH = 64
MAX_DROP = 0.01
PICK = "pick"  # the name of the chosen recipe's row


@dataclass
class Candidate:
    recipe: str
    source: str
    accuracy: float | None = None  # measured here

    def drop(self, base: float) -> float:
        return base - (self.accuracy if self.accuracy is not None else float("-inf"))


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


def candidates(model_path: Path, run_search: bool, threads: int, console: Console) -> list[Candidate]:
    """The recipes to try, best first: a cached (or fresh) search of this model, the `fast` preset for
    digits on this CPU, then plain int8. Duplicates removed."""
    from .compress.presets import resolve
    from .compress.recipe import parse_recipe

    out = search_dir(model_path)
    if run_search:
        from .search import SearchConfig
        from .search import run_search as search

        search(SearchConfig(model=str(model_path), task="digits", max_drop=MAX_DROP, out=out, batch=BATCH,
                            threads=threads, baselines=[]), console=console)
    found = []
    best = out / "best_recipe.yaml"
    if best.exists():
        try:
            found.append(Candidate("+".join(str(s) for s in parse_recipe(str(best))), f"search cached in {out}"))
        except SlimformerError as e:
            log.warning("ignoring cached search result (%s)", e)
    fast = resolve("fast", "digits")
    found.append(Candidate(fast.recipe, f"preset fast for this CPU ({fast.measured_on})"))
    found += [Candidate(r, "fallback") for r in FALLBACKS]
    unique: dict[str, Candidate] = {}
    for c in found:
        unique.setdefault(c.recipe, c)
    return list(unique.values())


def choose(found: list[Candidate], accuracy_of: Callable[[str], float], base: float,
           max_drop: float = MAX_DROP) -> tuple[Candidate, list[Candidate]]:
    """(the first candidate within the budget, the ones tried before it). Each is measured by
    `accuracy_of` on this machine; none within the budget: the smallest drop, rejected ones all listed."""
    tried = []
    for c in found:
        c.accuracy = accuracy_of(c.recipe)
        if c.drop(base) <= max_drop:
            return c, tried
        tried.append(c)
    best = min(tried, key=lambda c: c.drop(base))
    return best, [c for c in tried if c is not best]


def verdict(base: dict, row: dict, max_drop: float = MAX_DROP) -> str:
    """What the measured numbers of `row` say against fp32 (`base`): budget met, and faster or not.
    Only ever "within budget" when this run measured both."""
    acc, acc0 = row["metrics"].get("accuracy"), base["metrics"].get("accuracy")
    if acc is None or acc0 is None:
        return "accuracy not measured"
    drop_pt = (acc0 - acc) * 100
    speed = base["latency_ms"]["p50"] / row["latency_ms"]["p50"]
    budget = (f"within budget ({-drop_pt:+.2f} pt, budget -{max_drop * 100:.1f})" if acc0 - acc <= max_drop
              else f"OVER BUDGET ({-drop_pt:+.2f} pt, budget -{max_drop * 100:.1f})")
    return f"{budget}, {'faster' if speed > 1 else 'NOT faster'} than fp32 here ({speed:.2f}x)"


def quiet_torchao() -> None:
    """At import torchao registers Enums as pytree constants, which torch logs as deprecated, and warns
    that its CUDA-only kernels (mxfp8, cutlass) do not load on this CPU build: library business, none of
    it about the numbers the demo prints. Our own warnings still show."""
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_demo(threads: int = 2, retrain: bool = False, search: bool = False) -> list[dict]:
    """Measure fp32, the recipe picked here, ONNX Runtime and OpenVINO on the digits ViT; print, report."""
    from .api import write_results
    from .bench.runner import baseline_variants, measure_variants, tokens_of, torch_variant
    from .bench.timing import settle
    from .report import write_report

    quiet_torchao()
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=180)
    torch.set_num_threads(threads)
    base, path = cached_digits_model(retrain)
    base_acc = digits.evaluate(base)["accuracy"]
    compressed: dict[str, tuple] = {}

    def accuracy_of(recipe: str) -> float:
        compressed[recipe] = compress_model(io.load_model_dir(path), recipe, task="digits")
        return digits.evaluate(compressed[recipe][0])["accuracy"]

    console.print(f"digits ViT: {path} (top-1 {base_acc * 100:.2f} %); accuracy budget -{MAX_DROP * 100:.1f} pt")
    pick, rejected = choose(candidates(path, search, threads, console), accuracy_of, base_acc)
    for c in rejected:
        console.print(f"  rejected here: {c.recipe} ({c.source}): {-c.drop(base_acc) * 100:+.2f} pt")
    console.print(f"recipe: [bold]{pick.recipe}[/] ({pick.source}): {-pick.drop(base_acc) * 100:+.2f} pt here")
    inputs = example_inputs(base, batch=BATCH)
    seq = tokens_of(base, 0)
    with tempfile.TemporaryDirectory(prefix="slimformer-demo-") as tmp:
        work = Path(tmp)
        small, record = compressed[pick.recipe]
        variants = [torch_variant("fp32", base, "", [], inputs, work, BATCH, seq, {"accuracy": base_acc}),
                    torch_variant(PICK, small, pick.recipe, record, inputs, work, BATCH, seq,
                                  {"accuracy": pick.accuracy})]
        try:
            variants += baseline_variants(base, ["ort", "openvino"], inputs, work, threads, "digits")
        except (ImportError, SlimformerError) as e:
            log.warning("ONNX Runtime / OpenVINO baselines unavailable: %s", e)
        console.print("warming up until p99/p50 settles, then measuring (interleaved timing, same inputs; "
                      "peak memory in a fresh process each)...")
        for v in variants:
            settle(v.fn)
        rows = measure_variants(variants, BATCH, seq, threads, "digits", rounds=15)
    out = cache_dir() / "demo-report"
    write_results(out / "results.json", rows)
    passed = verdict(rows[0], rows[1]).startswith("within budget")
    paths = write_report([out / "results.json"], out, best=pick.recipe if passed else "",
                         title="slimformer demo: digits ViT")
    print_table(console, rows, threads)
    console.print(f"{PICK}: {verdict(rows[0], rows[1])}")
    console.print(f"report: {paths['html']}")
    return rows


def print_table(console: Console, rows: list[dict], threads: int) -> None:
    from .bench.env import environment, features_line

    base = rows[0]
    table = Table(title=f"digits ViT, batch {BATCH}, {threads} threads, torch {torch.__version__}, "
                        f"{features_line(environment())} (all measured now, same inputs)")
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
