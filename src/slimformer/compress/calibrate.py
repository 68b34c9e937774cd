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
from .prune import over_inputs
from .registry import StepContext


def input_ranges(model: nn.Module, names: list[str], ctx: StepContext, step: str) -> dict[str, Tensor]:
    """name -> `[in_features]`: max |input| per channel of each named Linear over the task's calibration
    data. Refuses to guess from random inputs: static scales from the wrong distribution clip real data."""
    if ctx.calib is None:
        raise SlimformerError(f"step {step!r}: static activation scales need calibration data; apply it "
                              "with a task (e.g. --task embedding) or use activations=dynamic")
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
