"""Calibration: run the caller's (or the task's) data through a model and fold what each module sees.

Every data-driven step needs the same loop (pruning scores, layer influence, static int8 ranges), so it
lives here and no technique imports another to get it.

Static activation ranges for int8, with SmoothQuant's outlier migration: dynamic int8 measures every
token's range at run time, a reduction over the row before it can quantize, so the elementwise kernel
that feeds each GEMM (LayerNorm, GELU) reads its data twice.
Static int8 fixes one scale per layer from calibration data, and quantizing becomes a plain
elementwise multiply that the compiler folds into the producer.

One scale per tensor fails where a few channels carry outliers (BERT's GELU outputs reach ~25 where
the median channel is ~1.4). SmoothQuant (Xiao et al., 2023) divides input channel j by
`s_j = max|X_j|^a / max|W_j|^(1-a)` and multiplies weight column j by the same `s_j`: the product is
unchanged, the activations flatten and the weights absorb part of the range. The division is per
channel, so it folds into the same elementwise quantize multiply and costs nothing at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import example_inputs, family_of
from .registry import StepContext

log = logging.getLogger(__name__)


def calibration_batches(model: nn.Module, ctx: StepContext, step: str) -> Iterator[tuple[tuple, dict]]:
    """(args, kwargs) batches to score on: the task's calibration data, else shaped random inputs."""
    if ctx.calib is not None:
        for item in ctx.calib():
            yield (item, {}) if isinstance(item, tuple) else ((), dict(item))
        return
    log.warning("%s: no calibration data (pass calib= or a task); scoring on random example inputs", step)
    seq_len = min(64, family_of(model, step).dims(model).max_len)
    for seed in range(4):
        yield example_inputs(model, batch=16, seq_len=seq_len, seed=seed)


@torch.no_grad()
def over_inputs(model: nn.Module, ctx: StepContext, step: str, modules: dict[str, nn.Module],
                measure: Callable[[str, Tensor], Tensor], combine: Callable[[Tensor, Tensor], Tensor]
                ) -> dict[str, Tensor]:
    """Run the calibration data through `model` (eval mode, restored after) and, for each key's module,
    `measure(key, x)` its input x `[tokens, features]`, folded over batches with `combine`. Refuses
    when the data never reached a module."""
    totals: dict[str, Tensor] = {}

    def hook_for(key: str):
        def hook(_module, inputs):
            value = measure(key, inputs[0].detach().reshape(-1, inputs[0].shape[-1]))
            totals[key] = combine(totals[key], value) if key in totals else value
        return hook

    hooks = [module.register_forward_pre_hook(hook_for(key)) for key, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for args, kwargs in calibration_batches(model, ctx, step):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [k for k in modules if k not in totals]
    if missing:
        raise SlimformerError(f"step {step!r}: calibration data never reached {missing[0]}")
    return totals


def input_ranges(model: nn.Module, names: list[str], ctx: StepContext, step: str) -> dict[str, Tensor]:
    """name -> `[in_features]`: max |input| per channel of each named Linear over the task's calibration
    data. Refuses to guess from random inputs: static scales from the wrong distribution clip real data."""
    if ctx.calib is None:
        raise SlimformerError(f"step {step!r}: static activation scales need calibration data; pass "
                              "calib= (your own batches), apply it with a task (e.g. --task embedding) "
                              "or use activations=dynamic")
    return over_inputs(model, ctx, step, {n: model.get_submodule(n) for n in names},
                       lambda _name, x: x.abs().amax(0).float(), torch.maximum)


def smoothing(x_range: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's per-input-channel divisor `[in]` for activations (weights are multiplied by it).
    alpha = 0 leaves both alone (all ones)."""
    if alpha == 0:
        return torch.ones_like(x_range)
    eps = 1e-5
    w_range = weight.detach().abs().amax(0).float().clamp(min=eps)
    return (x_range.clamp(min=eps) ** alpha / w_range ** (1 - alpha)).clamp(min=eps)
