"""Encoder-decoder translator: the `Encoder` reads the source, the cross-attending `Decoder` writes
the target. One vocabulary matrix is shared by source embedding, target embedding and output layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import padding_bias
from .blocks import LayerCache
from .decoder import Decoder, DecoderConfig
from .encoder import Encoder, EncoderConfig


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 8000
    max_len: int = 128
    d_model: int = 256
    n_enc_layers: int = 4
    n_dec_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(EncoderConfig(c.vocab_size, c.max_len, c.d_model, c.n_enc_layers, c.n_heads,
                                             c.d_ff, c.dropout, c.pad_id))
        self.decoder = Decoder(DecoderConfig(c.vocab_size, c.max_len, c.d_model, c.n_dec_layers, c.n_heads,
                                             c.d_ff, c.dropout, c.pad_id, cross_attention=True),
                               embedding=self.encoder.tok_emb)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src `[batch, source]` -> memory `[batch, source', d_model]` and its additive bias
        `[batch, 1, 1, source']`. (source' = source unless a token-reduction patch shortened it.)"""
        if src_mask is None:
            src_mask = src != self.config.pad_id
        memory = self.encoder(src, src_mask)
        return memory, padding_bias(src_mask, memory.dtype)

    def decode(self, tgt: Tensor, memory: Tensor | None, memory_bias: Tensor | None,
               cache: list[LayerCache] | None = None, pos: Tensor | None = None) -> tuple[Tensor, list[LayerCache]]:
        """tgt `[batch, new_tokens]` -> logits `[batch, new_tokens, vocab]` and the updated cache.
        `pos`: the new tokens' positions, required with a static cache (`Decoder.static_cache`)."""
        return self.decoder(tgt, memory, memory_bias, cache, pos)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits `[batch, target, vocab]` for every target position at once."""
        memory, memory_bias = self.encode(src, src_mask)
        logits, _ = self.decode(tgt, memory, memory_bias)
        return logits
