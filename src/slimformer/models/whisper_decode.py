"""A lean greedy decoding step for Hugging Face Whisper: the same modules, none of the per-step framework.

Why: Whisper tiny's decoder does little arithmetic per token (d=384, 4 layers), so a step through
transformers' generic machinery (cache objects, mask building, output dataclasses, kwargs plumbing)
costs several times its matrix products. This loop calls the model's own submodules (projections,
norms, MLPs: whatever a compression step swapped in, e.g. int8 Linears, runs as is) and keeps the
keys/values itself: the cross-attention keys/values of the encoder memory are computed once, the
self-attention ones go into preallocated buffers. `speech.greedy(..., lean=False)` runs the
transformers forward instead: the reference this loop is tested against token for token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _heads(x: Tensor, attn: nn.Module) -> Tensor:
    b, t, _ = x.shape
    return x.view(b, t, -1, attn.head_dim).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _positions(decoder: nn.Module, start: int, n: int) -> Tensor:
    table = decoder.embed_positions
    weight = getattr(table, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return weight[start:start + n]
    return table(torch.arange(start, start + n)[None])[0]  # a swapped-in table (e.g. int8 rows)


class LeanDecoder:
    """Greedy-step state for one batch: cross K/V of `memory`, self K/V buffers up to `max_length`."""

    def __init__(self, model: nn.Module, memory: Tensor, max_length: int) -> None:
        self.decoder = model.model.decoder
        self.head = model.proj_out
        self.layers = list(self.decoder.layers)
        self.pos = 0
        b = memory.shape[0]
        self.cross = [(_heads(layer.encoder_attn.k_proj(memory), layer.encoder_attn),
                       _heads(layer.encoder_attn.v_proj(memory), layer.encoder_attn)) for layer in self.layers]
        self.keys, self.values = [], []
        for layer, (k, _) in zip(self.layers, self.cross, strict=True):
            heads, dim = k.shape[1], layer.self_attn.head_dim
            self.keys.append(memory.new_empty(b, heads, max_length, dim))
            self.values.append(memory.new_empty(b, heads, max_length, dim))

    def select(self, rows: Tensor) -> None:
        """Keep only the batch rows `rows` (finished transcripts leave the batch)."""
        self.cross = [(k[rows], v[rows]) for k, v in self.cross]
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    def step(self, ids: Tensor) -> Tensor:
        """Feed `ids` `[B, n]` at the next positions; logits `[B, vocab]` of the last one."""
        n = ids.shape[1]
        start, end = self.pos, self.pos + n
        x = self.decoder.embed_tokens(ids) + _positions(self.decoder, start, n)
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            self.keys[i][:, :, start:end] = _heads(a.k_proj(h), a)
            self.values[i][:, :, start:end] = _heads(a.v_proj(h), a)
            q = _heads(a.q_proj(h) * a.scaling, a)
            o = F.scaled_dot_product_attention(q, self.keys[i][:, :, :end], self.values[i][:, :, :end],
                                               is_causal=n > 1 and start == 0, scale=1.0)
            x = x + a.out_proj(_merge(o))
            c = layer.encoder_attn
            q = _heads(c.q_proj(layer.encoder_attn_layer_norm(x)) * c.scaling, c)
            x = x + c.out_proj(_merge(F.scaled_dot_product_attention(q, *self.cross[i], scale=1.0)))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        self.pos = end
        return self.head(self.decoder.layer_norm(x[:, -1])).float()
