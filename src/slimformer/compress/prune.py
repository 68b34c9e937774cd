"""Structured pruning that really shrinks the matrices: whole attention heads and whole FFN neurons.

Removing head h deletes its `head_dim` output rows of q, k and v and the matching input columns of the
output projection; removing FFN neuron i deletes row i of fc1 and column i of fc2. The pruned model
has smaller `nn.Linear`s, so fewer parameters and FLOPs on any backend, with no masks at run time.

Importance is the size of what a group contributes to the layer's output, measured on calibration
data: for head h, the mean over tokens of `||x_h @ W_o[:, h]^T||` (x_h = the head's attention output,
the input of o); for neuron i, the mean of `|a_i| * ||W_fc2[:, i]||`. Gradient-free, so it works on any
model, and it measures exactly what removing the group deletes from the residual stream.
Heads are pruned per layer (every layer keeps the same count, at least one). With grouped key/value
heads (Llama-style) the unit is a whole group: a key/value head and the query heads that share it.
Layers whose heads feed one shared bias (T5's relative position bias) keep the same heads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from ..families.sites import FFNSite, HeadSite, Slot, by_name
from .calibrate import over_inputs
from .registry import Knob, Step, StepContext, register

log = logging.getLogger(__name__)

Score = Literal["activation", "weight"]


# ---- pure core on tensors -------------------------------------------------------------------------

def group_contribution(x: Tensor, weight: Tensor, group_size: int) -> Tensor:
    """Summed norm of each input group's contribution to a Linear's output.

    x: `[tokens, groups * group_size]` inputs of the Linear; weight: `[out, groups * group_size]`.
    Returns `[groups]`: sum over tokens of `||x[:, g] @ weight[:, g]^T||`.
    """
    x, weight = x.float(), weight.float()
    if group_size == 1:  # ||x_i * w_i|| = |x_i| * ||w_i||, without materializing [tokens, groups, out]
        return x.abs().sum(0) * weight.norm(dim=0)
    n_groups = x.shape[1] // group_size
    xs = x.view(x.shape[0], n_groups, group_size)
    ws = weight.view(weight.shape[0], n_groups, group_size)
    return torch.stack([(xs[:, g] @ ws[:, g].T).norm(dim=1).sum() for g in range(n_groups)])


def weight_contribution(weight: Tensor, group_size: int) -> Tensor:
    """Data-free fallback: Frobenius norm of each group's input columns, `[out, G*s]` -> `[G]`."""
    return weight.float().view(weight.shape[0], -1, group_size).norm(dim=(0, 2))


def keep_top(scores: Tensor, n_keep: int) -> list[int]:
    """Indices of the `n_keep` largest scores, in their original order (so the layout is preserved)."""
    return sorted(torch.topk(scores, n_keep).indices.tolist())


def slice_linear(linear: nn.Linear, index: list[int], dim: Literal["out", "in"]) -> nn.Linear:
    """A new Linear keeping only the output rows (`out`) or input columns (`in`) listed in `index`."""
    idx = torch.tensor(index, dtype=torch.long, device=linear.weight.device)
    weight = linear.weight.detach().index_select(0 if dim == "out" else 1, idx)
    bias = linear.bias
    if bias is not None and dim == "out":
        bias = bias.detach().index_select(0, idx)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def head_index(heads: list[int], head_dim: int) -> list[int]:
    """Feature indices of the kept heads: heads are contiguous blocks of `head_dim` features."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]


def n_to_keep(n: int, ratio: float, multiple_of: int = 1) -> int:
    """How many of `n` groups survive removing `ratio` of them (at least one, rounded to a multiple)."""
    keep = n - round(ratio * n)
    if multiple_of > 1:
        keep = math.ceil(keep / multiple_of) * multiple_of
    return max(1, min(n, keep))


# ---- scores on calibration data ------------------------------------------------------------

def input_scores(model: nn.Module, slots: dict[str, tuple[Slot, int]], ctx: StepContext, step: str
                 ) -> dict[str, Tensor]:
    """Run calibration data and score the input groups of each Linear in `slots`.

    slots: key -> (slot of a Linear, group size). Returns key -> `[groups]` contribution sums.
    """
    linears = {key: slot.linear(step) for key, (slot, _) in slots.items()}
    return over_inputs(model, ctx, step, linears,
                       lambda key, x: group_contribution(x, linears[key].weight, slots[key][1]), torch.add)


# ---- structure changes (used by apply and by restore) ---------------------------------------------

def slice_table(table: nn.Embedding, columns: list[int]) -> nn.Embedding:
    """A new Embedding keeping only the listed columns (a per-head table: `[buckets, heads]`)."""
    weight = table.weight.detach()[:, columns]
    new = nn.Embedding(weight.shape[0], weight.shape[1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


def shrink_heads(site: HeadSite, groups: list[int], step: str = "prune-heads") -> None:
    """Keep the key/value head groups listed (= the heads, without grouped-query attention): their query
    heads' q rows and o columns, their k/v rows, and their columns of any per-head table."""
    heads = [g * site.group + j for g in groups for j in range(site.group)]
    q_index, kv_index = head_index(heads, site.head_dim), head_index(groups, site.head_dim)
    if site.qkv is not None:  # fused [q | k | v]: the same index in each third
        width = site.n_heads * site.head_dim
        fused = q_index + [width + i for i in kv_index] + [2 * width + i for i in kv_index]
        site.qkv.set(slice_linear(site.qkv.linear(step), fused, "out"))
    else:
        site.q.set(slice_linear(site.q.linear(step), q_index, "out"))
        for slot in (site.k, site.v):
            slot.set(slice_linear(slot.linear(step), kv_index, "out"))
    site.o.set(slice_linear(site.o.linear(step), q_index, "in"))
    for table in site.tables:
        table.set(slice_table(table.get(), heads))
    site.set_heads(len(heads), len(groups))


