"""Multi-head attention, the one place where tokens talk to each other.

Masks are *additive biases* (0 = attend, a very negative number = ignore) because every other need
reduces to one: padding, causality, and the log-size bias of token merging all add to the scores.
The module keeps q, k, v as separate projections so that structured pruning and tensor parallelism
can slice them head by head without untangling a fused matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_value(dtype: torch.dtype) -> float:
    """The bias that removes a key. Half of the dtype's minimum, so that two of them (padding plus
    causal) still add up to a finite number: a row with every key masked then stays finite instead
    of turning into NaN, which would leak through the zero attention weights of later layers."""
    return torch.finfo(dtype).min / 2


def padding_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn a key mask `[batch, keys]` (True = real token) into an additive bias `[batch, 1, 1, keys]`."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask.bool(), masked_value(dtype))
    return bias[:, None, None, :]


def additive(bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean keep-mask (as Hugging Face builds for SDPA) as an additive bias; float biases pass."""
    if bias is None or bias.dtype != torch.bool:
        return bias
    return torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill_(~bias, masked_value(dtype))


def causal_bias(n_queries: int, n_keys: int, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive causal bias `[queries, keys]` for queries that are the *last* `n_queries` positions.

    With a KV cache the queries start at position `n_keys - n_queries`, so query i may see keys
    0 .. n_keys - n_queries + i.
    """
    offset = n_keys - n_queries
    return causal_bias_at(torch.arange(n_queries, device=device) + offset, n_keys, dtype)


def causal_bias_at(pos: Tensor, n_keys: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive causal bias `[queries, keys]` for queries at positions `pos` `[queries]`: query i may
    see keys 0 .. pos[i]. A static cache has keys for every position, written or not; this hides the
    ones not written yet."""
    k_pos = torch.arange(n_keys, device=pos.device)[None, :]
    bias = torch.zeros(pos.shape[0], n_keys, dtype=dtype, device=pos.device)
    return bias.masked_fill_(k_pos > pos[:, None], masked_value(dtype))


# Longest key sequence for which compiled CPU attention takes the explicit matmul-softmax-matmul form
# (see `scaled_dot_product`; measured by benchmarks/attention.py).
SHORT_KEYS = 96


def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q `[B, H, Tq, D]`, k, v `[B, H, Tk, D]` -> `[B, H, Tq, D]`.

    Normally `F.scaled_dot_product_attention`. Inside `torch.compile` on CPU, short fp32 sequences take
    the explicit form instead: inductor fuses scale, bias and softmax between two batched GEMMs, and
    for the small heads and few tokens of the image models that beats the CPU flash kernel, whose
    blocking is built for long sequences (benchmarks/attention.py). Eager runs keep SDPA."""
    if (torch.compiler.is_compiling() and q.device.type == "cpu" and q.dtype == torch.float32
            and k.shape[-2] <= SHORT_KEYS):
        return explicit_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """The same attention as plain ops (two batched GEMMs around a softmax), for inductor to fuse."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores, dim=-1) @ v


@dataclass
class KVCache:
    """Keys and values of one attention layer, `[batch, heads, time, head_dim]` each.

    Self-attention caches grow by the new tokens every step; cross-attention caches are computed
    once from the encoder memory and reused.
    """

    k: Tensor
    v: Tensor

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        return KVCache(torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2))

    def select(self, index: Tensor) -> KVCache:
        """Reorder / subset along batch (beam search keeps the surviving hypotheses)."""
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index))

    @property
    def length(self) -> int:
        return self.k.shape[2]


@dataclass
class StaticKVCache(KVCache):
    """A self-attention cache preallocated for every position, `[batch, heads, max_len, head_dim]`.

    Each step writes its keys/values in place at its positions (gpt-fast's `input_pos`) instead of
    growing by `torch.cat`: shapes never change, so a compiled decode step compiles once. Positions
    not written yet are hidden by `causal_bias_at`, not by the shape.
    """

    @classmethod
    def empty(cls, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype = torch.float32,
              device: torch.device | None = None) -> StaticKVCache:
        shape = (batch, heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def write(self, pos: Tensor, k: Tensor, v: Tensor) -> StaticKVCache:
        """Store the new keys/values `[batch, heads, len(pos), head_dim]` at positions `pos`, in place."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self

    def select(self, index: Tensor) -> StaticKVCache:
        return StaticKVCache(self.k.index_select(0, index), self.v.index_select(0, index))


class Attention(nn.Module):
    """Multi-head scaled dot-product attention; self- or cross-attention by what is passed as `context`.

    `kernel(q, k, v, bias)` computes softmax(q k^T / sqrt(d) + bias) v; an instance may be given
    another (e.g. a lower-precision one) without touching weights or shapes, as Hugging Face models
    select theirs by `config._attn_implementation`.
    """

    kernel = staticmethod(scaled_dot_product)

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim or d_model // n_heads
        inner = self.n_heads * self.head_dim
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_model, inner, bias=bias)
        self.v = nn.Linear(d_model, inner, bias=bias)
        self.o = nn.Linear(inner, d_model, bias=bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """`[batch, time, heads*head_dim]` -> `[batch, heads, time, head_dim]`."""
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)

    def project_kv(self, context: Tensor) -> KVCache:
        return KVCache(self.split_heads(self.k(context)), self.split_heads(self.v(context)))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        static_kv: bool = False,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | None]:
        """Attend from `x` `[batch, queries, d_model]` to `context` (default: `x` itself).

        bias: additive, broadcastable to `[batch, heads, queries, keys]`.
        cache: past keys/values. With `static_kv` the cache *is* the keys/values (cross-attention)
        and `context` is not projected again; otherwise the new keys/values are appended, or written at
        positions `pos` `[queries]` of a `StaticKVCache` (where causality then follows `pos`).
        Returns the output `[batch, queries, d_model]` and the cache to pass to the next step.
        """
        q = self.split_heads(self.q(x))
        if static_kv and cache is not None:
            kv = cache
        else:
            kv = self.project_kv(x if context is None else context)
            if isinstance(cache, StaticKVCache):
                kv = cache.write(pos, kv.k, kv.v)
            elif cache is not None:
                kv = cache.append(kv.k, kv.v)
        if causal:
            cb = (causal_bias(q.shape[2], kv.length, device=x.device, dtype=q.dtype) if pos is None
                  else causal_bias_at(pos, kv.length, q.dtype))
            bias = cb if bias is None else bias + cb
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        out = self.kernel(q, kv.k, kv.v, bias)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.o(out), kv
