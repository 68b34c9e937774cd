"""Pipeline parallelism with `torch.distributed.pipelining`: consecutive layers on consecutive ranks.

The split is by layer: rank r of p gets a contiguous slice of the blocks (earlier ranks take the
remainder), the first rank also the embedding and the last the final norm and head. Each slice is a
`Stage` module that reuses the model's own submodules under their original names, so its
`named_parameters()` line up with the unsplit model's. The batch is cut into m microbatches; GPipe runs
all forwards then all backwards, 1F1B interleaves them to hold fewer activations. Both leave the
pipeline idle for (p-1)/(m+p-1) of the time when stages take equal time; the job measures it.

A Decoder ties its output layer to its input embedding; split across stages the two copies are kept
equal by adding their gradients across the first and last rank (what the tie does in one process).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from .. import io
from ..errors import SlimformerError
from ..models.attention import padding_bias
from .common import (
    batch_for,
    check_positive,
    family,
    loss_fn,
    max_param_diff,
    output_of,
    refuse_token_reduction,
    timed,
    trainable,
)

log = logging.getLogger(__name__)

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
# Parts of each family that are not blocks: which belong to the first stage, which to the last.
FIRST = {"vit": ("patch_embed", "cls_token", "pos_emb", "drop"), "encoder": ("tok_emb", "pos_emb", "drop"),
         "decoder": ("tok_emb", "pos_emb", "drop")}
LAST = {"vit": ("norm", "head"), "encoder": ("norm",), "decoder": ("norm", "lm_head")}


def split_layers(n_layers: int, stages: int) -> list[tuple[int, int]]:
    """[(first, end)] block ranges, as even as possible, earlier stages taking one more."""
    base, extra = divmod(n_layers, stages)
    bounds, lo = [], 0
    for s in range(stages):
        hi = lo + base + (s < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def validate_pp(model: nn.Module, stages: int, microbatches: int, batch: int, schedule: str) -> None:
    """Refuse, before any process starts, a split that cannot work, stating the rule and the numbers."""
    check_positive("--nproc (pipeline stages)", stages)
    check_positive("--microbatches", microbatches)
    fam = family(model)
    refuse_token_reduction(model, "pipeline parallel")
    if fam not in FIRST:
        raise SlimformerError(f"pipeline parallel splits ViT, Encoder and Decoder stacks; a {fam} model has two "
                              "stacks (every decoder stage needs the encoder memory): use ddp or tp for it")
    n_layers = len(model.blocks)
    if stages > n_layers:
        raise SlimformerError(f"--nproc {stages} pipeline stages is more than the model's {n_layers} layers "
                              "(each stage needs at least one layer)")
    if schedule not in SCHEDULES:
        raise SlimformerError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if batch % microbatches:
        raise SlimformerError(f"batch {batch} must be divisible by --microbatches {microbatches} "
                              "(equal microbatches keep the averaged loss equal to the full-batch loss)")
    if schedule == "1f1b" and microbatches < stages:
        raise SlimformerError(f"1F1B needs --microbatches >= stages: {microbatches} < {stages}")


class Stage(nn.Module):
    """Blocks [lo, hi) of `model`, plus its embedding on the first stage and norm/head on the last.

    Between stages flows `x` `[batch, tokens, d_model]` (and, for an Encoder, the additive padding bias
    `[batch, 1, 1, tokens]`, computed once from the mask on the first stage).
    """

    def __init__(self, model: nn.Module, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.family, self.first, self.last = family(model), first, last
        # the unbound method, not `model.embed`: a bound one would keep the whole model alive on every rank
        self._embed_fn = type(model).embed if self.family != "decoder" else None
        for name in (FIRST[self.family] if first else ()) + (LAST[self.family] if last else ()):
            part = getattr(model, name)
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            else:
                self.add_module(name, part)
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(lo, hi)})
        self.d_model = model.config.d_model
        self.n_tokens = model.config.n_patches + 1 if self.family == "vit" else None
        self.tied_shape = tuple(model.tok_emb.weight.shape) if self.family == "decoder" else None

    def embed(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The model's own embedding code run on this stage's copies of its embedding modules."""
        if self.family == "decoder":
            pos = torch.arange(x.shape[1], device=x.device)
            return self.drop(self.tok_emb(x) + self.pos_emb(pos)), None
        bias = padding_bias(mask, torch.float32) if self.family == "encoder" else None
        return self._embed_fn(self, x), bias  # ViT.embed / Encoder.embed with self = this stage

    def forward(self, x: Tensor, extra: Tensor | None = None):
        """First stage: the model's inputs (images `[B, C, H, W]`; tokens `[B, T]`, plus a mask `[B, T]`
        for an Encoder). Later stages: hidden states `[B, T, d]` (plus the Encoder's bias). The last
        stage returns the model's output; the others what the next stage takes."""
        if self.first:
            x, extra = self.embed(x, extra)
        for block in self.blocks.values():
            if self.family == "encoder":
                x = block(x, extra)
            elif self.family == "decoder":
                x, _ = block(x)
            else:
                x = block(x)
        if self.last:
            x = self.norm(x)
            if self.family == "vit":
                return self.head(x[:, 0])
            return self.lm_head(x) if self.family == "decoder" else x
        return (x, extra) if self.family == "encoder" else x


def build_stage(model: nn.Module, rank: int, stages: int) -> Stage:
    lo, hi = split_layers(len(model.blocks), stages)[rank]
    return Stage(model, lo, hi, rank == 0, rank == stages - 1)


