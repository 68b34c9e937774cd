"""`slimformer parallel {serve,ddp,tp,pp}`: run a model on several processes (torchrun for ddp/tp/pp).

Everything a user can get wrong is checked here, before any process starts. torchrun's own multi-node
flags (`--nnodes 2 --node-rank 0 --rdzv-endpoint host:29500 ...`) are passed through unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from .app import app

console = Console()
parallel_app = typer.Typer(help="Parallel serving and data / tensor / pipeline parallel runs on torch.distributed.\n\n"
                                "Example: slimformer parallel serve --nproc 2 --threads 1 encoder-small",
                           no_args_is_help=True)
app.add_typer(parallel_app, name="parallel")

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
# torchrun flags that take a value / that are switches; anything else in the extra args is a mistake.
TORCHRUN_VALUE = ("--nnodes", "--node-rank", "--node_rank", "--rdzv-endpoint", "--rdzv_endpoint", "--rdzv-backend",
                  "--rdzv_backend", "--rdzv-id", "--rdzv_id", "--rdzv-conf", "--rdzv_conf", "--master-addr",
                  "--master_addr", "--master-port", "--master_port", "--max-restarts", "--max_restarts",
                  "--monitor-interval", "--monitor_interval", "--log-dir", "--log_dir", "--redirects", "--tee",
                  "--local-addr", "--local_addr")
TORCHRUN_SWITCH = ("--standalone",)


def torchrun_args(extra: list[str]) -> tuple[list[str], int]:
    """Check the pass-through torchrun flags; return them and the number of nodes they ask for."""
    from ..errors import SlimformerError

    out, nnodes, i = [], 1, 0
    while i < len(extra):
        arg = extra[i]
        name, _, inline = arg.partition("=")
        if name in TORCHRUN_SWITCH:
            out.append(arg)
        elif name in TORCHRUN_VALUE:
            value = inline if inline else (extra[i + 1] if i + 1 < len(extra) else None)
            if value is None:
                raise SlimformerError(f"torchrun option {name} needs a value")
            if not inline:
                i += 1
            out += [name, value]
            if name == "--nnodes":
                try:
                    nnodes = int(value.split(":")[-1])
                except ValueError:
                    raise SlimformerError(f"--nnodes must be N or MIN:MAX, got {value!r}") from None
        else:
            raise SlimformerError(f"unknown option {arg!r}; torchrun options passed through: "
                                  f"{', '.join(o for o in TORCHRUN_VALUE + TORCHRUN_SWITCH if '_' not in o)}")
        i += 1
    return out, nnodes


def write_json(path: Path | None, results: list[dict[str, Any]]) -> None:
    if path:
        from .. import api

        api.write_results(path, results)
        console.print(f"wrote {path}")


def run_job(job: str, spec: dict[str, Any], nproc: int, extra: list[str], hang_timeout: float) -> dict[str, Any]:
    from ..parallel.launch import JobFailed, LaunchConfig, launch

    args, _ = torchrun_args(extra)
    try:
        result = launch(job, spec, LaunchConfig(nproc=nproc, torchrun_args=args, hang_timeout=hang_timeout,
                                                stall_timeout=max(120.0, 6 * hang_timeout), quiet=True))
    except JobFailed as e:
        fail(e)
    if result.get("remote"):  # a node of a multi-node job that did not run global rank 0
        ranks = ", ".join(map(str, result["ranks"]))
        console.print(f"{job}: this node's ranks ({ranks}) finished; the result is reported (and written) on "
                      "the node that ran global rank 0")
        raise typer.Exit(0)
    return result


def fail(e) -> NoReturn:
    """A failed job: the workers' last lines (the launch kept them off the terminal), then one error line."""
    if e.log:
        print(f"worker log (last {len(e.log)} lines):", *e.log, sep="\n", file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)
    raise typer.Exit(1) from None


def load_checked(model: str):
    from .. import io

    return io.load(model)


