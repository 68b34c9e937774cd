"""Token reduction patched into Hugging Face BERT-style encoders and ViTs (incl. the real MiniLM).

Each layer instance gets a forward that mirrors the library's own layer forward op for op (so an
unreduced run is bit-identical), reduces the tokens between attention and feed-forward, and shares
one `TokenReducer` with the other layers; the first layer starts the state from the mask the model
built. Layers after a reduction ignore the (now stale) mask they are handed and use the reducer's
bias. The model's own loop, final norm and pooler run unchanged on the shorter sequence; the
class token stays first, so `[CLS]`/class-token poolers still see it.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .token_patch import LAYER, PLANS, STATE, TokenReducer, TokenSite, _bind


def _attention_fn(module: nn.Module):
    """The attention kernel the model is configured for (sdpa, eager, ...), as the library picks it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager)


def _real_from_mask(mask: Tensor | None, x: Tensor) -> Tensor:
    """The key mask `[B, T]` (True = real token) behind the 4-D mask the model built (or None)."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    row = mask[:, 0, 0, :] if mask.dim() == 4 else mask
    return row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 4


def _bert_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                        *args, **kwargs) -> Tensor:
    """BertLayer.forward (encoder-only, post-LN) with reduction after the attention sublayer."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    red: TokenReducer = getattr(self, STATE)
    layer = getattr(self, LAYER)
    if layer == 0:
        real = _real_from_mask(attention_mask, hidden_states)
        # [CLS] (first) and [SEP] (last real token) frame the sentence: never merge or drop them.
        protected = torch.zeros_like(real)
        protected[:, 0] = True
        protected.scatter_(1, (real.sum(1, keepdim=True) - 1).clamp_min(0), True)
        plans = getattr(self, PLANS, None)
        # Unpadded rows are alike ([CLS] first, [SEP] last): ToMe takes the static-shape path, with no
        # per-block host sync (one graph under torch.compile).
        merges = plans[real.shape[1]] if plans and red.unpadded else None
        red.begin(real.to(hidden_states.dtype), protected, attention_mask, merges, protect_last=True)
    bias = red.bias  # the model's own mask until a block reduces the tokens
    sa = self.attention.self
    shape = (*hidden_states.shape[:-1], -1, sa.attention_head_size)
    q = sa.query(hidden_states).view(*shape).transpose(1, 2)
    k = sa.key(hidden_states).view(*shape).transpose(1, 2)
    v = sa.value(hidden_states).view(*shape).transpose(1, 2)
    out, _ = _attention_fn(sa)(sa, q, k, v, bias, dropout=0.0 if not sa.training else sa.dropout.p,
                               scaling=sa.scaling)
    out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
    x = self.attention.output(out, hidden_states)
    x = red.step(layer, x, q, k)
    return apply_chunking_to_forward(self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, x)


def _bert_model_forward(self: nn.Module, *args, **kwargs):
    """The model's own forward, after noting whether the batch has padding. The check syncs with the
    host once, here at the outermost call, so under torch.compile the graph breaks before the layers
    rather than inside the first one (which would split every layer into its own graph)."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    getattr(self, STATE).unpadded = mask is None or bool(mask.all())
    return type(self).forward(self, *args, **kwargs)


def _vit_layer_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                       **kwargs) -> Tensor:
    """ViTLayer.forward (pre-LN, transformers 5 naming) with reduction after the attention sublayer."""
    red: TokenReducer = getattr(self, STATE)
    layer = getattr(self, LAYER)
    if layer == 0:
        protected = torch.zeros(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        protected[:, 0] = True  # the class token
        red.begin(_real_from_mask(attention_mask, hidden_states).to(hidden_states.dtype), protected, attention_mask)
    bias = red.bias
    att = self.attention
    residual = hidden_states
    h = self.layernorm_before(hidden_states)
    shape = (*h.shape[:-1], -1, att.head_dim)
    q = att.q_proj(h).view(shape).transpose(1, 2)
    k = att.k_proj(h).view(shape).transpose(1, 2)
    v = att.v_proj(h).view(shape).transpose(1, 2)
    out, _ = _attention_fn(att)(att, q, k, v, bias, dropout=0.0 if not att.training else att.attention_dropout,
                                scaling=att.scaling)
    out = att.o_proj(out.reshape(*h.shape[:-1], -1).contiguous())
    x = self.dropout(out) + residual
    x = red.step(layer, x, q, k)
    residual = x
    h = self.mlp(self.layernorm_after(x))
    return self.dropout(h) + residual


def _family(base: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """("bert" | "vit", layers) for the Hugging Face layouts we know, else None."""
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is not None and all(hasattr(m, "attention") and hasattr(m.attention, "self")
                                  and hasattr(m, "feed_forward_chunk") for m in layers):
        return "bert", list(layers)
    layers = getattr(base, "layers", None)
    if layers is not None and all(hasattr(m, "layernorm_before") and hasattr(getattr(m, "attention", None), "q_proj")
                                  for m in layers):
        return "vit", list(layers)
    return None


def hf_site(model: nn.Module, family: str) -> TokenSite | None:
    """The `TokenSite` of a supported Hugging Face model (BERT-style or ViT family), else None."""
    if family not in ("bert", "vit"):
        return None
    base = model.base_model
    found = _family(base)
    if found is None:
        return None
    kind, layers = found
    cfg = base.config
    if kind == "bert":
        if cfg.is_decoder or getattr(cfg, "add_cross_attention", False):
            raise SlimformerError(f"token reduction: {type(model).__name__} is configured as a decoder; merging "
                                  "or dropping tokens would mix past and future positions")
        return TokenSite(len(layers), cfg.max_position_embeddings, 2, False, "mean", "hidden")
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return TokenSite(len(layers), tokens, 1, True, "cls", "keys")


def patch_hf(model: nn.Module, red: TokenReducer) -> None:
    """Bind the reducing layer forward on every layer instance; the reducer also hangs on the model
    (for `token_sizes`)."""
    base = model.base_model
    kind, layers = _family(base)
    forward = _bert_layer_forward if kind == "bert" else _vit_layer_forward
    for i, layer in enumerate(layers):
        _bind(layer, "forward", forward, red)
        setattr(layer, LAYER, i)
    if kind == "bert" and red.method == "tome":
        # A tuple on the module is a constant to torch.compile (a plan computed from the reducer's
        # float options inside the trace would become symbolic when two models differ).
        # Entry n: the plan for rows of n tokens, of which all but [CLS] and [SEP] may merge.
        plans = tuple(red.static_plan(max(n - 2, 0)) for n in range(base.config.max_position_embeddings + 1))
        setattr(layers[0], PLANS, plans)
        _bind(base, "forward", _bert_model_forward, red)
    setattr(base, STATE, red)
