"""Token reduction in the encoder of a Hugging Face encoder-decoder (BART, Marian, mBART, Pegasus,
Whisper; T5's blocks are in `token_patch_t5.py`), with the decoder attending to the merged memory.

The encoder layers reduce tokens between attention and feed-forward like every other patch. The
decoder must then attend to a memory shorter than the source: the encoder stack hands its output on
with the token sizes (`token_sizes`, a field of its output, so `generate` expands it with the beams
and reuses it at every step), and the cross-attention gets an additive bias over the merged keys:
dead slots masked and, with proportional attention, log(size), so a merged token weighs as much as
the originals it stands for (as the reference `Seq2Seq` patch does). The bias reaches the decoder as
`encoder_attention_mask` (a ready 4-D mask the library uses as is), for the duration of one call of
the patched top-level forward. An unreduced forward hands on nothing: bit-identical to the library.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import SlimformerError
from ..families import family_of
from .merge import size_bias
from .token_patch import LAYER, STATE, TokenReducer, TokenSite, _bind
from .token_patch_hfbase import (
    attention_fn,
    begin_plain,
    begin_text,
    bind_layers,
    check_layers,
    heads,
    merge_heads,
    note_unpadded,
)


@dataclass(eq=False)
class Seq2SeqState:
    """Shared by the patched modules of one encoder-decoder (under STATE; `unpatch` drops it)."""

    red: TokenReducer
    active: bool = False             # inside a call of the patched top-level forward
    memory: Tensor | None = None     # that call's cross-attention bias over the merged memory
    positions: Tensor | None = None  # T5: position of each current encoder token `[B, T]` (float)
    table: nn.Module | None = None   # T5: the attention holding the relative position table


@functools.cache
def _output_class() -> type:
    """`BaseModelOutput` plus the sizes of its tokens (defined on first use: transformers loads lazily)."""
    from transformers.modeling_outputs import BaseModelOutput

    @dataclass
    class ReducedEncoderOutput(BaseModelOutput):
        """An encoder output whose tokens were merged: `token_sizes` `[B, T']` says how many source
        tokens each stands for (0 = padding / dead slot)."""

        token_sizes: torch.Tensor | None = None

    return ReducedEncoderOutput


def memory_bias(red: TokenReducer, sizes: Tensor, dtype: torch.dtype) -> Tensor:
    """Cross-attention bias `[B, 1, 1, T']` over a merged memory with token sizes `[B, T']`."""
    return size_bias(sizes, red.prop_attn, dtype)


def hand_on(state: Seq2SeqState, out):
    """The encoder stack's output, with the token sizes when this forward reduced the tokens; inside a
    top-level call, the decoder's cross-attention bias is set from them."""
    red = state.red
    if not red.changed:
        return out
    hidden = out[0]
    if state.active:
        state.memory = memory_bias(red, red.size, hidden.dtype)
    if not hasattr(out, "last_hidden_state"):
        return out
    return _output_class()(last_hidden_state=hidden, hidden_states=out.get("hidden_states"),
                           attentions=out.get("attentions"), token_sizes=red.size)


def _encoder_forward(self: nn.Module, *args, **kwargs):
    """The encoder stack's own forward (padding noted for the static path), its output handed on."""
    state: Seq2SeqState = getattr(self, STATE)
    note_unpadded(state.red, args, kwargs)
    return hand_on(state, type(self).forward(self, *args, **kwargs))


@functools.cache
def _position_of(cls: type, name: str) -> int:
    """Index (after self) of parameter `name` of `cls.forward`, for arguments passed positionally."""
    params = list(inspect.signature(cls.forward).parameters)
    return params.index(name) - 1 if name in params else 1 << 30


def _argument(self: nn.Module, name: str, args: tuple, kwargs: dict):
    i = _position_of(type(self), name)
    return args[i] if i < len(args) else kwargs.get(name)


