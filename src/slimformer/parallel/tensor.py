"""Tensor parallelism with DTensor: split every attention and MLP across the ranks of a 1-D mesh.

The plan is data, as in torchtitan: a dict from submodule name to a `ParallelStyle`. Megatron's
layout needs one all-reduce per sub-layer: q, k, v and fc1 are split by output features
(`ColwiseParallel`, so each rank owns whole heads / a slice of the hidden layer and needs no
communication), o and fc2 by input features (`RowwiseParallel`, whose partial sums are all-reduced
back to a full replicated activation). Norms and embeddings stay replicated. Our `Attention` keeps
q, k, v separate and splits heads with `view(b, t, -1, head_dim)`, so a rank simply sees
`n_heads / tp` heads; we record that in `attn.n_heads` for readers.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from .. import io
from ..errors import SlimformerError
from ..models.attention import Attention
from ..models.blocks import MLP
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


def tp_plan(model: nn.Module) -> dict[str, ParallelStyle]:
    """{submodule name: style} for every attention (q, k, v colwise; o rowwise) and MLP (fc1 colwise;
    fc2 rowwise) of a reference model. The same rule covers ViT, Encoder, Decoder (self- and
    cross-attention) and Seq2Seq, because they are built from the same two modules."""
    family(model)
    plan: dict[str, ParallelStyle] = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            plan.update({f"{name}.q": ColwiseParallel(), f"{name}.k": ColwiseParallel(),
                         f"{name}.v": ColwiseParallel(), f"{name}.o": RowwiseParallel()})
        elif isinstance(module, MLP):
            plan.update({f"{name}.fc1": ColwiseParallel(), f"{name}.fc2": RowwiseParallel()})
    return plan


def validate_tp(model: nn.Module, degree: int) -> None:
    """Refuse, before any process starts, what cannot be split `degree` ways, stating rule and numbers."""
    check_positive("--nproc (tensor-parallel degree)", degree)
    refuse_token_reduction(model, "tensor parallel")
    if not trainable(model):
        raise SlimformerError("tensor parallel shards plain float32 weights; this model has quantized or bf16 "
                              "weights (an int8 / bf16 recipe): serve it with `slimformer parallel serve`, or "
                              "parallelize the float model and quantize per rank")
    plan = tp_plan(model)
    modules = dict(model.named_modules())
    for name in plan:
        m = modules[name]
        if type(m) is not nn.Linear:
            raise SlimformerError(
                f"tensor parallel splits plain nn.Linear layers, but {name} is a {type(m).__name__} (made by a "
                "compression recipe); use `slimformer parallel ddp/pp/serve` for this model, or apply the "
                "recipe after parallelizing")
    for name, m in modules.items():
        if isinstance(m, Attention):
            heads = m.q.out_features // m.head_dim
            if heads % degree:
                raise SlimformerError(f"{name}: number of heads {heads} must be divisible by the tensor-parallel "
                                      f"degree {degree} (each rank owns whole heads)")
        elif isinstance(m, MLP) and m.fc1.out_features % degree:
            raise SlimformerError(f"{name}: hidden size {m.fc1.out_features} must be divisible by the "
                                  f"tensor-parallel degree {degree}")


def apply_tp(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Parallelize `model` in place over the 1-D `mesh` with `tp_plan`; each rank keeps n_heads / tp heads."""
    degree = mesh.size()
    validate_tp(model, degree)
    parallelize_module(model, mesh, tp_plan(model))
    for m in model.modules():
        if isinstance(m, Attention):
            m.n_heads = m.n_heads // degree
    return model


def run_job(spec: dict[str, Any], worker) -> dict[str, Any]:
    """TP inference (timed, and compared with the single-process output) and one training step whose
    updated weights are compared with a single-process step on the same batch, for each model."""
    mesh = init_device_mesh(worker.device.type, (worker.world,))
    results = [run_model(ref, spec, mesh, worker) for ref in spec.get("models") or [spec["model"]]]
    return {"job": "tp", "world": worker.world, "results": results}


def run_model(ref: str, spec: dict[str, Any], mesh: DeviceMesh, worker) -> dict[str, Any]:
    torch.manual_seed(spec.get("seed", 0))
    model = io.load(ref).to(worker.device)
    inputs, target = batch_for(model, spec["batch"], spec["seq_len"], spec.get("seed", 0))
    inputs = tuple(x.to(worker.device) for x in inputs)
    target = target.to(worker.device)
    reference = copy.deepcopy(model)
    tp_model = apply_tp(model, mesh)
    worker.progress()
    row: dict[str, Any] = {"model": ref, "tp": worker.world, "batch": spec["batch"], "seq_len": spec["seq_len"]}
    with torch.inference_mode():
        out = output_of(tp_model, inputs)
        if spec.get("check", True):
            expected = output_of(reference, inputs)
            row["max_abs_diff_output"] = (out - expected).abs().max().item()
            row["max_abs_output"] = expected.abs().max().item()
        timing = timed(lambda: output_of(tp_model, inputs), spec["batch"], spec.get("warmup", 2),
                       spec.get("repeats", 5), tick=worker.progress)
    row["inference"] = timing.to_dict()
    worker.progress()
    if spec.get("train_step", True):
        criterion = loss_fn(reference)
        for m in (tp_model, reference):
            m.train()
            # SGD: the update is proportional to the gradient, so the comparison sees gradient errors
            # as they are (Adam's g/sqrt(g^2) would blow up rounding noise on near-zero gradients).
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            criterion(output_of(m, inputs), target).backward()
            opt.step()
            m.eval()
        row["max_abs_diff_weights_after_step"], row["worst_param"] = max_param_diff(tp_model, reference)
    worker.progress()
    return row
