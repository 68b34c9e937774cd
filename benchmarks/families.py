"""Family x step matrix: every compression step on every model family, checked against plain fp32.

Each cell compresses a tiny random-init model of the family (`slimformer.families.zoo`, weights at std
0.15, so a broken step shows), runs it on fresh random inputs (other seeds than the calibration batches)
and reports the cosine of its main output to the fp32 model's, after a save -> load round trip that must
give the same class and bit-identical outputs. A step that cannot apply by design reports its refusal.
Any other exception is a defect and is counted as a traceback.

Token steps change the encoder's token count: for encoder-only text models the cosine is taken between
the size-weighted mean of the reduced tokens and the plain mean of the original ones.

    .venv/bin/python benchmarks/families.py            # -> benchmarks/results/families.{md,json}
    .venv/bin/python benchmarks/families.py --tiny     # two families, two steps (smoke test)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from slimformer import atomic, io
from slimformer.api import compress_model
from slimformer.bench.env import environment, features_line
from slimformer.compress.distill import main_output
from slimformer.compress.token_patch import token_sizes
from slimformer.errors import SlimformerError
from slimformer.families import example_inputs, family_of
from slimformer.families.zoo import NAMES, tiny
from slimformer.models import build_builtin

RESULTS = Path(__file__).parent / "results"
STEPS = ["int8", "int8-weight", "int8:activations=static", "bf16", "bf16-attention", "prune-heads:ratio=0.5",
         "prune-ffn:ratio=0.5", "lowrank:rank=8", "prune-layers:ratio=0.5", "prune-heads:ratio=0.5+distill:epochs=2",
         "tome:r=2", "token-prune:keep_rate=0.7"]
REFERENCE = ("vit-tiny", "encoder-small", "decoder-small", "seq2seq-small")


def model_of(name: str) -> torch.nn.Module:
    if name in REFERENCE:
        torch.manual_seed(0)
        model = build_builtin(name).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.15)
        return model
    return tiny(name)


def pooled(model, out: torch.Tensor) -> torch.Tensor:
    """Compare token outputs of differing lengths by their (size-weighted) mean over tokens."""
    sizes = token_sizes(model)
    if sizes is None or out.dim() != 3:
        return out
    return (out * sizes.unsqueeze(-1)).sum(1) / sizes.sum(1, keepdim=True)


def batch_of(inputs: tuple[tuple, dict]):
    """One calibration batch as the API takes it: keyword inputs (HF) or positional ones (reference)."""
    args, kwargs = inputs
    return kwargs if kwargs else args


@torch.no_grad()
def output(model, inputs) -> torch.Tensor:
    args, kwargs = inputs
    return main_output(model(*args, **kwargs)).float()


def cell(base, recipe: str) -> dict:
    fresh = example_inputs(base, batch=2, seq_len=10, seed=5)
    calib = [batch_of(example_inputs(base, batch=2, seq_len=10, seed=s)) for s in range(11, 19)]
    try:
        model, record = compress_model(copy.deepcopy(base), recipe, calib=calib)
        out, ref = output(model, fresh), output(base, fresh)
        if out.shape != ref.shape:
            out, ref = pooled(model, out), ref.mean(1) if ref.dim() == 3 else ref
        cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
        with tempfile.TemporaryDirectory() as d:
            io.save_model(model, Path(d) / "m", recipe=record)
            loaded = io.load(Path(d) / "m")
            same = type(loaded) is type(model) and torch.equal(output(loaded, fresh), output(model, fresh))
        return {"status": "ok" if same and cos == cos else "wrong", "cosine": round(cos, 4), "reload_exact": same}
    except SlimformerError as e:
        return {"status": "refused", "reason": str(e).splitlines()[0]}
    except Exception as e:  # noqa: BLE001 - a defect: recorded, counted, and shown with its traceback
        return {"status": "traceback", "reason": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc().splitlines()[-4:]}


def markdown(rows: dict[str, dict[str, dict]], steps: list[str], env: dict) -> str:
    counts = {s: sum(row[k]["status"] == s for row in rows.values() for k in steps)
              for s in ("ok", "refused", "wrong", "traceback")}
    lines = ["# Family x step matrix", "",
             f"{features_line(env)}; torch {env['versions'].get('torch')}, transformers "
             f"{env['versions'].get('transformers')}; one thread.",
             "Cosine of each compressed tiny model's main output to its fp32 model's on fresh random inputs "
             "(weights at std 0.15), after save -> load (same class, bit-identical outputs). "
             "`refused`: the step cannot apply by design (reasons below).", "",
             f"**{counts['ok']} ok, {counts['refused']} refused by design, {counts['wrong']} wrong, "
             f"{counts['traceback']} tracebacks.**", "",
             "| family | class | " + " | ".join(f"`{s}`" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    reasons: dict[str, str] = {}
    for name, row in rows.items():
        cells = []
        for s in steps:
            c = row[s]
            if c["status"] == "ok":
                cells.append(f"{c['cosine']:.4f}")
            else:
                key = f"{c['status']} {len(reasons) + 1}"
                reasons[key] = f"{name}, `{s}`: {c['reason']}"
                cells.append(key)
        lines.append(f"| {name} | {row['_class']} | " + " | ".join(cells) + " |")
    if reasons:
        lines += ["", "## Refusals and defects", ""] + [f"- **{k}**: {v}" for k, v in reasons.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="two families x two steps (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for families.md / families.json")
    args = parser.parse_args(argv)
    quiet = logging.getLogger("slimformer")
    level, threads = quiet.level, torch.get_num_threads()
    quiet.setLevel(logging.ERROR)  # steps log what they do; the table says it
    torch.set_num_threads(1)
    try:
        return run(args)
    finally:  # in-process callers (the smoke test) get their logging and threads back
        quiet.setLevel(level)
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    names = ["bert", "gpt2"] if args.tiny else [*NAMES, *REFERENCE]
    steps = ["int8", "tome:r=2"] if args.tiny else STEPS
    rows: dict[str, dict] = {}
    for name in names:
        base = model_of(name)
        rows[name] = {s: cell(base, s) for s in steps}
        rows[name]["_class"] = f"{type(base).__name__} ({family_of(base).name})"
        print(name, {s: rows[name][s].get("cosine", rows[name][s]["status"]) for s in steps}, flush=True)
    env = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "families-tiny" if args.tiny else "families"
    atomic.write_text(args.out / f"{stem}.json", json.dumps({"env": env, "rows": rows}, indent=1))
    atomic.write_text(args.out / f"{stem}.md", markdown(rows, steps, env))
    bad = sum(row[k]["status"] in ("wrong", "traceback") for row in rows.values() for k in steps)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