def _seq2seq_forward(self: nn.Module, *args, **kwargs):
    """The model's own forward, with the merged memory's bias set for the decoder during the call:
    from `encoder_outputs` when they are given (as `generate` does at every step), else by the
    encoder stack when the forward runs it."""
    state: Seq2SeqState = vars(self.get_encoder())[STATE]
    encoder_outputs = _argument(self, "encoder_outputs", args, kwargs)
    memory = None
    if encoder_outputs is not None:
        hidden = encoder_outputs[0]
        sizes = encoder_outputs.get("token_sizes") if isinstance(encoder_outputs, dict) else None
        if sizes is not None:
            memory = memory_bias(state.red, sizes, hidden.dtype)
        else:
            _check_memory(self, hidden, _argument(self, "attention_mask", args, kwargs))
    state.active, state.memory = True, memory
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        state.active, state.memory = False, None


def _check_memory(model: nn.Module, hidden: Tensor, mask: Tensor | None) -> None:
    if mask is not None and mask.dim() == 2 and mask.shape[1] != hidden.shape[1]:
        raise SlimformerError(
            f"encoder_outputs of {type(model).__name__} have {hidden.shape[1]} tokens but attention_mask has "
            f"{mask.shape[1]}: the encoder merged tokens; pass its output as returned (a ModelOutput carrying "
            "token_sizes), not a tuple")


def _memory_forward(self: nn.Module, *args, **kwargs):
    """A decoder stack's (or Whisper decoder layer's) own forward, attending to the merged memory with
    its bias when the current call has one."""
    state: Seq2SeqState = getattr(self, STATE)
    if state.memory is not None:
        kwargs["encoder_attention_mask"] = state.memory
    return type(self).forward(self, *args, **kwargs)


# ---- BART-style encoder layers (BART and Marian post-LN; mBART, Pegasus and Whisper pre-LN) -------

def _attention(self: nn.Module, h: Tensor, red: TokenReducer) -> tuple[Tensor, Tensor, Tensor]:
    """BartAttention.forward for self-attention, also returning its queries and keys."""
    att = self.self_attn
    q, k, v = (heads(p, h, att.head_dim) for p in (att.q_proj, att.k_proj, att.v_proj))
    out, _ = attention_fn(att)(att, q, k, v, red.bias, dropout=0.0 if not att.training else att.dropout,
                               scaling=att.scaling)
    return att.out_proj(merge_heads(out, h)), q, k


def _ffn(self: nn.Module, x: Tensor) -> Tensor:
    h = self.activation_fn(self.fc1(x))
    h = F.dropout(h, p=self.activation_dropout, training=self.training)
    return F.dropout(self.fc2(h), p=self.dropout, training=self.training)


def _post_ln(self: nn.Module, hidden_states: Tensor, red: TokenReducer, layer: int) -> Tensor:
    """BartEncoderLayer.forward (MarianEncoderLayer is a copy) with reduction after the attention."""
    out, q, k = _attention(self, hidden_states, red)
    x = self.self_attn_layer_norm(hidden_states + F.dropout(out, p=self.dropout, training=self.training))
    x = red.step(layer, x, q, k)
    x = self.final_layer_norm(x + _ffn(self, x))
    if x.dtype == torch.float16 and not torch.isfinite(x).all():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


def _pre_ln(self: nn.Module, hidden_states: Tensor, red: TokenReducer, layer: int) -> Tensor:
    """MBartEncoderLayer.forward (Pegasus and Whisper copy it) with reduction after the attention."""
    out, q, k = _attention(self, self.self_attn_layer_norm(hidden_states), red)
    x = hidden_states + F.dropout(out, p=self.dropout, training=self.training)
    x = red.step(layer, x, q, k)
    x = x + _ffn(self, self.final_layer_norm(x))
    if x.dtype == torch.float16:
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