@parallel_app.command(context_settings=EXTRA)
def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="model dir, Hugging Face dir or built-in name"),
    nproc: int = typer.Option(2, "--nproc", help="worker processes"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads per worker"),
    auto: bool = typer.Option(False, "--auto", help="probe every N x T layout that fills the cores; keep the best"),
    max_batch: int = typer.Option(16, "--max-batch", help="largest batch a worker forms"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="longest a request waits for its batch to fill"),
    queue_size: int = typer.Option(256, "--queue-size", help="bounded queue: requests beyond it are refused"),
    seq_len: int = typer.Option(128, "--seq-len", help="tokens per request for text models"),
    duration: float = typer.Option(10.0, "--duration", help="seconds of saturating load to measure"),
    json_out: Path = typer.Option(None, "--json", help="write {env, results} here"),
) -> None:
    """Serve MODEL with N processes x T threads under a saturating load; print throughput and p50/p99.

    Example: slimformer parallel serve --nproc 2 --threads 1 encoder-small --duration 10
    """
    from ..errors import SlimformerError
    from ..parallel.launch import JobFailed
    from ..parallel.serve import ServeConfig, serve_benchmark

    if ctx.args:
        raise SlimformerError(f"unknown option {ctx.args[0]!r} (serve starts its own worker processes; "
                              "torchrun options apply to ddp, tp and pp)")
    config = ServeConfig(nproc=nproc, threads=threads, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         queue_size=queue_size)
    config.validate()
    if duration <= 0:
        raise SlimformerError(f"--duration must be > 0 seconds, got {duration}")
    from ..bench.inputs import example_inputs

    example_inputs(load_checked(model), batch=1, seq_len=seq_len)  # shape errors before any worker starts
    try:
        r = serve_benchmark(model, config, seq_len=seq_len, duration=duration, auto=auto)
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    for p in r["auto_probes"]:
        console.print(f"probe {p['nproc']} x {p['threads']}: {p['throughput']:.1f} items/s")
    console.print(f"{model}: {r['nproc']} procs x {r['threads']} threads  {r['throughput']:.1f} items/s  "
                  f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  answered {r['answered']}  "
                  f"refused {r['refused']}  lost {r['lost']}")
    write_json(json_out, [{"name": f"serve {r['nproc']}x{r['threads']}", "recipe": "", "metrics": {},
                           "latency_ms": {"p50": r["p50_ms"], "p99": r["p99_ms"]}, "throughput": r["throughput"],
                           "batch": max_batch, "seq_len": seq_len, "threads": r["threads"], "dtype": "float32",
                           "serve": r}])


@parallel_app.command(context_settings=EXTRA)
def ddp(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="model to train: vit-tiny / a digits model dir, seq2seq-small, or any "
                                          "model or Hugging Face dir with --task random"),
    nproc: int = typer.Option(2, "--nproc", help="processes per node"),
    task: str = typer.Option("digits", "--task", help="digits | reverse | copy (synthetic seq2seq) | random "
                                                      "(random inputs and targets, any model)"),
    batch: int = typer.Option(32, "--batch", help="items per rank per step (global batch = batch x ranks)"),
    steps: int = typer.Option(100, "--steps", help="optimizer steps in all (a resumed run continues up to it)"),
    lr: float = typer.Option(3e-3, "--lr", help="peak learning rate (AdamW, warm-up + cosine)"),
    fsdp: bool = typer.Option(False, "--fsdp", help="FSDP2 fully_shard instead of DDP (sharded memory)"),
    out: Path = typer.Option(None, "--out", help="checkpoint model dir (rank 0 writes it atomically)"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="also checkpoint every N steps"),
    resume: Path = typer.Option(None, "--resume", help="continue from this checkpoint dir"),
    check: bool = typer.Option(False, "--check", help="first compare one step with a single-process step"),
    seq_len: int = typer.Option(12, "--seq-len", help="sequence length of the synthetic seq2seq / random task"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads per rank"),
    hang_timeout: float = typer.Option(20.0, "--hang-timeout", help="seconds without a heartbeat before a "
                                                                    "rank counts as hung"),
    json_out: Path = typer.Option(None, "--json", help="write {env, results} here"),
) -> None:
    """Data-parallel training (DDP or FSDP2) of MODEL on a task, with checkpoints and resume.

    Example: slimformer parallel ddp --nproc 2 vit-tiny --task digits --steps 200 --out runs/ddp

    Two machines (run on each, NODE = 0 or 1): slimformer parallel ddp --nproc 2 vit-tiny --nnodes 2
    --node-rank NODE --rdzv-backend c10d --rdzv-endpoint HOST0:29500
    """
    from ..errors import SlimformerError
    from ..parallel.data import is_checkpoint, validate_ddp

    _, nnodes = torchrun_args(ctx.args)
    if resume is not None and not is_checkpoint(resume):
        raise SlimformerError(f"--resume {resume}: not a training checkpoint dir (no trainer.json)")
    if steps < 0 or checkpoint_every < 0:
        raise SlimformerError(f"--steps and --checkpoint-every must be >= 0, got {steps} and {checkpoint_every}")
    validate_ddp(load_checked(str(resume or model)), task, nproc * nnodes, batch, fsdp)
    spec = {"model": model, "task": task, "batch": batch, "steps": steps, "lr": lr, "fsdp": fsdp, "check": check,
            "out": str(out.absolute()) if out else None, "checkpoint_every": checkpoint_every,
            "resume": str(resume.absolute()) if resume else None, "seq_len": seq_len, "threads": threads}
    r = run_job("ddp", spec, nproc, ctx.args, hang_timeout)
    for mode, c in r.get("check", {}).items():
        console.print(f"{mode}: one step vs single process on the global batch: max |Δweight| = "
                      f"{c['max_abs_diff_weights_after_step']:.2e}")
    if steps:
        console.print(f"{r['mode']} x{r['world']}: steps {r['start_step']}..{r['end_step']}  loss {r['final_loss']:.4f}"
                      f"  {r['items_per_s']:.1f} items/s" + (f"  checkpoint {out}" if out else ""))
    write_json(json_out, [{"name": r["mode"], "recipe": "", "metrics": {}, "throughput": r.get("items_per_s"),
                           "batch": r["global_batch"], "threads": threads, "dtype": "float32", "ddp": r}])


