"""Translation decoding: tokens/s of greedy decoding (batch 1 and 32) and BLEU, all variants in one run.

Variants: our Seq2Seq fp32 with the growing KV cache, the same without the cache (full prefix every
step), the static cache with the decode step compiled once (`generate.greedy(static=True,
compiled=True)`), the compression recipes (`int8`, encoder-side ToMe, both; applied through the step
registry exactly as `slimformer compress` does; int8 decodes with `compress.int8_decode`'s kernels on
the recipe's own int8 weights, eager with the growing cache and compiled on the static cache), and
CTranslate2 (fp32 and int8) running the same weights converted through a transformers
MarianMT of identical shape (`slimformer.bench.ct2` states what Marian cannot express). Speeds are
timed round-robin in one process so machine noise hits every variant alike; tokens/s counts generated
tokens (EOS excluded) per second at the median call time.

    flock /tmp/slimformer-bench.lock .venv/bin/python benchmarks/translation.py --threads 2
    .venv/bin/python benchmarks/translation.py --tiny     # random tiny model, seconds: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from slimformer import atomic, io, paths
from slimformer.bench import ct2
from slimformer.bench.env import environment
from slimformer.bench.timing import interleaved
from slimformer.compress.int8_decode import for_decoding
from slimformer.data import bible
from slimformer.errors import SlimformerError
from slimformer.generate import compiled_graphs, greedy, pad_batch
from slimformer.models.seq2seq import Seq2Seq
from slimformer.tasks import translation as T

log = logging.getLogger("benchmarks.translation")
RESULTS = Path(__file__).parent / "results"


RECIPES = ["int8", "tome:r=2", "tome:r=2+int8"]  # int8 Linears; encoder-side token merging; both


def compressed(model: Seq2Seq, recipe: str, task: str | None) -> nn.Module:
    """`recipe` applied to a copy of `model` through the registry, as `slimformer compress` would.
    `task` supplies calibration data (None for the tiny model, whose vocabulary is not the task's)."""
    from slimformer.api import compress_model

    return compress_model(copy.deepcopy(model), recipe, task=task)[0]


def variant_name(recipe: str) -> str:
    return f"slimformer {recipe} (KV cache)"


STATIC = "static cache, compiled"
BEST_FP32, BEST_INT8 = f"slimformer fp32 ({STATIC})", f"slimformer int8 ({STATIC})"


def bleu(hyps: list[list[int]], refs: list[str], tok) -> dict[str, float]:
    import sacrebleu

    text = [tok.decode(h, skip_special_tokens=True).strip() for h in hyps]
    return {"bleu": round(sacrebleu.corpus_bleu(text, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(text, [refs]).score, 2)}


def decode_all(fn: Callable[[list[list[int]]], list[list[int]]], sources: list[list[int]], batch: int = 32):
    """Decode every source in length-sorted batches, outputs in input order."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        for i, h in zip(idx, fn([sources[i] for i in idx]), strict=True):
            out[i] = h
    return out


def setup(args) -> tuple[Seq2Seq, object, list[list[int]], list[str]]:
    """(model, tokenizer, test sources, test references): the trained model, or a random tiny one."""
    pairs = bible.split_pairs()["test"]
    if args.tiny:
        train = bible.split_pairs()["train"][:300]
        tok = T.train_tokenizer([p.en for p in train] + [p.es for p in train], vocab_size=400)
        torch.manual_seed(0)
        model = Seq2Seq(replace(T.MODEL_CONFIG, vocab_size=tok.get_vocab_size(), d_model=32, n_enc_layers=1,
                                n_dec_layers=1, d_ff=64, max_len=48)).eval()
        T.init_weights(model)
        pairs = pairs[:args.sentences or 40]
    else:
        model = io.load(args.model)
        tok = T.load_tokenizer(args.model)
        T.check_tokenizer(model, tok)
        pairs = pairs[:args.sentences]
    sources = T.encode_sources(tok, [p.en for p in pairs], model.config.max_len)
    return model, tok, sources, [p.es for p in pairs]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model, tok, sources, refs = setup(args)
    max_new = args.max_new_tokens or model.config.max_len - 1
    task = None if args.tiny else "translation"
    models = {recipe: compressed(model, recipe, task) for recipe in args.recipes}
    for recipe, m in models.items():  # int8 recipes decode on the int8 kernels picked for decode shapes
        if "int8" in recipe:
            for_decoding(m)
    work = Path(tempfile.mkdtemp(prefix="ct2-"))
    t0 = time.perf_counter()
    tr = {ct: ct2.translator(ct2.convert(model, tok, work / ct, quantization=ct), ct, args.threads)
          for ct in ("float32", "int8")}
    convert_s = time.perf_counter() - t0

    def decoder(m: nn.Module, use_cache: bool = True,
                static: bool = False) -> Callable[[list[list[int]]], list[list[int]]]:
        return lambda s: greedy(m, pad_batch(s, 0), max_new_tokens=max_new, use_cache=use_cache, static=static,
                                compiled=args.backend if static else False)

    variants: dict[str, Callable[[list[list[int]]], list[list[int]]]] = {
        "slimformer fp32 (KV cache)": decoder(model),
        "slimformer fp32 (no cache)": decoder(model, use_cache=False),
        BEST_FP32: decoder(model, static=True),
        **{variant_name(recipe): decoder(m) for recipe, m in models.items()},
        **({BEST_INT8: decoder(models["int8"], static=True)} if "int8" in models else {}),
        "ctranslate2 fp32": lambda s: ct2.ct2_greedy(tr["float32"], tok, s, max_new),
        "ctranslate2 int8": lambda s: ct2.ct2_greedy(tr["int8"], tok, s, max_new),
    }

    # Quality: every variant decodes the whole held-out set (the no-cache path equals the cached one
    # token for token - checked here on the speed sample, and in tests - so it is not decoded twice).
    outputs, quality = {}, {}
    graphs_before = compiled_graphs()
    for name, fn in variants.items():
        if "no cache" in name:
            continue
        start = time.perf_counter()
        outputs[name] = decode_all(fn, sources)
        quality[name] = {**bleu(outputs[name], refs, tok), "seconds": round(time.perf_counter() - start, 1)}
        log.info("%s: %s", name, quality[name])
    base = outputs["slimformer fp32 (KV cache)"]
    for name, out in outputs.items():
        quality[name]["identical_to_fp32"] = round(sum(a == b for a, b in zip(out, base, strict=True)) / len(base), 4)

    # Speed: a fixed sample of test sources of typical length; batch 1 decodes `b1` of them one at a time.
    sample = sorted(sources, key=len)[len(sources) // 4:][:: max(1, len(sources) // 64)][:32]
    speed_sets = {1: sample[:args.b1_sentences], 32: sample[:32]}
    results = []
    for batch, srcs in speed_sets.items():
        calls = {name: (lambda fn=fn, srcs=srcs, batch=batch:
                        [h for i in range(0, len(srcs), batch) for h in fn(srcs[i:i + batch])])
                 for name, fn in variants.items()}
        produced = {name: call() for name, call in calls.items()}
        assert produced["slimformer fp32 (no cache)"] == produced["slimformer fp32 (KV cache)"], "cache mismatch"
        assert produced[BEST_FP32] == produced["slimformer fp32 (KV cache)"], "static cache mismatch"
        timings = interleaved(calls, batch=len(srcs), rounds=args.rounds, calls_per_round=1,
                              warmup_seconds=args.warmup, max_seconds=args.max_seconds)
        for name, timing in timings.items():
            tokens = sum(len(h) for h in produced[name])
            tps = tokens / (timing.p50_ms / 1000)
            results.append({"name": name, "batch": batch, "sentences": len(srcs), "generated_tokens": tokens,
                            "tokens_per_s": round(tps, 1), "latency_ms": {"p50": round(timing.p50_ms, 2),
                                                                          "p99": round(timing.p99_ms, 2)},
                            "threads": args.threads})
            log.info("batch %d %s: %.1f tokens/s", batch, name, tps)
    acceptance = {}
    for batch in speed_sets:
        rows = {r["name"]: r for r in results if r["batch"] == batch}
        ref = rows["ctranslate2 int8"]["tokens_per_s"]
        for r in rows.values():
            r["vs_ctranslate2_int8"] = round(r["tokens_per_s"] / ref, 3)
            r["vs_no_cache"] = round(r["tokens_per_s"] / rows["slimformer fp32 (no cache)"]["tokens_per_s"], 3)
        ours = {n: r for n, r in rows.items() if n.startswith("slimformer")}
        best = max(ours, key=lambda n: ours[n]["tokens_per_s"])
        int8 = {n: r["tokens_per_s"] for n, r in ours.items() if "int8" in n}
        acceptance[str(batch)] = {
            "best": best, "best_vs_ctranslate2_int8": rows[best]["vs_ctranslate2_int8"],
            "int8_at_least_fp32": {n: tps >= rows[n.replace("tome:r=2+int8", "tome:r=2").replace("int8", "fp32")]
                                   ["tokens_per_s"] for n, tps in int8.items()}}
    return {"env": environment(), "model": str(args.model) if not args.tiny else "tiny random (smoke test)",
            "config": vars(model.config) if hasattr(model.config, "__dict__") else {},
            "test_sentences": len(sources), "books": list(bible.TEST_BOOKS), "recipes": args.recipes,
            "ct2_convert_seconds": round(convert_s, 1),
            "ct2_conversion": "Seq2Seq -> transformers MarianMTModel (identical shape) -> CTranslate2 with "
                              "normalize_before=True, final LayerNorms, learned positions, <s> decoder start; "
                              "see slimformer/bench/ct2.py for what Marian itself cannot express",
            "quality": quality,
            "compiled_graphs": compiled_graphs() - graphs_before,
            "backend": args.backend,
            "compiled_graphs_note": "dynamo graphs compiled by the whole run: one per (variant, batch size), "
                                    "none per decoding step",
            "bleu_delta": {r: round(quality[variant_name(r)]["bleu"] - quality["slimformer fp32 (KV cache)"]["bleu"], 2)
                           for r in args.recipes},
            "acceptance": acceptance, "results": results}


def markdown(report: dict) -> str:
    q = report["quality"]
    lines = ["# Translation decoding (English -> Spanish, held-out books)", "",
             f"Model: `{report['model']}`; {report['test_sentences']} test verses from "
             f"{', '.join(report['books'])}. CPU: {report['env'].get('cpu', report['env'].get('cpu_model', '?'))}, "
             f"threads {report['results'][0]['threads']}. Greedy decoding, one run.", "",
             "| variant | BLEU | chrF | identical to fp32 |", "|---|---:|---:|---:|"]
    for name, m in q.items():
        lines.append(f"| {name} | {m['bleu']:.2f} | {m['chrf']:.2f} | {100 * m['identical_to_fp32']:.1f} % |")
    deltas = ", ".join(f"`{recipe}` {delta:+.2f}" for recipe, delta in report["bleu_delta"].items())
    lines += ["", f"BLEU change vs fp32 (recipes applied with `slimformer compress`; ToMe merges encoder tokens "
                  f"only, the decoder attends to the merged memory): {deltas}.", "",
              "| variant | batch | tokens/s | p50 ms | vs no-cache | vs CTranslate2 int8 |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['latency_ms']['p50']:.1f} | "
                     f"{r['vs_no_cache']:.2f}x | {r['vs_ctranslate2_int8']:.2f}x |")
    lines += [""]
    for batch, a in report["acceptance"].items():
        slower = [n for n, ok in a["int8_at_least_fp32"].items() if not ok]
        lines.append(f"Batch {batch}: best slimformer path `{a['best']}` = {a['best_vs_ctranslate2_int8']:.2f}x "
                     f"CTranslate2 int8; int8 paths slower than their fp32 counterpart: "
                     f"{', '.join(slower) if slower else 'none'}.")
    lines += ["", f"Compiled graphs in the whole run: {report['compiled_graphs']} ({report['compiled_graphs_note']}).",
              "", f"CTranslate2 conversion: {report['ct2_conversion']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(paths.cache_dir() / T.DEFAULT_OUT))
    p.add_argument("--tiny", action="store_true", help="random tiny model, few sentences: a smoke test")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sentences", type=int, default=None, help="test verses for BLEU (default: all)")
    p.add_argument("--b1-sentences", type=int, default=8, help="sentences decoded one at a time per batch-1 call")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--recipe", dest="recipes", action="append",
                   help=f"recipe to compare (repeatable; default {RECIPES})")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled decode step")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.recipes = args.recipes or RECIPES
    if args.tiny:
        args.rounds, args.warmup, args.max_seconds, args.b1_sentences = 2, 0.1, 5.0, 2
        args.max_new_tokens = args.max_new_tokens or 12
        args.backend = "eager"  # dynamo traces the step (graphs counted) without inductor's compile time
    report = run(args)
    name = "translation-tiny" if args.tiny else "translation"
    atomic.write_text(args.out_dir / f"{name}.json", json.dumps(report, indent=2, default=str))
    atomic.write_text(args.out_dir / f"{name}.md", markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except SlimformerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
