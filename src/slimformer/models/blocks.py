"""Pre-LayerNorm Transformer blocks: the repeated unit of every model in `slimformer.models`.

Pre-LN (normalize, then attend / feed forward, then add the residual) trains without warm-up tricks
at the small sizes we use and is what ViT and most modern encoders do.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import Attention, KVCache


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class EncoderBlock(nn.Module):
    """Bidirectional self-attention + MLP, each wrapped as `x + f(norm(x))`."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = Attention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x: `[batch, tokens, d_model]`; bias: additive attention bias `[batch, 1, 1, tokens]`."""
        h, _ = self.attn(self.norm1(x), bias=bias)
        x = x + self.drop(h)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Causal self-attention, then (in an encoder-decoder) cross-attention to the encoder memory, then MLP."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, eps: float = 1e-6,
                 cross_attention: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.self_attn = Attention(d_model, n_heads)
        self.cross_attn = Attention(d_model, n_heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(d_model, eps=eps) if cross_attention else None
        self.norm3 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        memory_bias: Tensor | None = None,
        self_bias: Tensor | None = None,
        cache: LayerCache | None = None,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, LayerCache]:
        """x: `[batch, new_tokens, d_model]`, memory: `[batch, source_tokens, d_model]`.

        `cache` holds this layer's past self-attention keys/values and the cross-attention
        keys/values of the memory; the returned cache includes the new tokens. `pos` `[new_tokens]`:
        their positions, needed with a static self-attention cache (they say where to write).
        """
        h, self_kv = self.self_attn(self.norm1(x), bias=self_bias, causal=True,
                                    cache=cache.self_kv if cache else None, pos=pos)
        x = x + self.drop(h)
        cross_kv = cache.cross_kv if cache else None
        if self.cross_attn is not None:
            h, cross_kv = self.cross_attn(self.norm2(x), context=memory, bias=memory_bias,
                                          cache=cross_kv, static_kv=cross_kv is not None)
            x = x + self.drop(h)
        x = x + self.mlp(self.norm3(x))
        return x, LayerCache(self_kv, cross_kv)


class LayerCache:
    """What one decoder layer remembers between decoding steps."""

    def __init__(self, self_kv: KVCache | None, cross_kv: KVCache | None):
        self.self_kv = self_kv
        self.cross_kv = cross_kv

    def select(self, index) -> LayerCache:
        return LayerCache(self.self_kv.select(index) if self.self_kv else None,
                          self.cross_kv.select(index) if self.cross_kv else None)
