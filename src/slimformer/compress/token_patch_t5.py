"""Token reduction in the encoder of Hugging Face T5 / mT5 (`T5ForConditionalGeneration`, `T5Model`,
`T5EncoderModel`); the decoder attends to the merged memory as in `token_patch_seq2seq.py`.

T5 has no position embeddings: every self-attention adds a learned bias per head that depends on the
relative position of query and key (bucketed), computed in the first block and handed on to the
others. After a reduction the tokens are no longer at positions 0..T'-1, so each token keeps a
position: the size-weighted mean of the original positions it stands for (a kept token keeps its
own; for pruning's fused token, the attention-weighted mean of the dropped ones). The block that
reduces recomputes the bias from these positions with the model's own bucketing and table, and
hands it on. The positions ride through the reduction as one extra channel of the hidden states,
scaled by 2**-64 so it cannot move ToMe's cosine similarity (its square is far below the float
rounding of the real channels); they are exact in fp32 and within a position or two in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from ..models.attention import additive
from .token_patch import LAYER, STATE, TokenReducer, TokenSite
from .token_patch_hfbase import attention_fn, begin_text, check_layers, heads, merge_heads
from .token_patch_seq2seq import Seq2SeqState, patch_encoder_decoder

SCALE = 2.0 ** -64
PARTS = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.o", "layer.0.layer_norm", "layer.0.dropout")
TRAINED_LEN = 512  # T5's relative positions take any length; validation counts this many (config.n_positions)


def _clamp(x: Tensor) -> Tensor:
    """T5Block's fp16 clamp (a no-op in any other dtype)."""
    if x.dtype == torch.float16:
        limit = torch.where(torch.isinf(x).any(), torch.finfo(x.dtype).max - 1000, torch.finfo(x.dtype).max)
        x = torch.clamp(x, min=-limit, max=limit)
    return x


def relative_bias(table: nn.Module, positions: Tensor) -> Tensor:
    """Relative position bias `[B, H, T, T]` for tokens at (float) `positions` `[B, T]`, with the
    model's own bucketing (`T5Attention._relative_position_bucket`) and table."""
    rel = (positions[:, None, :] - positions[:, :, None]).round().long()  # key - query, as compute_bias
    buckets = table._relative_position_bucket(rel, bidirectional=not table.is_decoder,
                                              num_buckets=table.relative_attention_num_buckets,
                                              max_distance=table.relative_attention_max_distance)
    return table.relative_attention_bias(buckets).permute(0, 3, 1, 2)


def _own_bias(att: nn.Module, n: int, like: Tensor) -> Tensor:
    """The bias T5Attention.forward computes when the stack hands it none (encoder: no cache)."""
    if att.has_relative_attention_bias:
        return att.compute_bias(n, n, device=like.device)
    return torch.zeros((1, att.n_heads, n, n), device=like.device, dtype=like.dtype)


def _reduce(state: Seq2SeqState, layer: int, x: Tensor, q: Tensor, k: Tensor, att: nn.Module,
            position_bias: Tensor) -> tuple[Tensor, bool]:
    """`red.step` carrying the token positions along; returns (x, whether the tokens changed)."""
    red = state.red
    b, t, _ = x.shape
    pos = state.positions if state.positions is not None else \
        torch.arange(t, device=x.device, dtype=torch.float32).expand(b, t)
    wide = torch.cat([x, (pos * SCALE).to(x.dtype)[..., None]], dim=-1)
    kept_bias = red.bias
    if red.method == "prune":
        # EViT ranks by the attention the model really computes: T5 does not scale q.k and adds its bias
        red.bias = position_bias + additive(red.bias, q.dtype) if red.bias is not None else position_bias
        q = q * (att.scaling * math.sqrt(q.shape[-1]))
    out = red.step(layer, wide, q, k)
    if out is wide:
        red.bias = kept_bias
        return x, False
    state.positions = out[..., -1].float() / SCALE
    return out[..., :-1].contiguous(), True


def _block_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                   position_bias: Tensor | None = None, *args, **kwargs) -> tuple[Tensor, Tensor, None]:
    """T5Block.forward for an encoder block (self-attention, feed-forward) with reduction between."""
    state: Seq2SeqState = getattr(self, STATE)
    red, layer = state.red, getattr(self, LAYER)
    if layer == 0:
        begin_text(self, red, attention_mask, hidden_states)
        state.positions = None
    sa = self.layer[0]
    att = sa.SelfAttention
    h = sa.layer_norm(hidden_states)
    q, k, v = (heads(p, h, att.key_value_proj_dim) for p in (att.q, att.k, att.v))
    if position_bias is None:
        position_bias = _own_bias(att, h.shape[1], q)
    out, _ = attention_fn(att)(att, q, k, v, red.bias, dropout=0.0 if not att.training else att.dropout,
                               scaling=att.scaling, position_bias=position_bias)
    x = _clamp(hidden_states + sa.dropout(att.o(merge_heads(out, h))))
    x, changed = _reduce(state, layer, x, q, k, att, position_bias)
    if changed:
        position_bias = relative_bias(state.table, state.positions).to(position_bias.dtype)
    return _clamp(self.layer[-1](x)), position_bias, None


def _layers(model: nn.Module) -> list[nn.Module]:
    layers = list(family_of(model, "token reduction").stacks(model)["encoder"])
    check_layers(layers, PARTS, "T5")
    if layers and not layers[0].layer[0].SelfAttention.has_relative_attention_bias:
        raise SlimformerError(f"token reduction: the first encoder block of {type(model).__name__} has no "
                              "relative position table, which the T5 patch needs to place merged tokens")
    return layers


def _site(model: nn.Module) -> TokenSite:
    tokens = int(getattr(model.config, "n_positions", None) or TRAINED_LEN)
    return TokenSite(len(_layers(model)), tokens, 2, False, "mean", "hidden")


def _patch(model: nn.Module, red: TokenReducer) -> None:
    layers = _layers(model)
    decoder = getattr(model.base_model, "decoder", None)
    state = patch_encoder_decoder(model, red, layers, _block_forward, TRAINED_LEN,
                                  [] if decoder is None else [decoder])
    state.table = layers[0].layer[0].SelfAttention


SITES: dict[str, Callable[[nn.Module], TokenSite]] = {"t5": _site}
PATCHES: dict[str, Callable[[nn.Module, TokenReducer], None]] = {"t5": _patch}
