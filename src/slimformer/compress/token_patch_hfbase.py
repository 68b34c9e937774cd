"""What the Hugging Face token-reduction patches share: the attention kernel the model is configured
for, the real-token mask behind the 4-D mask the model built, the head split, how a text encoder
starts the reducer (which tokens are protected, which static plan applies), and binding a layer.

Every per-family patch (`token_patch_hf.py`, `token_patch_seq2seq.py`, `token_patch_t5.py`) mirrors its
library layer op for op from these pieces, so an unreduced run stays bit-identical.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .token_patch import LAYER, PLANS, TokenReducer, _bind

PLAN_LIMIT = 4096  # static ToMe plans are tabulated up to this length (longer rows take the general path)


def attention_fn(module: nn.Module) -> Callable:
    """The attention kernel the model is configured for (sdpa, eager, ...), as the library picks it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager)


def heads(proj: nn.Module, x: Tensor, head_dim: int) -> Tensor:
    """x `[B, T, C]` through `proj`, split into heads `[B, H, T, head_dim]` (the library's view + transpose)."""
    return proj(x).view((*x.shape[:-1], -1, head_dim)).transpose(1, 2)


def merge_heads(out: Tensor, x: Tensor) -> Tensor:
    """Kernel output `[B, T, H, D]` -> `[B, T, H * D]`, as the library reshapes it before the output projection."""
    return out.reshape(*x.shape[:-1], -1).contiguous()


def real_from_mask(mask: Tensor | None, x: Tensor) -> Tensor:
    """The key mask `[B, T]` (True = real token) behind the 4-D mask the model built (or None)."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    row = mask[:, 0, 0, :] if mask.dim() == 4 else mask
    return row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 4


def begin_text(layer: nn.Module, red: TokenReducer, attention_mask: Tensor | None, hidden_states: Tensor) -> None:
    """Start the reducer in the first layer of a text encoder. The first token ([CLS], <s>) and the last
    real one ([SEP], </s>) frame the sentence: they never merge or drop. Unpadded rows are alike, so
    ToMe takes the static-shape path there (no per-block host sync; one graph under torch.compile)."""
    real = real_from_mask(attention_mask, hidden_states)
    protected = torch.zeros_like(real)
    protected[:, 0] = True
    protected.scatter_(1, (real.sum(1, keepdim=True) - 1).clamp_min(0), True)
    plans = getattr(layer, PLANS, None)
    n = real.shape[1]
    merges = plans[n] if plans and red.unpadded and n < len(plans) else None
    red.begin(real.to(hidden_states.dtype), protected, attention_mask, merges, protect_last=True)


def begin_plain(red: TokenReducer, attention_mask: Tensor | None, hidden_states: Tensor) -> None:
    """Start the reducer with nothing protected (speech frames: every frame may merge with another;
    the reduction keeps the survivors in frame order)."""
    real = real_from_mask(attention_mask, hidden_states)
    red.begin(real.to(hidden_states.dtype), torch.zeros_like(real), attention_mask)


def note_unpadded(red: TokenReducer, args: tuple, kwargs: dict) -> None:
    """Record whether the batch handed to a model (or stack) forward `(input_ids, attention_mask, ...)`
    has padding. The check syncs with the host once, at the outermost call, so under torch.compile the
    graph breaks before the layers rather than inside the first one."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    red.unpadded = mask is None or (mask.dim() == 2 and bool(mask.all()))


def bind_layers(layers: list[nn.Module], forward: Callable, state: object, red: TokenReducer,
                max_len: int | None) -> None:
    """Bind `forward` on every layer (with its index and the shared `state`); with ToMe and a text
    `max_len`, tabulate the static plan of every unpadded length on the first layer. A tuple on the
    module is a constant to torch.compile (a plan computed from the reducer's float options inside the
    trace would become symbolic when two models differ). Entry n: the plan for rows of n tokens, of
    which all but the first and last may merge."""
    for i, layer in enumerate(layers):
        _bind(layer, "forward", forward, state)
        setattr(layer, LAYER, i)
    if max_len is not None and red.method == "tome" and layers:
        plans = tuple(red.static_plan(max(n - 2, 0)) for n in range(min(max_len, PLAN_LIMIT) + 1))
        setattr(layers[0], PLANS, plans)


def clamp_fp16(x: Tensor) -> Tensor:
    """The fp16 overflow clamp the BART-style and Whisper layers apply (a no-op in any other dtype)."""
    if x.dtype == torch.float16:
        limit = torch.finfo(x.dtype).max - 1000
        return torch.clamp(x, min=-limit, max=limit)
    return x


def check_layers(layers: list[nn.Module], attrs: tuple[str, ...], layout: str) -> None:
    """Refuse layers that lack the submodules the `layout` patch runs (e.g. replaced by another step)."""
    for i, layer in enumerate(layers):
        missing = [a for a in attrs if not _has_path(layer, a)]
        if missing:
            raise SlimformerError(
                f"token reduction: block {i} is a {type(layer).__name__} without {', '.join(missing)}, which the "
                f"{layout} token patch runs; apply tome/token-prune before steps that replace whole blocks")


def _has_path(root: object, path: str) -> bool:
    for part in path.split("."):
        if not hasattr(root, part):
            return False
        root = getattr(root, part)
    return True
