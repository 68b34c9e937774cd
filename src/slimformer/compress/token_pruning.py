"""The tensor core of EViT-style token pruning (Liang et al. 2022): keep the tokens that receive the
most attention, drop or fuse the rest. It produces the same `Reduction` as ToMe's matching (merge.py),
so the patches move `x`, `size` and `protected` the same way whichever technique decided.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .merge import Reduction, _ranks, _survivors, mergeable


def attentive_pruning(score: Tensor, keep_rate: float, size: Tensor, protected: Tensor, fuse: bool) -> Reduction:
    """EViT's pruning. score `[B, T]`: attention each token receives; size, protected `[B, T]`.

    Each row keeps the `ceil(keep_rate * n)` highest-scoring of its `n` mergeable tokens. With `fuse`,
    the dropped tokens become one token after the kept ones: their score-weighted average, whose size
    is the sum of theirs (so pooling still counts them).
    """
    b, t = score.shape
    device = score.device
    ok = mergeable(size, protected)
    n_keep = torch.ceil(ok.sum(1) * keep_rate - 1e-6).long()
    rank = _ranks(score.masked_fill(~ok, -math.inf))
    drop = ok & (rank >= n_keep[:, None])

    pos = torch.arange(t, device=device).expand(b, t)
    live = (size > 0) & ~drop
    changed = torch.zeros(b, t, dtype=torch.bool, device=device)
    if fuse:
        # The fused token lives in the slot of the best dropped token, and sorts after every kept one.
        first = drop & (rank == n_keep[:, None])
        slot = torch.where(first, pos, 0).sum(1)
        target = torch.where(drop, slot[:, None], pos)
        weight = torch.where(drop, score, size)
        changed |= first
        key = torch.where(live, pos, torch.where(first, t, pos + t + 1))
        live |= first
        order = key.argsort(dim=1)[:, :int(live.sum(1).max())]
    else:
        target = torch.where(drop, -1, pos)
        weight = size
        order = _survivors(live)
    return Reduction(target, weight, changed, order)


def attention_received(q: Tensor, k: Tensor, bias: Tensor | None, size: Tensor, query: str) -> Tensor:
    """How much attention each token receives, averaged over heads. q, k `[B, H, T, D]`; bias additive,
    broadcastable to `[B, H, T, T]`; size `[B, T]`. query="cls": from the first token only (EViT with a
    class token); "mean": mean over the real query tokens. Returns `[B, T]`."""
    scale = q.shape[-1] ** -0.5
    if query == "cls":
        logits = (q[:, :, :1] @ k.transpose(-1, -2)) * scale  # [B, H, 1, T]
        if bias is not None:
            logits = logits + bias[..., :1, :]
        return logits.softmax(-1)[:, :, 0].mean(1)
    logits = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(-1).mean(1)  # [B, T, T]
    real = (size > 0).to(probs.dtype)
    return (probs * real[:, :, None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