@parallel_app.command(context_settings=EXTRA)
def tp(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="built-in name, model dir or Hugging Face dir (separate q/k/v "
                                          "projections: not GPT-2)"),
    nproc: int = typer.Option(2, "--nproc", help="tensor-parallel degree (processes per node)"),
    batch: int = typer.Option(8, "--batch", help="items per forward call"),
    seq_len: int = typer.Option(128, "--seq-len", help="tokens for text models"),
    repeats: int = typer.Option(10, "--repeats", help="timed forward calls"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads per rank"),
    hang_timeout: float = typer.Option(20.0, "--hang-timeout", help="seconds without a heartbeat = hung"),
    json_out: Path = typer.Option(None, "--json", help="write {env, results} here"),
) -> None:
    """Tensor-parallel inference and one training step, both checked against a single process.

    Example: slimformer parallel tp --nproc 2 encoder-small --batch 8  (or a Hugging Face Llama / BERT dir)
    """
    from ..parallel.tensor import validate_tp

    _, nnodes = torchrun_args(ctx.args)
    validate_tp(load_checked(model), nproc * nnodes)
    spec = {"model": model, "batch": batch, "seq_len": seq_len, "repeats": repeats, "threads": threads}
    r = run_job("tp", spec, nproc, ctx.args, hang_timeout)
    for row in r["results"]:
        console.print(f"{row['model']} tp={row['tp']}: {row['inference']['throughput']:.1f} items/s  max |Δout| "
                      f"{row['max_abs_diff_output']:.2e}  max |Δweight| after a step "
                      f"{row['max_abs_diff_weights_after_step']:.2e}")
    write_json(json_out, [_row(f"tp{row['tp']}", row, threads) for row in r["results"]])


@parallel_app.command(context_settings=EXTRA)
def pp(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="reference ViT / Encoder / Decoder, or a Hugging Face Llama-style "
                                          "or BERT-style base dir"),
    nproc: int = typer.Option(2, "--nproc", help="pipeline stages (processes per node)"),
    schedule: str = typer.Option("gpipe", "--schedule", help="gpipe | 1f1b"),
    microbatches: int = typer.Option(4, "--microbatches", help="microbatches per batch"),
    batch: int = typer.Option(8, "--batch", help="items per step (split into microbatches)"),
    seq_len: int = typer.Option(128, "--seq-len", help="tokens for text models"),
    repeats: int = typer.Option(5, "--repeats", help="timed calls"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads per rank"),
    hang_timeout: float = typer.Option(20.0, "--hang-timeout", help="seconds without a heartbeat = hung"),
    json_out: Path = typer.Option(None, "--json", help="write {env, results} here"),
) -> None:
    """Pipeline-parallel inference and one training step (split by layer), checked against a single
    process, with the measured pipeline bubble beside the theoretical (p-1)/(m+p-1).

    Example: slimformer parallel pp --nproc 2 vit-tiny --schedule 1f1b --microbatches 4
    """
    from ..parallel.pipeline import validate_pp

    _, nnodes = torchrun_args(ctx.args)
    validate_pp(load_checked(model), nproc * nnodes, microbatches, batch, schedule)
    spec = {"model": model, "schedule": schedule, "microbatches": microbatches, "batch": batch,
            "seq_len": seq_len, "repeats": repeats, "threads": threads}
    r = run_job("pp", spec, nproc, ctx.args, hang_timeout)
    for row in r["results"]:
        console.print(f"{row['model']} pp={row['stages']} {row['schedule']} m={row['microbatches']}: "
                      f"{row['inference']['throughput']:.1f} items/s  max |Δout| {row['max_abs_diff_output']:.2e}  "
                      f"max |Δweight| {row['max_abs_diff_weights_after_step']:.2e}  bubble "
                      f"{row['train_bubble_measured']:.2f} (theory {row['train_bubble_theory']:.2f})")
    write_json(json_out, [_row(f"pp{row['stages']}-{row['schedule']}-m{row['microbatches']}", row, threads)
                          for row in r["results"]])


def _row(name: str, row: dict[str, Any], threads: int) -> dict[str, Any]:
    inf = row["inference"]
    return {"name": name, "recipe": "", "metrics": {}, "latency_ms": {"p50": inf["p50_ms"], "p99": inf["p99_ms"]},
            "throughput": inf["throughput"], "batch": row["batch"], "seq_len": row["seq_len"], "threads": threads,
            "dtype": "float32", "detail": json.loads(json.dumps(row))}
