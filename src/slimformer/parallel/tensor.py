"""Tensor parallelism with DTensor: split every attention and FFN across the ranks of a 1-D mesh.

The plan is data, as in torchtitan, and comes from the model's family (`Family.tp_plan`): a dict from
submodule name to "colwise" / "rowwise", turned here into `ParallelStyle`s. Megatron's layout needs one
all-reduce per sub-layer: q, k, v (and a gated FFN's gate and up) are split by output features
(`ColwiseParallel`, so each rank owns whole heads / a slice of the hidden layer and needs no
communication), o and down by input features (`RowwiseParallel`, whose partial sums are all-reduced
back to a full replicated activation). Norms and embeddings stay replicated. The attention modules
split heads with `view(..., -1, head_dim)`, so a rank simply sees `n_heads / tp` heads; `site.set_heads`
records that in the module's own counts. The job harness lives in `jobs.py`.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from ..errors import SlimformerError
from ..families import family_of
from .common import check_positive, refuse_token_reduction, trainable

STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


def tp_plan(model: nn.Module, degree: int = 1) -> dict[str, ParallelStyle]:
    """{submodule name: style} for every attention and FFN, from the model's family."""
    plan = family_of(model, "tensor parallel").tp_plan(model, degree)
    return {name: STYLES[style]() for name, style in plan.items()}


def validate_tp(model: nn.Module, degree: int) -> None:
    """Refuse, before any process starts, what cannot be split `degree` ways, stating rule and numbers."""
    check_positive("--nproc (tensor-parallel degree)", degree)
    refuse_token_reduction(model, "tensor parallel")
    if not trainable(model):
        raise SlimformerError("tensor parallel shards plain float32 weights; this model has quantized or bf16 "
                              "weights (an int8 / bf16 recipe): serve it with `slimformer parallel serve`, or "
                              "parallelize the float model and quantize per rank")
    modules = dict(model.named_modules())
    for name in family_of(model, "tensor parallel").tp_plan(model, degree):
        if type(modules[name]) is not nn.Linear:
            raise SlimformerError(
                f"tensor parallel splits plain nn.Linear layers, but {name} is a {type(modules[name]).__name__} "
                "(made by a compression recipe); use `slimformer parallel ddp/pp/serve` for this model, or apply "
                "the recipe after parallelizing")


def apply_tp(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Parallelize `model` in place over the 1-D `mesh`; each rank keeps n_heads / tp (and kv / tp) heads."""
    degree = mesh.size()
    validate_tp(model, degree)
    sites = family_of(model, "tensor parallel").head_sites(model)  # counts read before the weights are split
    parallelize_module(model, mesh, tp_plan(model, degree))
    for site in sites:
        site.set_heads(site.n_heads // degree, site.kv_heads // degree)
    return model
