"""The jobs `slimformer parallel ddp / tp / pp` run on every rank: `JOBS[name](spec, worker)`.

Each applies one technique from `data`, `tensor` or `pipeline` to a model and measures it: throughput
with fixed call counts (every rank must run the same collectives), and exactness, by comparing the
parallel output and one SGD step's updated weights with a single process on the same batch. SGD,
because its update is proportional to the gradient: the comparison sees gradient errors as they are
(Adam's g/sqrt(g^2) would blow up rounding noise on near-zero gradients). Comparisons run with dropout
off (eval mode) so both sides compute the same function; training itself runs in train mode.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.pipelining import PipelineStage

from .. import io
from ..tasks.training import cosine_schedule
from .common import Batch, loss, max_param_diff, output_of, random_batch, timed, trainable
from .data import (
    load_trainer_state,
    make_data,
    make_optimizer,
    save_checkpoint,
    task_loss,
    unwrap,
    wrap,
)
from .pipeline import SCHEDULES, Stage, build_stage, carried_state, sync_tied, tied_weights, validate_pp
from .tensor import apply_tp


def sgd_step(model: nn.Module, batch: Batch, criterion: Callable[[Tensor, Tensor], Tensor] = loss) -> None:
    """One SGD step (lr 0.1) on `batch`, dropout off."""
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion(output_of(model, batch.args, batch.kwargs), batch.target).backward()
    opt.step()


# ---- tensor parallel -----------------------------------------------------------------------------------

def run_tp(spec: dict[str, Any], worker) -> dict[str, Any]:
    """TP inference (timed, and compared with the single-process output) and one training step whose
    updated weights are compared with a single-process step on the same batch, for each model."""
    mesh = init_device_mesh(worker.device.type, (worker.world,))
    results = [tp_row(ref, spec, mesh, worker) for ref in spec.get("models") or [spec["model"]]]
    return {"job": "tp", "world": worker.world, "results": results}


def tp_row(ref: str, spec: dict[str, Any], mesh: DeviceMesh, worker) -> dict[str, Any]:
    torch.manual_seed(spec.get("seed", 0))
    model = io.load(ref).to(worker.device).eval()
    batch = random_batch(model, spec["batch"], spec["seq_len"], spec.get("seed", 0)).to(worker.device)
    reference = copy.deepcopy(model)
    tp_model = apply_tp(model, mesh)
    worker.progress()
    row: dict[str, Any] = {"model": ref, "tp": worker.world, "batch": spec["batch"], "seq_len": spec["seq_len"]}
    with torch.inference_mode():
        out = output_of(tp_model, batch.args, batch.kwargs)
        if spec.get("check", True):
            expected = output_of(reference, batch.args, batch.kwargs)
            row["max_abs_diff_output"] = (out - expected).abs().max().item()
            row["max_abs_output"] = expected.abs().max().item()
        timing = timed(lambda: output_of(tp_model, batch.args, batch.kwargs), spec["batch"], spec.get("warmup", 2),
                       spec.get("repeats", 5), tick=worker.progress)
    row["inference"] = timing.to_dict()
    worker.progress()
    if spec.get("train_step", True):
        for m in (tp_model, reference):
            sgd_step(m, batch)
        row["max_abs_diff_weights_after_step"], row["worst_param"] = max_param_diff(tp_model, reference)
    worker.progress()
    return row


# ---- pipeline parallel ---------------------------------------------------------------------------------

def run_pp(spec: dict[str, Any], worker) -> dict[str, Any]:
    """For each model, schedule and microbatch count: timed PP inference compared with the
    single-process output, one training step compared with a single-process step, and the bubble."""
    results = []
    for ref in spec.get("models") or [spec["model"]]:
        for schedule_name in spec.get("schedules") or [spec.get("schedule", "gpipe")]:
            for m in spec.get("microbatch_list") or [spec.get("microbatches", worker.world)]:
                row = pp_row(ref, schedule_name, m, spec, worker)
                gathered: list = [None] * worker.world
                dist.all_gather_object(gathered, row)
                results.append(merge_rows(gathered))
    return {"job": "pp", "world": worker.world, "results": results}


def pp_row(ref: str, schedule_name: str, m: int, spec: dict[str, Any], worker) -> dict[str, Any]:
    rank, world, n = worker.rank, worker.world, spec["batch"]
    torch.manual_seed(spec.get("seed", 0))
    model = io.load(ref).eval()
    validate_pp(model, world, m, n, schedule_name)
    model.to(worker.device)
    batch = random_batch(model, n, spec["seq_len"], spec.get("seed", 0)).to(worker.device)
    micro = batch.rows(0, n // m)
    flat, micro_flat = (*batch.args, *batch.kwargs.values()), (*micro.args, *micro.kwargs.values())
    reference = copy.deepcopy(model) if spec.get("check", True) else None
    tied = tied_weights(model)
    sample = micro_flat if rank == 0 else carried_state(model, micro.args, micro.kwargs)  # what this stage gets
    stage_mod = build_stage(model, rank, world, tuple(batch.kwargs), len(batch.args))
    del model  # this rank keeps only its stage's layers
    # Separate stages for inference and training: a schedule with a loss computes it even in eval().
    infer_schedule = SCHEDULES[schedule_name](PipelineStage(stage_mod, rank, world, worker.device), m)
    schedule = SCHEDULES[schedule_name](PipelineStage(stage_mod, rank, world, worker.device), m, loss_fn=loss)
    row: dict[str, Any] = {"model": ref, "schedule": schedule_name, "stages": world, "microbatches": m,
                           "batch": n, "seq_len": spec["seq_len"]}

    def infer():
        with torch.no_grad():
            return infer_schedule.step(*flat) if rank == 0 else infer_schedule.step()

    out = infer()
    if reference is not None and rank == world - 1:
        with torch.no_grad():
            expected = output_of(reference, batch.args, batch.kwargs)
        row["max_abs_diff_output"] = (out - expected).abs().max().item()
        row["max_abs_output"] = expected.abs().max().item()
    worker.progress()
    timing = timed(infer, n, spec.get("warmup", 1), spec.get("repeats", 5), tick=worker.progress)
    row["inference"] = timing.to_dict()
    t_fwd = stage_step_time(stage_mod, sample, micro.target, False)
    row.update(bubble(t_fwd, timing.p50_ms / 1000, m, world, "inference"))
    worker.progress()
    if spec.get("train_step", True) and trainable(stage_mod):
        row.update(pp_train_step(stage_mod, schedule, flat, batch, reference, tied, worker, spec, m, sample))
    worker.progress()
    return row


def pp_train_step(stage_mod: Stage, schedule, flat: tuple, batch: Batch, reference: nn.Module | None, tied: list,
                  worker, spec: dict, m: int, sample: tuple) -> dict[str, Any]:
    """One optimizer step through the pipeline; timed, and (with a reference) compared with one step of
    the unsplit model on the whole batch."""
    rank, world = worker.rank, worker.world
    opt = torch.optim.SGD(stage_mod.parameters(), lr=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(*flat)
        elif rank == world - 1:
            schedule.step(target=batch.target)
        else:
            schedule.step()
        sync_tied(stage_mod, tied, world)
        opt.step()

    step()
    row: dict[str, Any] = {}
    if reference is not None:
        sgd_step(reference, batch)
        row["max_abs_diff_weights_after_step"], row["worst_param"] = max_param_diff(stage_mod, reference)
    timing = timed(step, spec["batch"], 0, spec.get("train_repeats", 3))
    row["train"] = timing.to_dict()
    t = stage_step_time(stage_mod, sample, batch.target[: spec["batch"] // m], True)
    return {**row, **bubble(t, timing.p50_ms / 1000, m, world, "train")}


def stage_step_time(stage: Stage, inputs: tuple, target: Tensor, backward: bool, repeats: int = 3) -> float:
    """Seconds one microbatch takes on this stage alone (no communication): the t in T = (m+p-1)·t.
    `inputs`: the model's inputs on the first stage, what the previous stage sends on the others."""
    if not stage.is_first:
        inputs = tuple(t.clone().requires_grad_(backward) for t in inputs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = stage(*inputs)
            if backward:
                (loss(out, target) if stage.is_last else out[0].sum()).backward()
        best = min(best, time.perf_counter() - t0)
    stage.zero_grad(set_to_none=True)
    return best


def bubble(t_micro: float, total: float, m: int, p: int, kind: str) -> dict[str, float]:
    """This rank's idle fraction 1 - m·t/T, beside the theory (p-1)/(m+p-1)."""
    return {f"{kind}_stage_ms_per_microbatch": t_micro * 1000,
            f"{kind}_bubble_measured": max(0.0, 1 - m * t_micro / total),
            f"{kind}_bubble_theory": (p - 1) / (m + p - 1)}


def merge_rows(rows: list[dict]) -> dict:
    """One row per configuration: rank-independent fields once, per-rank ones as lists; the pipeline's
    bubble is set by its slowest stage, so we report the bubble seen by the busiest rank."""
    out = dict(rows[-1])
    for kind in ("inference", "train"):
        key = f"{kind}_stage_ms_per_microbatch"
        if key in out:
            times = [r[key] for r in rows]
            busiest = max(range(len(rows)), key=lambda i: times[i])
            out[key] = times
            out[f"{kind}_bubble_measured"] = rows[busiest][f"{kind}_bubble_measured"]
    diffs = [r["max_abs_diff_weights_after_step"] for r in rows if "max_abs_diff_weights_after_step" in r]
    if diffs:
        out["max_abs_diff_weights_after_step"] = max(diffs)
    return out


# ---- data parallel -------------------------------------------------------------------------------------

def run_ddp(spec: dict[str, Any], worker) -> dict[str, Any]:
    """Train on the task; optionally first check one step against the single-process step."""
    torch.manual_seed(spec.get("seed", 0))
    resume = spec.get("resume")
    model = io.load(resume or spec["model"]).to(worker.device)
    data = make_data(spec["task"], model, spec.get("seed", 0), spec.get("seq_len", 12))
    result: dict[str, Any] = {"job": "ddp", "mode": "fsdp" if spec.get("fsdp") else "ddp", "world": worker.world,
                              "task": spec["task"], "batch_per_rank": spec["batch"],
                              "global_batch": spec["batch"] * worker.world, "model": spec["model"]}
    if spec.get("check"):
        modes = spec.get("check_modes") or ["fsdp" if spec.get("fsdp") else "ddp"]
        result["check"] = {mode: ddp_check_step(copy.deepcopy(model), data, spec, worker, mode == "fsdp")
                           for mode in modes}
        worker.progress()
    if spec.get("steps", 0) > 0:
        result.update(ddp_train(model, data, spec, worker))
    return result


def ddp_check_step(model: nn.Module, data, spec: dict[str, Any], worker, fsdp: bool) -> dict[str, float]:
    """One SGD step of the wrapped model on this rank's shard vs one single-process step on the whole
    global batch: the max |difference| of the updated weights."""
    reference = copy.deepcopy(model)
    global_batch = spec["batch"] * worker.world
    whole = data.shard(0, 0, global_batch, 0, 1, augment=False)
    mine = data.shard(0, 0, global_batch, worker.rank, worker.world, augment=False)
    parallel = wrap(model, {**spec, "fsdp": fsdp}, worker, probe=whole)
    criterion = lambda out, target: task_loss(out, target)[0]  # noqa: E731
    for m, shard in ((parallel, mine), (reference, whole)):
        sgd_step(m, shard.to(worker.device), criterion)
    diff, where = max_param_diff(unwrap(parallel), reference)
    return {"max_abs_diff_weights_after_step": diff, "worst_param": where}


def ddp_train(model: nn.Module, data, spec: dict[str, Any], worker) -> dict[str, Any]:
    rank, world = worker.rank, worker.world
    global_batch = spec["batch"] * world
    total = spec["steps"]
    template = copy.deepcopy(model) if rank == 0 else None  # plain module that checkpoints are written from
    parallel = wrap(model, spec, worker, probe=data.shard(0, 0, world, 0, 1, augment=False))
    optimizer = make_optimizer(parallel, spec.get("lr", 3e-3))
    scheduler = cosine_schedule(optimizer, total, spec.get("warmup_frac", 0.05))
    start = 0
    if spec.get("resume"):
        start = load_trainer_state(Path(spec["resume"]), parallel, optimizer, scheduler)
    per_epoch = data.steps_per_epoch(global_batch)
    parallel.train()
    times, losses, correct, items = [], [], 0, 0
    for step in range(start, total):
        worker.progress(step)
        t0 = time.perf_counter()
        shard = data.shard(step // per_epoch, step % per_epoch, global_batch, rank, world,
                           augment=spec.get("augment", True)).to(worker.device)
        step_loss, n_correct, n_items = task_loss(output_of(parallel, shard.args, shard.kwargs), shard.target)
        worker.progress(step)  # after the forward, before the backward's collectives: a rank stuck in its
        optimizer.zero_grad(set_to_none=True)  # own compute shows up here as the one that stopped first
        step_loss.backward()
        nn.utils.clip_grad_norm_(parallel.parameters(), spec.get("grad_clip", 1.0))
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter() - t0)
        losses.append(step_loss.item())
        correct, items = correct + n_correct, items + n_items
        every = spec.get("checkpoint_every", 0)
        if spec.get("out") and ((every and (step + 1) % every == 0) or step + 1 == total):
            save_checkpoint(Path(spec["out"]), parallel, optimizer, scheduler, template, step + 1, spec, worker)
    timed_steps = times[spec.get("warmup_steps", 2):] or times
    local_rate = spec["batch"] * len(timed_steps) / max(sum(timed_steps), 1e-9)
    rates: list = [local_rate] * world
    if world > 1:
        dist.all_gather_object(rates, local_rate)
    return {"start_step": start, "end_step": total, "final_loss": losses[-1] if losses else None,
            "train_accuracy": correct / max(items, 1),
            "items_per_s": sum(rates), "timed_steps": len(timed_steps),
            "step_ms_p50": 1000 * sorted(timed_steps)[len(timed_steps) // 2] if timed_steps else None,
            "checkpoint": spec.get("out")}


JOBS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {"ddp": run_ddp, "tp": run_tp, "pp": run_pp}
