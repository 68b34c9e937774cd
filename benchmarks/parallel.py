"""Parallel computation on this machine, every variant measured in one run so their ratios are fair.

Serving (items/s and p50/p99 per request): one process with 1 and 2 threads calling the model directly,
and the multi-process server as 1x1, 2x1 and 1x2 (processes x threads) under a saturating load.
Training: DDP with 1 and 2 processes (1 thread each, the same per-rank batch). TP 2 and PP 2 (GPipe and
1F1B, several microbatch counts) inference throughput, and PP's measured bubble beside (p-1)/(m+p-1).

Run the full version under the CPU lock: `flock /tmp/slimformer-cpu.lock .venv/bin/python benchmarks/parallel.py`
(`--tiny`: the same code paths at toy sizes, for a test). Writes results/parallel.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from slimformer import atomic, io
from slimformer.bench.env import environment
from slimformer.bench.inputs import example_inputs
from slimformer.bench.timing import measure
from slimformer.parallel.common import LocalWorker, output_of
from slimformer.parallel.jobs import run_ddp
from slimformer.parallel.launch import LaunchConfig, launch
from slimformer.parallel.serve import ServeConfig, serve_benchmark
from slimformer.paths import cache_dir

log = logging.getLogger("benchmarks.parallel")
RESULTS = Path(__file__).parent / "results"


def digits_model() -> str:
    path = cache_dir() / "digits-vit-v1"
    return str(path) if path.exists() else "vit-tiny"


def single_process(ref: str, batch: int, seq_len: int, threads: int, repeats: int, warmup_s: float) -> dict:
    """The model called directly in this process at `batch` items per call."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = io.load(ref).eval()
    args, _ = example_inputs(model, batch=batch, seq_len=seq_len)
    t = measure(lambda: output_of(model, args), batch=batch, repeats=repeats, warmup_seconds=warmup_s)
    return {"throughput": t.throughput, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "batch": batch}


def serving(ref: str, seq_len: int, a: argparse.Namespace) -> dict:
    out = {"model": ref, "seq_len": seq_len}
    for threads in (1, 2):
        out[f"single_1x{threads}"] = single_process(ref, a.max_batch, seq_len, threads, a.repeats,
                                                    min(2.0, a.duration / 4))
    torch.set_num_threads(1)
    for n, t in ((1, 1), (2, 1), (1, 2)):
        cfg = ServeConfig(nproc=n, threads=t, max_batch=a.max_batch, max_wait_ms=5.0, queue_size=256)
        out[f"serve_{n}x{t}"] = serve_benchmark(ref, cfg, seq_len=seq_len, duration=a.duration)
    s = {k: out[k]["throughput"] for k in out if k.startswith(("serve", "single"))}
    out["ratios"] = {"serve_2x1_vs_serve_1x1": s["serve_2x1"] / s["serve_1x1"],
                     "serve_2x1_vs_serve_1x2": s["serve_2x1"] / s["serve_1x2"],
                     "serve_2x1_vs_single_1x1": s["serve_2x1"] / s["single_1x1"],
                     "serve_2x1_vs_single_1x2": s["serve_2x1"] / s["single_1x2"]}
    return out


def distributed(a: argparse.Namespace, vit: str) -> dict:
    """DDP 1 vs 2 processes; TP 2 and PP 2 inference (and PP training bubble)."""
    train = {"job": "ddp", "model": "vit-tiny", "task": "digits", "batch": a.ddp_batch, "steps": a.ddp_steps,
             "warmup_steps": 3, "threads": 1}
    t0 = time.time()
    torch.set_num_threads(1)
    one = run_ddp(train, LocalWorker())  # the plain single-process trainer (world 1: nothing is wrapped)
    log.info("ddp x1 done in %.0f s", time.time() - t0)
    jobs = [
        train,
        {"job": "tp", "models": [*a.text_models, vit], "batch": a.max_batch, "seq_len": a.seq_len,
         "repeats": a.repeats, "warmup": 2},
        {"job": "pp", "models": [*a.text_models, vit], "schedules": ["gpipe", "1f1b"],
         "microbatch_list": a.microbatches, "batch": a.pp_batch, "seq_len": a.seq_len, "repeats": a.repeats,
         "warmup": 2, "train_repeats": a.repeats},
    ]
    two, tp, pp = launch("multi", {"jobs": jobs, "threads": 1},
                         LaunchConfig(nproc=2, quiet=True, hang_timeout=120))["results"]
    log.info("multi x2 done in %.0f s", time.time() - t0)
    return {"ddp_1": one, "ddp_2": two, "ddp_2_vs_1": two["items_per_s"] / one["items_per_s"],
            "tp": tp["results"], "pp": pp["results"]}