def shrink_ffn(site: FFNSite, neurons: list[int], step: str = "prune-ffn") -> None:
    for slot in (site.gate, site.fc1):
        if slot is not None:
            slot.set(slice_linear(slot.linear(step), neurons, "out"))
    site.fc2.set(slice_linear(site.fc2.linear(step), neurons, "in"))


def group_scores(sites: list[HeadSite], head_scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-site scores of each key/value group (the sum over its query heads); sites that share a `tie`
    key get their summed scores, so they keep the same groups."""
    grouped = {s.name: head_scores[s.name].view(s.kv_heads, s.group).sum(1) for s in sites}
    tied: dict[str, Tensor] = {}
    for s in sites:
        if s.tie is not None:
            tied[s.tie] = tied[s.tie] + grouped[s.name] if s.tie in tied else grouped[s.name].clone()
    return {s.name: tied[s.tie] if s.tie is not None else grouped[s.name] for s in sites}


# ---- steps -----------------------------------------------------------------------------------------

def _check_ratio(step: str, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise SlimformerError(f"option 'ratio' of step {step!r} must be in [0, 1), got {ratio}")


@dataclass
class PruneHeadsOptions:
    ratio: float = 0.25  # fraction of heads removed in every attention layer
    score: Score = "activation"  # activation: contribution on calibration data; weight: data-free

    def __post_init__(self) -> None:
        _check_ratio("prune-heads", self.ratio)


@dataclass
class PruneFFNOptions:
    ratio: float = 0.25  # fraction of FFN neurons removed in every layer
    score: Score = "activation"
    multiple_of: int = 1  # round the kept count up to a multiple (e.g. 8 or 16, for SIMD-friendly shapes)

    def __post_init__(self) -> None:
        _check_ratio("prune-ffn", self.ratio)
        if self.multiple_of < 1:
            raise SlimformerError(f"option 'multiple_of' of step 'prune-ffn' must be >= 1, got {self.multiple_of}")


def _scores(model, sites, slot_of, group_of, score: Score, ctx: StepContext, step: str) -> dict[str, Tensor]:
    if score == "weight":
        return {s.name: weight_contribution(slot_of(s).linear(step).weight, group_of(s)) for s in sites}
    return input_scores(model, {s.name: (slot_of(s), group_of(s)) for s in sites}, ctx, step)


def prune_heads(model: nn.Module, opts: PruneHeadsOptions, ctx: StepContext) -> nn.Module:
    sites = family_of(model, "prune-heads").head_sites(model)
    by_name(sites, "attention layers", "prune-heads", model)
    scores = group_scores(sites, _scores(model, sites, lambda s: s.o, lambda s: s.head_dim, opts.score, ctx,
                                         "prune-heads"))
    kept = {}
    for site in sites:
        groups = keep_top(scores[site.name], n_to_keep(site.kv_heads, opts.ratio))
        shrink_heads(site, groups)
        kept[site.name] = groups
    ctx.state["heads"] = kept
    log.info("prune-heads: kept %s", {k: len(v) for k, v in kept.items()})
    return model


def restore_heads(model: nn.Module, opts: PruneHeadsOptions, state: dict) -> nn.Module:
    sites = by_name(family_of(model, "prune-heads").head_sites(model), "attention layers", "prune-heads", model)
    for name, heads in state.get("heads", {}).items():
        if name not in sites:
            raise SlimformerError(f"prune-heads state names attention layer {name!r}, not in the model")
        shrink_heads(sites[name], list(range(len(heads))))  # shapes only: the weights are loaded next
    return model


def prune_ffn(model: nn.Module, opts: PruneFFNOptions, ctx: StepContext) -> nn.Module:
    sites = family_of(model, "prune-ffn").ffn_sites(model)
    by_name(sites, "feed-forward layers", "prune-ffn", model)
    scores = _scores(model, sites, lambda s: s.fc2, lambda s: 1, opts.score, ctx, "prune-ffn")
    kept = {}
    for site in sites:
        n = site.fc1.linear("prune-ffn").out_features
        neurons = keep_top(scores[site.name], n_to_keep(n, opts.ratio, opts.multiple_of))
        shrink_ffn(site, neurons)
        kept[site.name] = len(neurons)
    ctx.state["neurons"] = kept
    log.info("prune-ffn: kept %s", kept)
    return model


def restore_ffn(model: nn.Module, opts: PruneFFNOptions, state: dict) -> nn.Module:
    sites = by_name(family_of(model, "prune-ffn").ffn_sites(model), "feed-forward layers", "prune-ffn", model)
    for name, n in state.get("neurons", {}).items():
        if name not in sites:
            raise SlimformerError(f"prune-ffn state names feed-forward layer {name!r}, not in the model")
        shrink_ffn(sites[name], list(range(int(n))))
    return model


register(Step("prune-heads", PruneHeadsOptions, prune_heads,
              "remove whole attention heads (least output contribution on calibration data)",
              restore=restore_heads, needs_float_weights=True, role="structural",
              knob=Knob("ratio", (0.167, 0.333, 0.5), identity=0.0), order=20, priority=8))
register(Step("prune-ffn", PruneFFNOptions, prune_ffn,
              "remove FFN neurons (least output contribution on calibration data)",
              restore=restore_ffn, needs_float_weights=True, role="structural",
              knob=Knob("ratio", (0.125, 0.25, 0.375, 0.5, 0.625), identity=0.0), order=30, priority=7))