def sync_tied(stage: Stage, world: int) -> None:
    """Sum the gradients of a Decoder's tied embedding / output matrix across the first and last stage
    (middle stages add zeros: a collective needs every rank of the group)."""
    if stage.family != "decoder" or world == 1:
        return
    own = stage.tok_emb.weight if stage.first else (stage.lm_head.weight if stage.last else None)
    device = next(stage.parameters()).device
    grad = own.grad if own is not None and own.grad is not None else torch.zeros(stage.tied_shape, device=device)
    dist.all_reduce(grad)
    if own is not None:
        own.grad = grad


def stage_step_time(stage: Stage, args: tuple, target: Tensor, criterion, backward: bool, repeats: int = 3) -> float:
    """Seconds one microbatch takes on this stage alone (no communication): the t in T = (m+p-1)·t."""
    inputs = args
    if not stage.first:  # feed what the previous stage would send, with the right shape
        tokens = stage.n_tokens or args[0].shape[1]
        device = next(stage.parameters()).device
        x = torch.randn(args[0].shape[0], tokens, stage.d_model, device=device).requires_grad_(backward)
        inputs = (x, padding_bias(args[1], torch.float32)) if stage.family == "encoder" else (x,)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = stage(*inputs)
            if backward:
                out = out[0] if isinstance(out, tuple) else out
                (criterion(out, target) if stage.last else out.sum()).backward()
        best = min(best, time.perf_counter() - t0)
    stage.zero_grad(set_to_none=True)
    return best


def run_job(spec: dict[str, Any], worker) -> dict[str, Any]:
    """For each model, schedule and microbatch count: timed PP inference compared with the
    single-process output, one training step compared with a single-process step, and the bubble."""
    results = []
    for ref in spec.get("models") or [spec["model"]]:
        for schedule_name in spec.get("schedules") or [spec.get("schedule", "gpipe")]:
            for m in spec.get("microbatch_list") or [spec.get("microbatches", worker.world)]:
                row = run_config(ref, schedule_name, m, spec, worker)
                gathered: list = [None] * worker.world
                dist.all_gather_object(gathered, row)
                results.append(merge_rows(gathered))
    return {"job": "pp", "world": worker.world, "results": results}


def run_config(ref: str, schedule_name: str, m: int, spec: dict[str, Any], worker) -> dict[str, Any]:
    rank, world, batch = worker.rank, worker.world, spec["batch"]
    torch.manual_seed(spec.get("seed", 0))
    model = io.load(ref)
    validate_pp(model, world, m, batch, schedule_name)
    inputs, target = batch_for(model, batch, spec["seq_len"], spec.get("seed", 0))
    inputs, target = tuple(x.to(worker.device) for x in inputs), target.to(worker.device)
    model.to(worker.device)
    reference = copy.deepcopy(model) if spec.get("check", True) else None
    criterion = loss_fn(model)
    stage_mod = build_stage(model, rank, world)
    del model  # this rank keeps only its stage's layers
    # Separate stages for inference and training: a schedule with a loss computes it even in eval().
    infer_schedule = SCHEDULES[schedule_name](PipelineStage(stage_mod, rank, world, worker.device), m)
    schedule = SCHEDULES[schedule_name](PipelineStage(stage_mod, rank, world, worker.device), m, loss_fn=criterion)
    row: dict[str, Any] = {"model": ref, "schedule": schedule_name, "stages": world, "microbatches": m,
                           "batch": batch, "seq_len": spec["seq_len"]}

    def infer():
        with torch.no_grad():
            return infer_schedule.step(*inputs) if rank == 0 else infer_schedule.step()

    out = infer()
    if reference is not None and rank == world - 1:
        with torch.no_grad():
            expected = output_of(reference, inputs)
        row["max_abs_diff_output"] = (out - expected).abs().max().item()
        row["max_abs_output"] = expected.abs().max().item()
    worker.progress()
    timing = timed(infer, batch, spec.get("warmup", 1), spec.get("repeats", 5), tick=worker.progress)
    row["inference"] = timing.to_dict()
    micro_args = tuple(a[: batch // m] for a in inputs)
    t_fwd = stage_step_time(stage_mod, micro_args, target[: batch // m], criterion, False)
    row.update(bubble(t_fwd, timing.p50_ms / 1000, m, world, "inference"))
    worker.progress()
    if spec.get("train_step", True) and trainable(stage_mod):
        row.update(train_step(stage_mod, schedule, inputs, target, reference, criterion, rank, world,
                              spec, m, micro_args))
    worker.progress()
    return row


def train_step(stage_mod: Stage, schedule, inputs: tuple, target: Tensor, reference: nn.Module | None,
               criterion, rank: int, world: int, spec: dict, m: int, micro_args: tuple) -> dict[str, Any]:
    """One optimizer step through the pipeline; timed, and (with a reference) compared with one step of
    the unsplit model on the whole batch."""
    opt = torch.optim.SGD(stage_mod.parameters(), lr=0.1)  # update ∝ gradient: the comparison sees gradient errors
    stage_mod.train()

    def step():
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(*inputs)
        elif rank == world - 1:
            schedule.step(target=target)
        else:
            schedule.step()
        sync_tied(stage_mod, world)
        opt.step()

    step()
    row: dict[str, Any] = {}
    if reference is not None:
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
        reference.train()
        criterion(output_of(reference, inputs), target).backward()
        ref_opt.step()
        row["max_abs_diff_weights_after_step"], row["worst_param"] = max_param_diff(stage_mod, reference)
    timing = timed(step, spec["batch"], 0, spec.get("train_repeats", 3))
    row["train"] = timing.to_dict()
    mb_target = target[: spec["batch"] // m]
    t = stage_step_time(stage_mod, micro_args, mb_target, criterion, True)
    train_bubble = bubble(t, timing.p50_ms / 1000, m, world, "train")
    stage_mod.eval()
    return {**row, **train_bubble}


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
