"""`bf16-attention`: attention scores, softmax and weighted values in bfloat16; projections untouched.

Why: small heads make attention expensive out of proportion. On MiniLM (12 heads of 32 dims, 128
tokens) attention is ~5 % of the FLOPs but over a quarter of a compiled int8 model's time (profiled),
because the fp32 CPU flash kernel is blocked for long sequences and wide heads. Two AVX512-BF16 batched
GEMMs around a softmax do the same work faster once the casts fuse into the neighbouring kernels: in
the MiniLM search's final run, adding this step took compiled int8 from 260.7 to 240.1 ms per batch
(static scales) and from 304.2 to 274.3 ms (dynamic). Alone, with its casts unfused, the kernel is
0.85x to 1.04x the flash kernel's time at that shape (benchmarks/attention.py), so it is a step for
compiled models. bf16 keeps fp32's exponent range, so masks keep working; the softmax accumulates in
fp32 inside the kernel.

The kernel is a torch custom op, so torch.compile calls it as it is (inductor's own lowering of the
same ops ran slower); the casts to and from bf16 stay outside it, where the compiler fuses them into
the neighbouring kernels. With gradients on (distillation after this step) the same math runs as
plain differentiable ops.

Reference models get the kernel per `Attention` instance (`Attention.kernel`); Hugging Face models
get it as a registered attention implementation (their `AttentionInterface`), selected by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..models.attention import Attention, additive, causal_bias
from ..models.hf import is_hf_model
from .registry import Step, StepContext, register

HF_NAME = "slimformer_bf16"


def _attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T + bias) v for pre-scaled bf16 q `[B, H, Tq, D]`, k, v `[B, H, Tk, D]`."""
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores.add_(bias) if not scores.requires_grad else scores + bias
    return torch.softmax(scores, dim=-1) @ v


@torch.library.custom_op("slimformer::bf16_attention", mutates_args=())
def _attend_op(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    return _attend(q, k, v, bias)


@_attend_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def bf16_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                   scale: float | None = None) -> Tensor:
    """Drop-in for `models.attention.scaled_dot_product`: float q, k, v, an additive or boolean
    (True = attend) bias broadcastable to the scores; the result comes back in q's dtype."""
    dtype, bf16 = q.dtype, torch.bfloat16
    if bias is not None:
        bias = additive(bias, bf16).to(bf16)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    args = ((q * scale).to(bf16).contiguous(), k.to(bf16).contiguous(), v.to(bf16).contiguous(), bias)
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return (_attend(*args) if differentiable else _attend_op(*args)).to(dtype)


def _hf_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                  **kwargs) -> tuple[Tensor, None]:
    """Hugging Face's attention-function contract: q, k, v `[B, H, T, D]` -> (`[B, T, H, D]`, no weights)."""
    if dropout and module.training:
        raise SlimformerError("bf16-attention is for inference: it has no attention dropout (call model.eval())")
    if attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", False)):
        attention_mask = causal_bias(query.shape[2], key.shape[2], device=query.device)
    groups = query.shape[1] // key.shape[1]  # grouped key/value heads (Llama-style): each serves `groups` queries
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = bf16_attention(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_hf() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(HF_NAME, _hf_attention)
    AttentionMaskInterface.register(HF_NAME, sdpa_mask)  # same masks as SDPA: boolean, or none at all


@dataclass
class Bf16AttentionOptions:
    pass


def _apply(model: nn.Module, opts: Bf16AttentionOptions, ctx: StepContext) -> nn.Module:
    if is_hf_model(model):
        _register_hf()
        if not model._can_set_attn_implementation():
            raise SlimformerError(f"bf16-attention: {type(model).__name__} does not select its attention by "
                                  "name (transformers' AttentionInterface)")
        model.set_attn_implementation(HF_NAME)
        return model
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise SlimformerError(f"bf16-attention: {type(model).__name__} has no attention layers it knows")
    for layer in layers:
        layer.kernel = bf16_attention
    return model


def _restore(model: nn.Module, opts: Bf16AttentionOptions, state: dict) -> nn.Module:
    return _apply(model, opts, StepContext())


register(Step("bf16-attention", Bf16AttentionOptions, _apply,
              "attention scores, softmax and weighted values in bfloat16 (projections keep their precision)",
              restore=_restore, role="flag", order=80, priority=1,
              detect=lambda m: any(getattr(x, "kernel", None) is bf16_attention for x in m.modules())
              or getattr(getattr(m, "config", None), "_attn_implementation", None) == HF_NAME))
