"""int8 Linears for autoregressive decoding, where a step multiplies a few rows (batch x beams) by every
weight matrix: per-row int8 weights, and per call a kernel picked by how many rows come in.

Measured on an AMD EPYC (AVX512-VNNI + BF16, no AMX), 1 thread, the decode shapes of the translation
model (rows 1..128 x [128 -> 8000 | 512 | 128], benchmarks/results/generate.md has the full step):
- `torch._int_mm` (int8 x int8 -> int32 on VNNI) beats the fp32 GEMM at every one of these shapes, by
  4-20x on the 128 x 8000 output layer; quantizing the activations per row costs a few fused ops
  (under torch.compile they fuse into the op that produced them). A whole compiled decode step of the
  translation model at batch 1: fp32 7.3 ms, weight-only GEMV 4.0 ms, int8 x int8 2.4 ms (1 thread,
  loaded machine; the ratios are what counts).
- The weight-only kernel `_weight_int8pack_mm` is a reference loop here, 5-30x slower than fp32, and
  `F.linear(x, w_int8.float())` is constant-folded back to an fp32 GEMM under freezing: neither pays.
  The weight-only form that does pay is a dequantize-multiply-reduce that inductor fuses into one
  reduction reading int8 weights (a GEMV); it beats fp32 at one row but not int8 x int8.
So the pick by shape: rows <= WEIGHT_ONLY_ROWS and compiled -> weight-only GEMV (float activations),
otherwise dynamic int8 x int8; on this CPU WEIGHT_ONLY_ROWS is 0 (int8 x int8 everywhere). A CPU
whose int8 GEMM is poor (no VNNI) would raise it. Shapes are static under a compiled step, so the pick
is made once, at trace time.

The int8 weights are those of `compress.quantize.Int8Linear` (torchao, symmetric per output row) when
converting a model compressed with the `int8` step, so decoding changes kernels, not weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import SlimformerError

# Largest number of rows for which the fused weight-only GEMV beats int8 x int8 (compiled; measured,
# see the module doc: none on AVX512-VNNI). Eager decoding always takes int8 x int8: the unfused GEMV would materialize
# [rows, out, in] floats.
WEIGHT_ONLY_ROWS = 0


class DecodeInt8Linear(nn.Module):
    """`y = x @ W^T + b`, W stored as int8 `[out, in]` with an fp32 scale per output row.

    x `[..., in]` -> `[..., out]`. `mode`: "auto" (pick by rows, see the module doc), "weight-only" or
    "int8x8" (force one kernel; benchmarks and tests)."""

    def __init__(self, weight_int8: Tensor, scale: Tensor, bias: Tensor | None, mode: str = "auto"):
        super().__init__()
        if mode not in ("auto", "weight-only", "int8x8"):
            raise SlimformerError(f"mode must be auto, weight-only or int8x8, got {mode!r}")
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("weight_scale", scale.reshape(-1).float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.mode = mode

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "auto") -> DecodeInt8Linear:
        """Symmetric per-row int8 of a float Linear (scale = max|row| / 127)."""
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q, scale, linear.bias, mode)

    def _weight_only(self, rows: int) -> bool:
        if self.mode != "auto":
            return self.mode == "weight-only"
        return torch.compiler.is_compiling() and rows <= WEIGHT_ONLY_ROWS

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self._weight_only(x2.shape[0]):
            # one fused reduction under inductor: int8 weights read once, never an fp32 copy
            y = (x2[:, None, :] * self.weight_int8.float()).sum(-1) * self.weight_scale
        else:
            # per-row symmetric activations (as torchao: max|x| / 127.5), int8 x int8 -> int32 on VNNI
            step = x2.abs().amax(dim=-1, keepdim=True).div(127.5).clamp(min=torch.finfo(torch.float32).eps)
            q = torch.round(x2 / step).clamp(-128, 127).to(torch.int8)
            y = torch._int_mm(q, self.weight_int8.t()) * (step * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 decode ({self.mode})"


def for_decoding(model: nn.Module, mode: str = "auto", skip: tuple[str, ...] = ()) -> nn.Module:
    """Swap, in place, every Linear for a `DecodeInt8Linear`: an `Int8Linear` of the `int8` /
    `int8-weight` steps keeps its int8 weights (static-scale ones are left alone: their calibrated
    activation scales are part of the function); a float `nn.Linear` (or GPT-2's `Conv1D`, the same
    map transposed) is quantized per row. A Linear
    whose weight is tied to an embedding (an output layer) is quantized too; the table stays float."""
    from ..families.sites import conv1d_to_linear, is_conv1d
    from .quantize import Int8Linear

    for name, module in list(model.named_modules()):
        if not name or any(name == s or name.endswith("." + s) for s in skip):
            continue
        if isinstance(module, Int8Linear) and not module.static:
            new = DecodeInt8Linear(module.weight.qdata, module.weight.scale, module.bias, mode)
        elif type(module) is nn.Linear or is_conv1d(module):
            new = DecodeInt8Linear.from_float(conv1d_to_linear(module) if is_conv1d(module) else module, mode)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