def markdown(report: dict, env: dict) -> str:
    lines = ["# Parallel computation (CPU)", "",
             f"{env['cpu']}, {env['cores']} cores, torch {env['versions'].get('torch')}; all numbers from one run "
             f"of `benchmarks/parallel.py{' --tiny' if report['tiny'] else ''}`; fp32. Load average (1 min) "
             f"{report['load_average_start'][0]:.1f} at the start, {report['load_average_end'][0]:.1f} at the end "
             "(the cores are shared: other jobs may run beside an untimed phase).", "",
             "## Serving (items/s; latency per request for the server, per batch call for a single process)", "",
             "| model | variant | items/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for s in report["serving"]:
        for key in ("single_1x1", "single_1x2", "serve_1x1", "serve_2x1", "serve_1x2"):
            r = s[key]
            lines.append(f"| {Path(s['model']).name} | {key.replace('_', ' ')} | {r['throughput']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += ["", "| model | serve 2x1 / serve 1x1 | serve 2x1 / serve 1x2 | serve 2x1 / single 1x1 | "
                  "serve 2x1 / single 1x2 |", "|---|---|---|---|---|"]
    for s in report["serving"]:
        r = s["ratios"]
        lines.append(f"| {Path(s['model']).name} | {r['serve_2x1_vs_serve_1x1']:.2f}x | "
                     f"{r['serve_2x1_vs_serve_1x2']:.2f}x | {r['serve_2x1_vs_single_1x1']:.2f}x | "
                     f"{r['serve_2x1_vs_single_1x2']:.2f}x |")
    d = report["distributed"]
    lines += ["", "## Data-parallel training (digits, vit-tiny, 1 thread per process, "
                  f"{d['ddp_1']['batch_per_rank']} items per rank per step)", "",
              "| processes | global batch | items/s | step p50 ms |", "|---|---|---|---|"]
    for key in ("ddp_1", "ddp_2"):
        r = d[key]
        lines.append(f"| {r['world']} | {r['global_batch']} | {r['items_per_s']:.1f} | {r['step_ms_p50']:.1f} |")
    lines += ["", f"DDP 2 processes / 1 process: **{d['ddp_2_vs_1']:.2f}x** items/s.", "",
              "## Tensor parallel (2 ranks, inference)", "",
              "| model | batch | items/s | p50 ms | max abs diff vs 1 process |", "|---|---|---|---|---|"]
    for r in d["tp"]:
        lines.append(f"| {Path(r['model']).name} | {r['batch']} | {r['inference']['throughput']:.1f} | "
                     f"{r['inference']['p50_ms']:.1f} | {r['max_abs_diff_output']:.1e} |")
    lines += ["", "## Pipeline parallel (2 stages)", "",
              "| model | schedule | microbatches | inference items/s | train items/s | bubble measured (train) | "
              "bubble theory (p-1)/(m+p-1) |", "|---|---|---|---|---|---|---|"]
    for r in d["pp"]:
        lines.append(f"| {Path(r['model']).name} | {r['schedule']} | {r['microbatches']} | "
                     f"{r['inference']['throughput']:.1f} | {r['train']['throughput']:.1f} | "
                     f"{r['train_bubble_measured']:.2f} | {r['train_bubble_theory']:.2f} |")
    lines += ["", "Bubble measured = 1 - m·t/T: t = the slowest stage's time for one microbatch alone, T = the "
                  "pipelined step; it includes communication. t is the best of 3 isolated runs and the stages are not "
                  "exactly equal, so single rows are noisy (some fall below the theory).",
              ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks the code paths in little time")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.tiny:  # the digits ViT only, one microbatch count, a few steps
        a.duration, a.repeats, a.max_batch, a.seq_len, a.pp_batch = 0.5, 2, 4, 16, 4
        a.microbatches, a.ddp_batch, a.ddp_steps, a.text_models = [2], 8, 5, []
    else:
        a.duration, a.repeats, a.max_batch, a.seq_len, a.pp_batch = 15.0, 10, 16, 128, 16
        a.microbatches, a.ddp_batch, a.ddp_steps, a.text_models = [2, 4, 8], 32, 25, ["encoder-small"]
    vit = "vit-tiny" if a.tiny else digits_model()
    env = environment()
    report = {"tiny": a.tiny, "load_average_start": os.getloadavg(), "serving": [], "distributed": {}}
    for ref, seq in [*((m, a.seq_len) for m in a.text_models), (vit, 0)]:
        t0 = time.time()
        report["serving"].append(serving(ref, seq, a))
        log.info("serving %s done in %.0f s", ref, time.time() - t0)
    report["distributed"] = distributed(a, vit)
    report["load_average_end"] = os.getloadavg()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    name = "parallel-tiny" if a.tiny else "parallel"
    atomic.write_text(a.out_dir / f"{name}.json", json.dumps({"env": env, "results": [report]}, indent=2))
    atomic.write_text(a.out_dir / f"{name}.md", markdown(report, env))
    print(markdown(report, env))


if __name__ == "__main__":
    main()