def _text_post_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None, **kw):
    red: TokenReducer = getattr(self, STATE).red
    if getattr(self, LAYER) == 0:
        begin_text(self, red, attention_mask, hidden_states)
    return _post_ln(self, hidden_states, red, getattr(self, LAYER))


def _text_pre_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None, **kw):
    red: TokenReducer = getattr(self, STATE).red
    if getattr(self, LAYER) == 0:
        begin_text(self, red, attention_mask, hidden_states)
    return _pre_ln(self, hidden_states, red, getattr(self, LAYER))


def _speech_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None, **kw):
    red: TokenReducer = getattr(self, STATE).red
    if getattr(self, LAYER) == 0:
        begin_plain(red, attention_mask, hidden_states)
    return _pre_ln(self, hidden_states, red, getattr(self, LAYER))


# layer class -> its layer norm placement (the library's classes, checked by name: each is a copy of one
# of the two forms)
FORMS = {"BartEncoderLayer": "post", "MarianEncoderLayer": "post", "MBartEncoderLayer": "pre",
         "PegasusEncoderLayer": "pre", "WhisperEncoderLayer": "pre"}
PARTS = ("self_attn.q_proj", "self_attn.out_proj", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")


def _layers(model: nn.Module) -> tuple[list[nn.Module], str]:
    """The encoder layers and their form ("post" / "pre"), or an error naming what was found."""
    layers = list(family_of(model, "token reduction").stacks(model)["encoder"])
    found = sorted({type(m).__name__ for m in layers})
    if len(found) != 1 or found[0] not in FORMS:
        raise SlimformerError(f"token reduction: the encoder of {type(model).__name__} has {', '.join(found)} "
                              f"layers; the patch runs {', '.join(FORMS)}")
    check_layers(layers, PARTS, "BART-style")
    return layers, FORMS[found[0]]


def _site(model: nn.Module) -> TokenSite:
    layers, _ = _layers(model)
    cfg = model.config
    if family_of(model, "token reduction").kind == "speech":  # fixed frames, none protected, order kept
        return TokenSite(len(layers), int(cfg.max_source_positions), 0, True, "mean", "keys")
    return TokenSite(len(layers), int(cfg.max_position_embeddings), 2, False, "mean", "hidden")


def patch_encoder_decoder(model: nn.Module, red: TokenReducer, layers: list[nn.Module], forward: Callable,
                          max_len: int | None, memory_modules: list[nn.Module]) -> Seq2SeqState:
    """Bind `forward` on the encoder `layers` (with the shared state), hand-on on the encoder stack, the memory bias on
    `memory_modules` (what takes `encoder_attention_mask`) and the top-level forward on the base
    model (which holds the reducer for `token_sizes`)."""
    base = model.base_model
    state = Seq2SeqState(red)
    bind_layers(layers, forward, state, red, max_len)
    _bind(base.get_encoder(), "forward", _encoder_forward, state)
    for module in memory_modules:
        _bind(module, "forward", _memory_forward, state)
    if memory_modules:
        _bind(base, "forward", _seq2seq_forward, red)
    setattr(base, STATE, red)
    return state


def _patch(model: nn.Module, red: TokenReducer) -> None:
    layers, form = _layers(model)
    speech = family_of(model, "token reduction").kind == "speech"
    forward = _speech_forward if speech else _text_post_forward if form == "post" else _text_pre_forward
    decoder = getattr(model.base_model, "decoder", None)
    # Whisper's decoder hands its layers no encoder mask; BART-style decoders take one
    memory = [] if decoder is None else list(decoder.layers) if speech else [decoder]
    patch_encoder_decoder(model, red, layers, forward, None if speech else int(model.config.max_position_embeddings),
                          memory)


SITES: dict[str, Callable[[nn.Module], TokenSite]] = {"bart": _site, "whisper": _site}
PATCHES: dict[str, Callable[[nn.Module, TokenReducer], None]] = {"bart": _patch, "whisper": _patch}
