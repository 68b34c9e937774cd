"""A BERT-style text encoder: token + learned position embeddings, pre-LN blocks, final norm.

It returns per-token hidden states; pooling (mean, first token) belongs to the task, not the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import padding_bias
from .blocks import EncoderBlock


@dataclass
class EncoderConfig:
    vocab_size: int = 8000
    max_len: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.0
    pad_id: int = 0


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model, eps=1e-6)

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens `[batch, time]` (int) -> `[batch, time, d_model]`."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.drop(self.tok_emb(tokens) + self.pos_emb(pos))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """tokens `[batch, time]`; mask `[batch, time]`, True for real tokens (default: all real).

        Returns hidden states `[batch, time, d_model]`; padded positions hold values that no real
        token ever attended to.
        """
        x = self.embed(tokens)
        bias = None if mask is None else padding_bias(mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)
