"""A Transformer decoder with a KV cache, usable alone (language model) or under `Seq2Seq`.

Incremental decoding feeds only the new token(s) and the cache from the previous step; positions
continue from the cache length, so one step costs O(time) instead of re-running the whole prefix.
A static cache (`static_cache`) is preallocated for all positions instead: the caller passes the
positions `pos` of the new tokens, every step has the same shapes, and a compiled step compiles once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .attention import KVCache, StaticKVCache
from .blocks import DecoderBlock, LayerCache


@dataclass
class DecoderConfig:
    vocab_size: int = 8000
    max_len: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.0
    pad_id: int = 0
    cross_attention: bool = False


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.config = config
        self.tok_emb = embedding or nn.Embedding(config.vocab_size, config.d_model,
                                                 padding_idx=config.pad_id)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout,
                         cross_attention=config.cross_attention)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model, eps=1e-6)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: input and output share one vocabulary matrix

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor | None = None,
        memory_bias: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, list[LayerCache]]:
        """tokens `[batch, new_tokens]` -> logits `[batch, new_tokens, vocab]` and the updated cache.

        memory `[batch, source, d_model]` and its additive bias `[batch, 1, 1, source]` are needed
        when the decoder cross-attends (they may be omitted once the cache holds their keys/values).
        pos `[new_tokens]`: the tokens' positions; required with a static cache, else they continue
        from the cache length.
        """
        if pos is None:
            if cache and isinstance(cache[0].self_kv, StaticKVCache):
                raise SlimformerError("a static cache needs the positions `pos` of the new tokens")
            past = cache[0].self_kv.length if cache else 0
            pos = torch.arange(past, past + tokens.shape[1], device=tokens.device)
            static_pos = None
        else:
            static_pos = pos
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, memory, memory_bias, cache=cache[i] if cache else None, pos=static_pos)
            new_cache.append(layer_cache)
        return self.lm_head(self.norm(x)), new_cache

    def static_cache(self, batch: int, max_len: int | None = None, memory: Tensor | None = None,
                     dtype: torch.dtype | None = None) -> list[LayerCache]:
        """A preallocated cache: per layer, self-attention keys/values `[batch, heads, max_len, head_dim]`
        (zeros until written) and, with `memory`, its cross-attention keys/values computed once."""
        max_len = max_len or self.config.max_len
        if not 1 <= max_len <= self.config.max_len:
            raise SlimformerError(f"static cache length must be in 1..{self.config.max_len}, got {max_len}")
        dtype = dtype or (memory.dtype if memory is not None else torch.float32)
        out = []
        for block in self.blocks:
            a = block.self_attn
            self_kv = StaticKVCache.empty(batch, a.n_heads, max_len, a.head_dim, dtype, self.pos_emb.weight.device)
            cross_kv: KVCache | None = None
            if block.cross_attn is not None and memory is not None:
                cross_kv = block.cross_attn.project_kv(memory)
            out.append(LayerCache(self_kv, cross_kv))
        return out
