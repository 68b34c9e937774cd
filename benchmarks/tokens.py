"""Token merging (ToMe) and token pruning (EViT) vs throughput, latency, FLOPs and the task metric.

Three models, each with its variants timed round-robin in one run (so every ratio compares numbers
taken side by side):
- `vit-b16` (197 tokens, random weights: speed only), batch 8;
- the trained digits ViT (65 tokens, top-1 on the 360 held-out digits), batch 64, including the
  setting that leaves the same fraction of tokens as the fastest-enough vit-b16 setting;
- the real all-MiniLM-L6-v2, batch 32 x 128 tokens of real English text (consecutive verses, no
  padding), metric: mean cosine to the uncompressed embeddings (and on 256 single verses).

    flock /tmp/slimformer-cpu.lock .venv/bin/python benchmarks/tokens.py
    .venv/bin/python benchmarks/tokens.py --tiny --out /tmp/tok     # seconds: tiny models, few repeats
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from slimformer import api, io
from slimformer.bench.inputs import example_inputs
from slimformer.bench.timing import interleaved
from slimformer.compress.token_patch import token_sizes
from slimformer.models import build_builtin
from slimformer.tasks import digits, embedding

log = logging.getLogger("benchmarks.tokens")
RESULTS = Path(__file__).parent / "results"
VIT_TARGET, MINILM_TARGET, MAX_DROP_POINTS, MIN_COSINE = 1.8, 1.4, 1.0, 0.98

VIT_RECIPES = ["tome:r=8", "tome:r=15", "tome:schedule=keep,keep_ratio=0.25", "tome:schedule=keep,keep_ratio=0.2",
               "tome:schedule=keep,keep_ratio=0.15", "token-prune:keep_rate=0.7,start_layer=3"]
DIGITS_RECIPES = ["tome:r=8", "tome:r=12", "tome:schedule=keep,keep_ratio=0.5",
                  "tome:schedule=keep,keep_ratio=0.3", "tome:schedule=keep,keep_ratio=0.2",
                  "tome:schedule=keep,keep_ratio=0.1", "token-prune:keep_rate=0.7"]
# Merging in the last block costs almost no fidelity (only its MLP sees merged tokens), so the
# per-block lists spend the budget there.
MINILM_RECIPES = ["tome:r=10", "tome:r=12", "tome:r=12/12/12/12/12/33", "tome:r=12/12/12/12/16/30",
                  "tome:schedule=keep,keep_ratio=0.5", "token-prune:keep_rate=0.8"]


def flops(model, args, kwargs) -> float:
    """GFLOPs of one forward (matmuls, convolutions, attention) counted by torch."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops() / 1e9


def tokens_left(model, args, kwargs, initial: int) -> float:
    """Fraction of the initial tokens still there after the last block (measured, first example)."""
    with torch.inference_mode():
        model(*args, **kwargs)
    sizes = token_sizes(model)
    return 1.0 if sizes is None else float((sizes[0] > 0).sum()) / initial


def sweep(label: str, base, recipes: list[str], args: tuple, kwargs: dict, batch: int, seq_len: int,
          initial_tokens: int, metric_fn, threads: int, quick: bool) -> list[dict]:
    """Patch a copy of `base` per recipe, time all variants round-robin, evaluate each."""
    models = {"baseline": base}
    for recipe in recipes:
        models[recipe], _ = api.compress_model(copy.deepcopy(base), recipe)
    timings = interleaved({name: (lambda m=m: m(*args, **kwargs)) for name, m in models.items()}, batch=batch,
                          rounds=2 if quick else 5, calls_per_round=1 if quick else 2,
                          warmup_seconds=0.2 if quick else 3)
    rows = []
    base_t = timings["baseline"]
    for name, model in models.items():
        t = timings[name]
        log.info("%s %s: %.1f items/s", label, name, t.throughput)
        rows.append({
            "name": f"{label} {name}", "model": label, "recipe": "" if name == "baseline" else name,
            "metrics": metric_fn(model), "latency_ms": {"p50": t.p50_ms, "p99": t.p99_ms},
            "throughput": t.throughput, "speedup": t.throughput / base_t.throughput,
            "gflops": flops(model, args, kwargs), "tokens_left": tokens_left(model, args, kwargs, initial_tokens),
            "batch": batch, "seq_len": seq_len, "threads": threads, "dtype": "float32"})
    return rows


