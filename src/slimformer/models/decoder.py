"""A Transformer decoder with a KV cache, usable alone (language model) or under `Seq2Seq`.

Incremental decoding feeds only the new token(s) and the cache from the previous step; positions
continue from the cache length, so one step costs O(time) instead of re-running the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    ) -> tuple[Tensor, list[LayerCache]]:
        """tokens `[batch, new_tokens]` -> logits `[batch, new_tokens, vocab]` and the updated cache.

        memory `[batch, source, d_model]` and its additive bias `[batch, 1, 1, source]` are needed
        when the decoder cross-attends (they may be omitted once the cache holds their keys/values).
        """
        past = cache[0].self_kv.length if cache else 0
        pos = torch.arange(past, past + tokens.shape[1], device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, memory, memory_bias, cache=cache[i] if cache else None)
            new_cache.append(layer_cache)
        return self.lm_head(self.norm(x)), new_cache
