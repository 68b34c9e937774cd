"""Decoding speed on Hugging Face models: slimformer's decode paths vs transformers' generate vs CTranslate2.

Two random-weight models (speed only; every path generates exactly `--new-tokens` tokens per row, the
end token held off): a GPT-2-shaped decoder and a Marian-shaped encoder-decoder (sizes in the report).
Variants, greedy, batch 1 and `--batch`:
- `hf generate (dynamic cache)`: transformers' default generate, eager;
- `hf static cache`: transformers' StaticCache, eager;
- `slimformer fp32 (static cache, compiled)`: StaticCache + the decoding forward compiled once
  (`generate.hf_greedy(static=True, compiled=True)`: fullgraph, static shapes, frozen weights);
- `slimformer int8 (static cache, compiled)`: the same after `compress.int8_decode.for_decoding`
  (int8 weights, kernel picked by rows);
- `ctranslate2 fp32` / `ctranslate2 int8`: the same weights through CTranslate2's own converters.
Timed round-robin in one process; tokens/s = generated tokens / median call time.

    flock /tmp/slimformer-bench.lock .venv/bin/python benchmarks/generate.py --threads 2
    .venv/bin/python benchmarks/generate.py --tiny      # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from slimformer import atomic
from slimformer.bench import ct2
from slimformer.bench.env import environment
from slimformer.bench.timing import interleaved
from slimformer.compress.int8_decode import for_decoding
from slimformer.errors import SlimformerError
from slimformer.generate import compiled_graphs, hf_greedy

log = logging.getLogger("benchmarks.generate")
RESULTS = Path(__file__).parent / "results"


def build(kind: str, tiny: bool) -> nn.Module:
    """A random GPT-2- or Marian-shaped transformers model (eval, seed 0)."""
    import transformers as T

    d, layers, heads, ff, vocab = (64, 2, 4, 128, 1000) if tiny else (384, 4, 6, 1536, 16384)
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = T.GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_inner=ff, n_positions=256,
                           bos_token_id=vocab - 1, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
        model = T.GPT2LMHeadModel(cfg)
    else:
        cfg = T.MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=d, encoder_layers=layers,
                             decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                             encoder_ffn_dim=ff, decoder_ffn_dim=ff, max_position_embeddings=256,
                             pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1, eos_token_id=0)
        model = T.MarianMTModel(cfg)
    return model.eval()


def variants(kind: str, model: nn.Module, args, work: Path) -> dict[str, Callable[[list[list[int]]], object]]:
    int8 = for_decoding(copy.deepcopy(model))
    n = args.new_tokens

    def hf(m: nn.Module, static: bool = False, compiled: bool | str = False):
        def run(rows: list[list[int]]):
            ids = torch.tensor(rows)
            return hf_greedy(m, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, n, static, compiled)
        return run

    out = {"hf generate (dynamic cache)": hf(model), "hf static cache": hf(model, static=True),
           "slimformer fp32 (static cache, compiled)": hf(model, True, args.backend),
           "slimformer int8 (static cache, compiled)": hf(int8, True, args.backend)}
    for ct in ("float32", "int8"):
        path, vocab = ct2.convert_hf(model, work / f"{kind}-{ct}", quantization=ct)
        run = ct2.ct2_generate(path, vocab, kind, ct, args.threads)
        out[f"ctranslate2 {'fp32' if ct == 'float32' else ct}"] = (lambda rows, run=run: run(rows, n))
    return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gen-ct2-"))
    results, sizes, graphs = [], {}, {}
    for kind in ("gpt2", "marian"):
        model = build(kind, args.tiny)
        sizes[kind] = {"parameters": sum(p.numel() for p in model.parameters()), **{
            k: getattr(model.config, k) for k in ("vocab_size", "n_embd", "n_layer", "d_model", "encoder_layers",
                                                   "decoder_layers") if hasattr(model.config, k)}}
        fns = variants(kind, model, args, work)
        g = torch.Generator().manual_seed(1)
        before = compiled_graphs()
        for batch in (1, args.batch):
            rows = torch.randint(1, model.config.vocab_size - 1, (batch, args.prompt), generator=g).tolist()
            for fn in fns.values():  # the first call compiles
                fn(rows)
            timings = interleaved({k: (lambda fn=fn, rows=rows: fn(rows)) for k, fn in fns.items()}, batch=batch,
                                  rounds=args.rounds, calls_per_round=1, warmup_seconds=args.warmup,
                                  max_seconds=args.max_seconds)
            ref = timings["hf generate (dynamic cache)"].p50_ms
            ct2_ref = timings["ctranslate2 int8"].p50_ms
            for name, t in timings.items():
                tps = batch * args.new_tokens / (t.p50_ms / 1000)
                results.append({"model": kind, "name": name, "batch": batch, "tokens_per_s": round(tps, 1),
                                "p50_ms": round(t.p50_ms, 2), "vs_hf_generate": round(ref / t.p50_ms, 3),
                                "vs_ctranslate2_int8": round(ct2_ref / t.p50_ms, 3)})
                log.info("%s batch %d %s: %.1f tokens/s", kind, batch, name, tps)
        graphs[kind] = compiled_graphs() - before
        fast, plain = (fns[k](rows) for k in ("slimformer fp32 (static cache, compiled)",
                                              "hf generate (dynamic cache)"))
        sizes[kind]["compiled_fp32_tokens_equal_hf_generate"] = bool(torch.equal(fast, plain))
    return {"env": environment(), "threads": args.threads, "new_tokens": args.new_tokens, "prompt": args.prompt,
            "backend": args.backend, "models": sizes, "compiled_graphs": graphs, "results": results}


def markdown(report: dict) -> str:
    env = report["env"]
    lines = ["# Greedy decoding on Hugging Face models (random weights, fixed output length)", "",
             f"CPU: {env.get('cpu', env.get('cpu_model', '?'))}, threads {report['threads']}; prompt/source "
             f"{report['prompt']} tokens, {report['new_tokens']} new tokens per row; compile backend "
             f"`{report['backend']}`. One run, variants timed round-robin.", ""]
    for kind, size in report["models"].items():
        lines.append(f"- {kind}: {size}; dynamo graphs compiled: {report['compiled_graphs'][kind]}")
    lines += ["", "| model | variant | batch | tokens/s | p50 ms | vs HF generate | vs CTranslate2 int8 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['model']} | {r['name']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['vs_hf_generate']:.2f}x | {r['vs_ctranslate2_int8']:.2f}x |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models, few tokens, no inductor: a smoke test")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled paths")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.new_tokens, args.prompt, args.rounds, args.warmup, args.max_seconds = 2, 4, 5, 1, 0.0, 1.0
        args.backend = "eager"
    report = run(args)
    name = "generate-tiny" if args.tiny else "generate"
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