def keep_ratio_of(recipe: str) -> float | None:
    for part in recipe.split(":", 1)[-1].split(","):
        if part.startswith("keep_ratio="):
            return float(part.split("=")[1])
    return None


def run(tiny: bool, threads: int, out: Path) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(tiny, threads, out)
    finally:
        torch.set_num_threads(before)


def _run(tiny: bool, threads: int, out: Path) -> dict:
    rows: list[dict] = []
    # vit-b16 (speed only)
    vit = build_builtin("vit-tiny" if tiny else "vit-b16").eval()
    vit_recipes = ["tome:r=4", "tome:schedule=keep,keep_ratio=0.3"] if tiny else VIT_RECIPES
    args, kwargs = example_inputs(vit, batch=8)
    n_vit = vit.config.n_patches + 1
    vit_rows = sweep("vit-b16", vit, vit_recipes, args, kwargs, 8, n_vit, n_vit, lambda m: {}, threads, tiny)
    rows += vit_rows
    fast = [r for r in vit_rows[1:] if r["speedup"] >= VIT_TARGET and r["recipe"].startswith("tome")]
    best = max(fast, key=lambda r: r["tokens_left"]) if fast else max(vit_rows[1:], key=lambda r: r["speedup"])

    # digits ViT: same fraction of tokens left as `best`
    if tiny:
        digit_model = build_builtin("vit-tiny").eval()
    else:
        from slimformer.demo import cached_digits_model

        digit_model, _ = cached_digits_model()
    matched = best["recipe"] if keep_ratio_of(best["recipe"]) is not None else None
    digit_recipes = ["tome:r=4"] if tiny else list(DIGITS_RECIPES)
    if matched and matched not in digit_recipes:
        digit_recipes.append(matched)
    x = digits.load_data().x_test[:64]
    rows += sweep("digits", digit_model, digit_recipes, (x,), {}, 64, 65, 65, digits.evaluate, threads, tiny)

    # MiniLM on real text, 128 tokens, batch 32
    seq = 32 if tiny else 128
    n_texts = 4 if tiny else 64
    texts = embedding.passages(n_texts, seq)
    single = [] if tiny else embedding.sentences(256)
    enc = embedding.tokenize(texts[:4 if tiny else 32], max_length=seq)
    minilm = io.load("minilm")
    minilm_recipes = ["tome:schedule=keep,keep_ratio=0.5"] if tiny else MINILM_RECIPES

    def fidelity(model) -> dict:
        result = embedding.evaluate(model, texts, max_length=seq)
        if single:
            result["cosine_sentences"] = embedding.evaluate(model, single)["cosine"]
        return result

    rows += sweep("minilm", minilm, minilm_recipes, (), enc, len(enc["input_ids"]), seq, seq, fidelity, threads,
                  tiny)
    summary = acceptance(rows, best)
    write(rows, summary, out, threads)
    return summary


def acceptance(rows: list[dict], best: dict) -> dict:
    digit_rows = [r for r in rows if r["model"] == "digits"]
    base_acc = digit_rows[0]["metrics"]["accuracy"]
    matched = next((r for r in digit_rows if r["recipe"] == best["recipe"]), None)
    minilm = [r for r in rows if r["model"] == "minilm" and r["recipe"]]
    ok = [r for r in minilm if r["speedup"] >= MINILM_TARGET and r["metrics"]["cosine"] >= MIN_COSINE]
    return {
        "vit_b16_best": {"recipe": best["recipe"], "speedup": best["speedup"], "tokens_left": best["tokens_left"],
                         "pass": best["speedup"] >= VIT_TARGET},
        "digits_matched": None if matched is None else {
            "recipe": matched["recipe"], "tokens_left": matched["tokens_left"],
            "drop_points": (base_acc - matched["metrics"]["accuracy"]) * 100,
            "pass": (base_acc - matched["metrics"]["accuracy"]) * 100 <= MAX_DROP_POINTS},
        "minilm": {"passing": [r["recipe"] for r in ok], "pass": bool(ok)},
    }


