"""The tensor core of token reduction: decide where every token goes, then move the tokens there.

A block of a token-reducing model carries three per-token tensors:
- `x`         `[batch, tokens, channels]`: the hidden states;
- `size`      `[batch, tokens]` (float): how many original tokens each token stands for. 0 marks a
              padded position or a dead slot, which attention must ignore and pooling must skip;
- `protected` `[batch, tokens]` (bool): tokens that are never merged or dropped (class token,
              [CLS]/[SEP], BOS/EOS).

Both techniques produce a `Reduction` (for each token: the slot its mass moves to, the weight of its
value there, and which slots survive in which order); `Reduction.apply` moves `x`, `size` and
`protected` together. Real tokens always stay a prefix of each row in their original order, so a
padded row reduces exactly like the same example alone, and the sequence keeps its reading order.

- ToMe (Bolya et al. 2023): `bipartite_soft_matching` splits tokens alternately into sets A and B,
  and merges the `r` tokens of A most similar (cosine of attention keys) to some token of B into it.
- EViT (Liang et al. 2022): `token_pruning.attentive_pruning` keeps the tokens that receive the most
  attention and drops (or fuses into one token) the rest; it builds on the `Reduction` defined here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.attention import masked_value


@dataclass
class Reduction:
    """Where each of the `T` input tokens of every row goes.

    target: `[B, T]` long, the slot whose new value includes this token (itself if unchanged); -1
            drops the token.
    weight: `[B, T]` float, the weight of this token's value in its target's average.
    changed: `[B, T]` bool, slots whose value is a new average (others keep their value bit for bit).
    order:  `[B, T']` long, the slots that survive, in output order: live tokens first (original
            order), then dead slots (padding) to make the rows equally long.
    """

    target: Tensor
    weight: Tensor
    changed: Tensor
    order: Tensor

    def apply(self, x: Tensor, size: Tensor, protected: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x `[B, T, C]`, size `[B, T]`, protected `[B, T]` -> the same three with `T'` tokens.

        A changed slot gets `sum(w_i x_i) / sum(w_i)` over the tokens that move to it; its size is the
        sum of their sizes, so `sum(size * x)` is conserved when the weights are the sizes (merging).
        Only the few changed slots are computed: everything else is one gather of the survivors.
        """
        b, t = self.target.shape
        keep = self.target >= 0
        target = self.target.clamp_min(0)
        new_size = torch.zeros_like(size).scatter_add_(1, target, torch.where(keep, size, 0))
        out = _rows(x, self.order)
        if bool(self.changed.any()):
            w = torch.where(keep, self.weight, 0).to(x.dtype)
            pos = torch.arange(t, device=x.device).expand(b, t)
            movers = keep & (target != pos)
            slots, valid = _compact(self.changed)                           # [B, K]
            moving, moving_valid = _compact(movers)                         # [B, M]
            k_of_slot = torch.full((b, t), 0, dtype=torch.long, device=x.device)
            k_of_slot.scatter_(1, slots, torch.arange(slots.shape[1], device=x.device).expand_as(slots))
            dst = k_of_slot.gather(1, target.gather(1, moving))              # [B, M]
            w_slot, w_move = w.gather(1, slots), w.gather(1, moving) * moving_valid
            acc = _rows(x, slots) * w_slot[..., None]
            acc.scatter_add_(1, dst[..., None].expand(-1, -1, x.shape[-1]), _rows(x, moving) * w_move[..., None])
            total = w_slot.scatter_add(1, dst, w_move)
            values = acc / total.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
            out_pos = torch.full((b, t), 0, dtype=torch.long, device=x.device)
            out_pos.scatter_(1, self.order, torch.arange(self.order.shape[1], device=x.device).expand_as(self.order))
            rows = torch.arange(b, device=x.device)[:, None].expand_as(slots)
            out[rows[valid], out_pos.gather(1, slots)[valid]] = values[valid]
        return out, new_size.gather(1, self.order), protected.gather(1, self.order)

    def unmerge(self, y: Tensor) -> Tensor:
        """y `[B, T', C]` (outputs of the reduced tokens) -> `[B, T, C]`: each original token gets the
        output of the token it went into (zeros for dropped tokens). Inverse of `apply` for dense outputs."""
        b, t = self.target.shape
        slot_pos = torch.full((b, t), -1, dtype=torch.long, device=y.device)
        slot_pos.scatter_(1, self.order, torch.arange(self.order.shape[1], device=y.device).expand(b, -1))
        pos = slot_pos.gather(1, self.target.clamp_min(0))
        pos = torch.where(self.target >= 0, pos, -1)
        out = y.gather(1, pos.clamp_min(0)[..., None].expand(-1, -1, y.shape[-1]))
        return torch.where((pos >= 0)[..., None], out, 0)


def _compact(mask: Tensor) -> tuple[Tensor, Tensor]:
    """mask `[B, T]` -> (indices `[B, K]` of the True entries first, in order; which of them are real),
    K = the largest count in a row."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device)
    idx = torch.where(mask, pos, pos + t).argsort(dim=1)[:, :int(mask.sum(1).max())]
    return idx, mask.gather(1, idx)


def _rows(x: Tensor, idx: Tensor) -> Tensor:
    """x `[B, T, C]`, idx `[B, K]` -> `[B, K, C]` (advanced indexing copies whole rows: much faster on CPU
    than `gather` with an expanded index)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def _survivors(live: Tensor) -> Tensor:
    """live `[B, T]` bool -> order `[B, T']`: live slots in original order, then dead ones, where
    `T'` is the longest row's live count (integer keys, so the order never depends on float noise)."""
    t = live.shape[1]
    pos = torch.arange(t, device=live.device)
    key = torch.where(live, pos, pos + t)
    keep = int(live.sum(1).max())
    return key.argsort(dim=1)[:, :keep]


