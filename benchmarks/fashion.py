"""Fashion-MNIST ViT: top-1 on the 10,000 test images vs latency and throughput, for the fp32 model,
token merging (ToMe), int8, ToMe + int8 and ONNX Runtime's int8 as the external anchor.

Every variant is timed round-robin in one run on the same batch of real test images (ratios are what a
reader compares), through `slimformer.bench.runner`; accuracy comes from the task's own evaluate().
Acceptance (issue 9): the fp32 model >= 90 % top-1, and a ToMe + int8 recipe >= 2x the fp32 throughput at
<= 1 point of top-1 drop.

    flock /tmp/slimformer-cpu.lock .venv/bin/python benchmarks/fashion.py          # ~/.cache/slimformer/fashion-vit
    .venv/bin/python benchmarks/fashion.py --tiny --out /tmp/fashion-bench          # seconds: tiny model, few rounds
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import tempfile
from pathlib import Path

import torch

from slimformer import atomic, io
from slimformer.api import compress_model
from slimformer.bench.env import environment
from slimformer.bench.runner import baseline_variants, measure_variants, tokens_of, torch_variant
from slimformer.compress.recipe import parse_recipe
from slimformer.errors import SlimformerError
from slimformer.paths import cache_dir
from slimformer.tasks import fashion

log = logging.getLogger("benchmarks.fashion")
RESULTS = Path(__file__).parent / "results"
MIN_ACCURACY, MIN_SPEEDUP, MAX_DROP_POINTS = 0.90, 2.0, 1.0
# Eager int8 is slower than fp32 at d=64 (the per-token quantize work outweighs the tiny GEMMs); compiled,
# inductor fuses it. r=8 is the largest constant r within 1 point untrained; keep_ratio=0.25 merges
# harder, and distillation (through the merged forward) buys back accuracy.
RECIPES = ["tome:r=8", "int8", "int8:compile=true", "bf16:compile=true", "tome:r=8+int8:compile=true",
           "tome:schedule=keep,keep_ratio=0.25+int8:compile=true",
           "tome:schedule=keep,keep_ratio=0.25+distill:epochs=6+int8:compile=true"]
TINY_RECIPES = ["tome:r=8", "tome:r=8+int8"]


def usable(recipes: list[str]) -> tuple[list[str], dict[str, str]]:
    """Recipes whose steps are registered here; the others with the reason (a step not landed yet)."""
    ok, skipped = [], {}
    for recipe in recipes:
        try:
            parse_recipe(recipe)
            ok.append(recipe)
        except SlimformerError as e:
            skipped[recipe] = str(e)
    return ok, skipped


def tiny_model(path: Path) -> Path:
    """A vit-fashion trained for one epoch on 512 images: real weights in seconds, for smoke tests."""
    fashion.train(out=path, epochs=1, subset=512, batch=64)
    return path


def run(model_dir: Path, tiny: bool, threads: int, batch: int, rounds: int, baselines: list[str],
        recipes: list[str] | None = None) -> dict:
    """Measure fp32, each recipe and each baseline on `model_dir`; results plus the acceptance verdicts."""
    torch.set_num_threads(threads)
    recipes, skipped = usable(recipes or (TINY_RECIPES if tiny else RECIPES))
    evaluate = functools.partial(fashion.evaluate, limit=500 if tiny else None)
    data = fashion.load_data()
    inputs = ((data.x_test[:batch],), {})
    with tempfile.TemporaryDirectory(prefix="fashion-bench-") as tmp:
        work = Path(tmp)
        base = io.load_model_dir(model_dir)
        seq = tokens_of(base, 0)
        log.info("fp32")
        variants = [torch_variant("fp32", base, "", [], inputs, work, batch, seq, evaluate(base))]
        for recipe in recipes:
            log.info("compress %s", recipe)
            model, record = compress_model(io.load_model_dir(model_dir), recipe, task="fashion")
            variants.append(torch_variant(recipe, model, recipe, record, inputs, work, batch, seq, evaluate(model)))
        for v in baseline_variants(base, baselines, inputs, work, threads, "fashion"):
            variants.append(v)
        results = measure_variants(variants, batch, seq, threads, "fashion", rounds=rounds,
                                   calls_per_round=1 if tiny else 2, memory=not tiny,
                                   progress=lambda msg: log.info(msg))
    base_row = results[0]
    for r in results:
        r["speedup"] = r["throughput"] / base_row["throughput"]
        acc = r["metrics"].get("accuracy")
        r["drop_points"] = None if acc is None else (base_row["metrics"]["accuracy"] - acc) * 100
    return {"model": str(model_dir), "tiny": tiny, "batch": batch, "skipped": skipped,
            "acceptance": acceptance(results), "results": results}


def acceptance(results: list[dict]) -> dict:
    """The issue's two checks, from the numbers of this run."""
    base_acc = results[0]["metrics"]["accuracy"]
    both = [r for r in results if "tome" in r["recipe"] and "int8" in r["recipe"]]
    passing = [r for r in both if r["speedup"] >= MIN_SPEEDUP and r["drop_points"] <= MAX_DROP_POINTS]
    best = max(passing or both, key=lambda r: r["speedup"]) if both else None
    return {"fp32_accuracy": base_acc, "fp32_pass": base_acc >= MIN_ACCURACY,
            "tome_int8": None if best is None else best["recipe"],
            "tome_int8_speedup": None if best is None else best["speedup"],
            "tome_int8_drop_points": None if best is None else best["drop_points"],
            "tome_int8_pass": bool(passing)}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def markdown(report: dict, env: dict) -> str:
    rows = report["results"]
    first = rows[0]
    acc = report["acceptance"]
    lines = [
        "# Fashion-MNIST ViT: ToMe, int8 and ONNX Runtime",
        "",
        f"Model `{report['model']}` (vit-fashion: patch 4, {first['seq_len']} tokens, d=64, 4 layers). Top-1 on the "
        f"{'first 500' if report['tiny'] else '10,000'} test images; latency on a batch of {report['batch']} real "
        f"test images, {first['threads']} threads, torch {env['versions'].get('torch', '?')}, "
        f"CPU {env.get('cpu', '?')}. All variants were timed round-robin in the same run; generated by "
        "`benchmarks/fashion.py`"
        f"{' --tiny (smoke test: numbers mean nothing)' if report['tiny'] else ''}.",
        "",
        "| variant | kind | dtype | top-1 | drop (pt) | p50 ms | p99 ms | images/s | speedup | size MB | peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["metrics"].get("accuracy")
        cells = [r["name"], r["kind"], r["dtype"], fmt(a, "{:.2%}"), fmt(r["drop_points"], "{:+.2f}"),
                 fmt(r["latency_ms"]["p50"], "{:.2f}"), fmt(r["latency_ms"]["p99"], "{:.2f}"),
                 fmt(r["throughput"], "{:.0f}"), fmt(r["speedup"], "{:.2f}x"), fmt(r["size_mb"], "{:.3f}"),
                 fmt(r["peak_mem_mb"], "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"fp32 top-1 {acc['fp32_accuracy'] * 100:.2f} % (acceptance >= {MIN_ACCURACY * 100:.0f} %) -> "
              f"**{'PASS' if acc['fp32_pass'] else 'FAIL'}**."]
    if acc["tome_int8"] is None:
        lines.append("ToMe + int8: not measured (a step is missing, see below).")
    else:
        lines.append(f"Best ToMe + int8 recipe `{acc['tome_int8']}`: {acc['tome_int8_speedup']:.2f}x throughput at "
                     f"{acc['tome_int8_drop_points']:+.2f} points (acceptance >= {MIN_SPEEDUP:.0f}x at <= "
                     f"{MAX_DROP_POINTS:.0f} pt) -> **{'PASS' if acc['tome_int8_pass'] else 'FAIL'}**.")
    for recipe, why in report["skipped"].items():
        lines.append(f"- skipped `{recipe}`: {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=cache_dir() / "fashion-vit", help="trained model dir")
    parser.add_argument("--tiny", action="store_true", help="tiny model trained in seconds, few rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="images per call (throughput serving)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--baselines", default="ort", help="comma-separated external baselines ('' for none)")
    parser.add_argument("--recipe", action="append", help="measure this recipe (repeatable; default: the set above)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for fashion.json and fashion.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    baselines = [b for b in args.baselines.split(",") if b]
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="fashion-tiny-") as tmp:
            report = run(tiny_model(Path(tmp) / "m"), True, args.threads, 16, 2, baselines, args.recipe)
    else:
        if not (args.model / io.META).exists():
            raise SystemExit(f"{args.model}: no trained model; run `slimformer train fashion --out {args.model}`")
        report = run(args.model, False, args.threads, args.batch, args.rounds, baselines, args.recipe)
    env = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "fashion.json", json.dumps({"env": env, **report}, indent=2))
    atomic.write_text(args.out / "fashion.md", markdown(report, env))
    print(markdown(report, env))


if __name__ == "__main__":
    main()
