"""Static activation ranges for int8, with SmoothQuant's outlier migration.

Dynamic int8 measures every token's range at run time: a reduction over the row before it can
quantize, so the elementwise kernel that feeds each GEMM (LayerNorm, GELU) reads its data twice.
Static int8 fixes one scale per layer from calibration data, and quantizing becomes a plain
elementwise multiply that the compiler folds into the producer.

One scale per tensor fails where a few channels carry outliers (BERT's GELU outputs reach ~25 where
the median channel is ~1.4). SmoothQuant (Xiao et al., 2023) divides input channel j by
`s_j = max|X_j|^a / max|W_j|^(1-a)` and multiplies weight column j by the same `s_j`: the product is
unchanged, the activations flatten and the weights absorb part of the range. The division is per
channel, so it folds into the same elementwise quantize multiply and costs nothing at run time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .prune import calibration_batches
from .registry import StepContext


@torch.no_grad()
def input_ranges(model: nn.Module, names: list[str], ctx: StepContext, step: str) -> dict[str, Tensor]:
    """name -> `[in_features]`: max |input| per channel of each named Linear over the task's calibration
    data. Refuses to guess from random inputs: static scales from the wrong distribution clip real data."""
    if ctx.calib is None:
        raise SlimformerError(f"step {step!r}: static activation scales need calibration data; apply it "
                              "with a task (e.g. --task embedding) or use activations=dynamic")
    ranges: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0).float()
            ranges[name] = torch.maximum(ranges[name], x) if name in ranges else x
        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for args, kwargs in calibration_batches(model, ctx, step):
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in ranges]
    if missing:
        raise SlimformerError(f"step {step!r}: calibration data never reached {missing[0]}")
    return ranges


def smoothing(x_range: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's per-input-channel divisor `[in]` for activations (weights are multiplied by it).
    alpha = 0 leaves both alone (all ones)."""
    if alpha == 0:
        return torch.ones_like(x_range)
    eps = 1e-5
    w_range = weight.detach().abs().amax(0).float().clamp(min=eps)
    return (x_range.clamp(min=eps) ** alpha / w_range ** (1 - alpha)).clamp(min=eps)