def _ranks(scores: Tensor) -> Tensor:
    """scores `[B, N]` -> rank `[B, N]` of each entry in descending order (0 = best; stable on ties)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    return rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))


def mergeable(size: Tensor, protected: Tensor) -> Tensor:
    """`[B, T]` bool: real (size > 0) tokens that are not protected."""
    return (size > 0) & ~protected


def bipartite_soft_matching(metric: Tensor, r: Tensor | int, size: Tensor, protected: Tensor) -> Reduction:
    """ToMe's matching. metric `[B, T, C]` (attention keys, averaged over heads); r: merges per row,
    an int or `[B]` long; size, protected `[B, T]`.

    Tokens at even positions form set A, odd positions set B; each mergeable A token proposes its most
    similar mergeable B token, and the `r` best proposals of each row are merged (size-weighted).
    Padding and protected tokens are never matched, so padding never mixes with real tokens.
    """
    b, t, _ = metric.shape
    device = metric.device
    pos = torch.arange(t, device=device).expand(b, t)
    if t < 2:  # nothing to pair up
        return Reduction(pos, size, torch.zeros_like(protected), pos)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, bb = metric[:, ::2], metric[:, 1::2]
    ok = mergeable(size, protected)
    ok_a, ok_b = ok[:, ::2], ok[:, 1::2]
    scores = a @ bb.transpose(1, 2)
    scores.masked_fill_(~(ok_a[:, :, None] & ok_b[:, None, :]), -math.inf)
    best, partner = scores.max(dim=-1)  # [B, Ta]

    r = torch.as_tensor(r, device=device).expand(b)
    # At most half of the mergeable tokens go per block: every merged token needs a partner that stays.
    r = torch.minimum(r, torch.minimum(ok.sum(1) // 2, ok_a.sum(1)))
    r = torch.where(ok_b.any(1), r, 0)
    merged = (_ranks(best) < r[:, None]) & ok_a  # [B, Ta]

    target = pos.clone()
    target[:, ::2] = torch.where(merged, 2 * partner + 1, pos[:, ::2])
    changed = torch.zeros(b, t, dtype=torch.bool, device=device)
    changed[:, 1::2] |= torch.zeros_like(ok_b, dtype=torch.long).scatter_add_(1, partner, merged.long()) > 0
    live = size > 0
    live[:, ::2] &= ~merged
    return Reduction(target, size, changed, _survivors(live))


def uniform_merge(x: Tensor, size: Tensor, metric: Tensor, r: int, protect_first: bool,
                  protect_last: bool = False) -> tuple[Tensor, Tensor]:
    """ToMe's matching and size-weighted merge for the common case where every row is alike (images,
    unpadded text: no padding, the same tokens protected), so `r` is one Python int and every shape is
    static.

    x `[B, T, C]`, size `[B, T]`, metric `[B, T, C']` -> (x, size) with `T - r` tokens in their original
    order. Matches `bipartite_soft_matching` + `Reduction.apply` (up to float rounding) with no data-
    dependent shape and no host sync, so `torch.compile` traces a whole block without a graph break.
    protect_first / protect_last: the first token (a class token) / the last ([SEP]) never merges.
    """
    b, t, c = x.shape
    r = min(r, (t - int(protect_first) - int(protect_last)) // 2)
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [B, Ta, Tb]
    if protect_first:
        scores[:, 0, :] = -math.inf  # token 0 is in set A: it never proposes a merge
    if protect_last:  # in set A it never proposes; in set B nothing merges into it
        if (t - 1) % 2 == 0:
            scores[:, -1, :] = -math.inf
        else:
            scores[:, :, -1] = -math.inf
    best, partner = scores.max(dim=-1)  # [B, Ta]
    ranked = best.argsort(dim=-1, descending=True, stable=True)
    src, kept_a = ranked[:, :r], ranked[:, r:]  # set-A tokens that merge / stay
    dst = partner.gather(1, src)
    weighted = x * size[..., None]
    xa, xb, sa, sb = weighted[:, ::2], weighted[:, 1::2], size[:, ::2], size[:, 1::2]
    xb = xb.scatter_add(1, dst[..., None].expand(-1, -1, c), xa.gather(1, src[..., None].expand(-1, -1, c)))
    sb = sb.scatter_add(1, dst, sa.gather(1, src))
    # back to reading order: A token i sat at 2i, B token j at 2j + 1
    slots = torch.cat([2 * kept_a, 2 * torch.arange(xb.shape[1], device=x.device).expand(b, -1) + 1], dim=1)
    order = slots.argsort(dim=1)
    merged = torch.cat([xa.gather(1, kept_a[..., None].expand(-1, -1, c)), xb], dim=1)
    new_size = torch.cat([sa.gather(1, kept_a), sb], dim=1).gather(1, order)
    return merged.gather(1, order[..., None].expand(-1, -1, c)) / new_size[..., None], new_size


def size_bias(size: Tensor, prop_attn: bool, dtype: torch.dtype) -> Tensor:
    """Additive key bias `[B, 1, 1, T]` from sizes `[B, T]`: dead slots masked; with proportional
    attention a token of size s adds log(s), i.e. counts like s identical keys."""
    live = size > 0
    value = torch.log(size.clamp_min(1e-30)) if prop_attn else torch.zeros_like(size)
    return torch.where(live, value, masked_value(dtype)).to(dtype)[:, None, None, :]