def markdown(rows: list[dict], summary: dict, threads: int) -> str:
    from slimformer.bench.env import environment

    env = environment()
    lines = ["# Token merging (ToMe) and token pruning (EViT)", "",
             f"CPU: {env.get('cpu', env.get('cpu_model', '?'))}, {threads} threads, float32, torch "
             f"{torch.__version__}. Variants of one model timed round-robin in one run; speedup = throughput "
             "/ baseline throughput in that run. `tokens left` = tokens after the last block / tokens in.", "",
             "Regenerate: `flock /tmp/slimformer-cpu.lock .venv/bin/python benchmarks/tokens.py`", ""]
    for model, title in (("vit-b16", "vit-b16 (random weights, speed only), batch 8"),
                         ("digits", "trained digits ViT, batch 64, top-1 on 360 held-out digits"),
                         ("minilm", "all-MiniLM-L6-v2, batch 32 x 128 tokens of real text; cosine to fp32")):
        part = [r for r in rows if r["model"] == model]
        if not part:
            continue
        lines += [f"## {title}", "", "| recipe | tokens left | GFLOPs | p50 ms | p99 ms | items/s | speedup | metric |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in part:
            metric = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()) or "-"
            lines.append(f"| {r['recipe'] or 'baseline'} | {r['tokens_left']:.2f} | {r['gflops']:.1f} | "
                         f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {r['throughput']:.1f} | "
                         f"{r['speedup']:.2f}x | {metric} |")
        lines.append("")
    s = summary
    lines += ["## Acceptance", "",
              f"- vit-b16 best ToMe setting (most tokens left at >= {VIT_TARGET}x): `{s['vit_b16_best']['recipe']}` "
              f"{s['vit_b16_best']['speedup']:.2f}x, {s['vit_b16_best']['tokens_left']:.2f} of the tokens left "
              f"({'pass' if s['vit_b16_best']['pass'] else 'FAIL'})"]
    if s["digits_matched"]:
        d = s["digits_matched"]
        lines.append(f"- digits ViT at the same setting `{d['recipe']}` ({d['tokens_left']:.2f} of the tokens left): "
                     f"top-1 drop {d['drop_points']:.2f} points ({'pass' if d['pass'] else 'FAIL'})")
    lines.append(f"- MiniLM settings with >= {MINILM_TARGET}x and cosine >= {MIN_COSINE}: "
                 f"{', '.join(f'`{r}`' for r in s['minilm']['passing']) or 'none (FAIL)'}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, model, metric in zip(axes, ("vit-b16", "digits", "minilm"), (None, "accuracy", "cosine"), strict=True):
        part = [r for r in rows if r["model"] == model]
        ax.scatter([r["tokens_left"] for r in part], [r["speedup"] for r in part], color="tab:blue")
        ax.set(title=model, xlabel="tokens left after last block", ylabel="speedup (x)")
        if metric:
            twin = ax.twinx()
            twin.scatter([r["tokens_left"] for r in part], [r["metrics"][metric] for r in part], color="tab:red",
                         marker="x")
            twin.set_ylabel(metric, color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(rows: list[dict], summary: dict, out: Path, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    api.write_results(out / "tokens.json", rows)
    from slimformer import atomic

    atomic.write_text(out / "tokens.md", markdown(rows, summary, threads))
    plot(rows, out / "tokens.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    summary = run(a.tiny, a.threads, a.out)
    log.info("%s (%.0f s)", summary, time.perf_counter() - start)


if __name__ == "__main__":
    main()
