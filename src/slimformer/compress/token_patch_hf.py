"""Token reduction patched into Hugging Face encoders: BERT-style, DistilBERT, ViT here; the encoders
of BART / Marian / mBART / Pegasus / Whisper in `token_patch_seq2seq.py`, T5 in `token_patch_t5.py`.

Each layer instance gets a forward that mirrors the library's own layer forward op for op (so an
unreduced run is bit-identical), reduces the tokens between attention and feed-forward, and shares
one `TokenReducer` with the other layers; the first layer starts the state from the mask the model
built. Layers after a reduction ignore the (now stale) mask they are handed and use the reducer's
bias. The model's own loop, final norm and pooler run unchanged on the shorter sequence; the
class token stays first, so `[CLS]`/class-token poolers still see it.

`hf_site` / `patch_hf` dispatch on the model's family (`families.family_of`), one entry per layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from . import token_patch_seq2seq, token_patch_t5
from .token_patch import LAYER, STATE, TokenReducer, TokenSite, _bind
from .token_patch_hfbase import (
    attention_fn,
    begin_text,
    bind_layers,
    check_layers,
    heads,
    merge_heads,
    note_unpadded,
    real_from_mask,
)


def _bert_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                        *args, **kwargs) -> Tensor:
    """BertLayer.forward (encoder-only, post-LN) with reduction after the attention sublayer."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    red: TokenReducer = getattr(self, STATE)
    layer = getattr(self, LAYER)
    if layer == 0:
        begin_text(self, red, attention_mask, hidden_states)
    sa = self.attention.self
    q, k, v = (heads(p, hidden_states, sa.attention_head_size) for p in (sa.query, sa.key, sa.value))
    out, _ = attention_fn(sa)(sa, q, k, v, red.bias, dropout=0.0 if not sa.training else sa.dropout.p,
                              scaling=sa.scaling)
    x = self.attention.output(merge_heads(out, hidden_states), hidden_states)
    x = red.step(layer, x, q, k)
    return apply_chunking_to_forward(self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, x)


def _distilbert_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                              **kwargs) -> Tensor:
    """DistilBERT's TransformerBlock.forward (post-LN) with reduction after the attention sublayer."""
    red: TokenReducer = getattr(self, STATE)
    layer = getattr(self, LAYER)
    if layer == 0:
        begin_text(self, red, attention_mask, hidden_states)
    att = self.attention
    q, k, v = (heads(p, hidden_states, att.attention_head_size) for p in (att.q_lin, att.k_lin, att.v_lin))
    out, _ = attention_fn(att)(att, q, k, v, red.bias, dropout=0.0 if not att.training else att.dropout.p,
                               scaling=att.scaling)
    x = self.sa_layer_norm(att.out_lin(merge_heads(out, hidden_states)) + hidden_states)
    x = red.step(layer, x, q, k)
    return self.output_layer_norm(self.ffn(x) + x)


def _text_model_forward(self: nn.Module, *args, **kwargs):
    """The model's own forward, after noting whether the batch has padding (see `note_unpadded`)."""
    note_unpadded(getattr(self, STATE), args, kwargs)
    return type(self).forward(self, *args, **kwargs)


def _vit_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                       **kwargs) -> Tensor:
    """ViTLayer.forward (pre-LN, transformers 5 naming) with reduction after the attention sublayer."""
    red: TokenReducer = getattr(self, STATE)
    layer = getattr(self, LAYER)
    if layer == 0:
        protected = torch.zeros(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        protected[:, 0] = True  # the class token
        red.begin(real_from_mask(attention_mask, hidden_states).to(hidden_states.dtype), protected, attention_mask)
    att = self.attention
    residual = hidden_states
    h = self.layernorm_before(hidden_states)
    q, k, v = (heads(p, h, att.head_dim) for p in (att.q_proj, att.k_proj, att.v_proj))
    out, _ = attention_fn(att)(att, q, k, v, red.bias, dropout=0.0 if not att.training else att.attention_dropout,
                               scaling=att.scaling)
    x = self.dropout(att.o_proj(merge_heads(out, h))) + residual
    x = red.step(layer, x, q, k)
    residual = x
    h = self.mlp(self.layernorm_after(x))
    return self.dropout(h) + residual


# ---- per family: site and patch --------------------------------------------------------------------

def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    return list(family_of(model, "token reduction").stacks(model)["encoder"])


_LAYOUTS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "bert": (_bert_layer_forward, ("attention.self.query", "attention.output", "feed_forward_chunk")),
    "distilbert": (_distilbert_layer_forward, ("attention.q_lin", "sa_layer_norm", "ffn", "output_layer_norm")),
    "vit": (_vit_layer_forward, ("layernorm_before", "attention.q_proj", "mlp", "layernorm_after")),
}


def _encoder_site(model: nn.Module) -> TokenSite:
    family = family_of(model, "token reduction")
    layers = _encoder_layers(model)
    check_layers(layers, _LAYOUTS[family.name][1], family.name)
    dims = family.dims(model)
    if family.kind == "image":
        return TokenSite(len(layers), dims.max_len, 1, True, "cls", "keys")
    return TokenSite(len(layers), dims.max_len, 2, False, "mean", "hidden")


def _patch_encoder(model: nn.Module, red: TokenReducer) -> None:
    """Bind the reducing layer forward on every layer instance; the reducer also hangs on the base
    model (for `token_sizes`), whose forward notes padding for the static path of text encoders."""
    family = family_of(model, "token reduction")
    base = model.base_model
    text = family.kind == "encoder"
    bind_layers(_encoder_layers(model), _LAYOUTS[family.name][0], red, red,
                family.dims(model).max_len if text else None)
    if text and red.method == "tome":
        _bind(base, "forward", _text_model_forward, red)
    setattr(base, STATE, red)


SITES: dict[str, Callable[[nn.Module], TokenSite]] = {
    **dict.fromkeys(_LAYOUTS, _encoder_site), **token_patch_seq2seq.SITES, **token_patch_t5.SITES}
PATCHES: dict[str, Callable[[nn.Module, TokenReducer], None]] = {
    **dict.fromkeys(_LAYOUTS, _patch_encoder), **token_patch_seq2seq.PATCHES, **token_patch_t5.PATCHES}


def hf_site(model: nn.Module, family: str) -> TokenSite | None:
    """The `TokenSite` of a Hugging Face model whose family has a token patch, else None."""
    site = SITES.get(family)
    return None if site is None else site(model)


def patch_hf(model: nn.Module, red: TokenReducer) -> None:
    """Patch token reduction into a Hugging Face model (after `hf_site` accepted it)."""
    name = family_of(model, "token reduction").name
    if name not in PATCHES:
        raise SlimformerError(f"token reduction: no token patch for the {name} layout ({type(model).__name__})")
    PATCHES[name](model, red)
