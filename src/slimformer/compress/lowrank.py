"""Low-rank factorization: replace a Linear `W [out, in]` by two thinner ones, `up(down(x))`.

The truncated SVD `W ≈ U_r S_r V_r^T` is the best rank-r approximation (Eckart-Young), and splitting
`sqrt(S_r)` between the two factors keeps their scales balanced (better conditioned for later
fine-tuning or int8). A layer is only replaced when the factors hold fewer parameters than `W`,
`r * (in + out) < in * out`, unless `skip_if_larger` is off; at full rank the product equals `W` up to
float rounding, which the tests check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from ..families.sites import Slot
from .registry import Knob, Step, StepContext, register

log = logging.getLogger(__name__)


class LowRankLinear(nn.Module):
    """`x @ W^T + b` with `W = up.weight @ down.weight` of rank `rank`: in -> rank -> out."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def weight(self) -> Tensor:
        """The rank-`rank` product `[out, in]`, for model code that reads a projection's `.weight` (T5
        checks its dtype); built on each access, never used by `forward`."""
        return self.up.weight @ self.down.weight

    def forward(self, x: Tensor) -> Tensor:
        """x `[..., in]` -> `[..., out]`."""
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-`rank` factors of `weight [out, in]`: `(up [out, rank], down [rank, in])`, SVD in float64."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def rank_for_energy(weight: Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of `||W||_F^2` (the sum of squared singular values)."""
    s2 = torch.linalg.svdvals(weight.detach().double()) ** 2
    kept = torch.cumsum(s2, 0) / s2.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12).item()) + 1


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """A LowRankLinear holding the best rank-`rank` approximation of `linear` (same bias)."""
    w = linear.weight
    out = LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None,
                        device=w.device, dtype=w.dtype)
    up, down = svd_factors(w, rank)
    with torch.no_grad():
        out.up.weight.copy_(up)
        out.down.weight.copy_(down)
        if linear.bias is not None:
            out.up.bias.copy_(linear.bias)
    return out


@dataclass
class LowRankOptions:
    rank: int | None = None      # keep this many singular values in every chosen layer
    energy: float | None = None  # or: keep this fraction of each layer's squared singular values (default 0.9)
    layers: Literal["mlp", "attn", "all"] = "mlp"  # FFN Linears, attention projections, or both
    skip_if_larger: bool = True  # leave a layer as it is when its factors would hold more parameters

    def __post_init__(self) -> None:
        if self.rank is not None and self.energy is not None:
            raise SlimformerError("step 'lowrank': give option 'rank' or option 'energy', not both")
        if self.rank is None and self.energy is None:
            self.energy = 0.9
        if self.rank is not None and self.rank < 1:
            raise SlimformerError(f"option 'rank' of step 'lowrank' must be >= 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise SlimformerError(f"option 'energy' of step 'lowrank' must be in (0, 1], got {self.energy}")


def chosen_slots(model: nn.Module, layers: str) -> list[Slot]:
    """The Linears that `layers` ('mlp', 'attn' or 'all') selects, in module order."""
    family = family_of(model, "lowrank")
    slots: list[Slot] = []
    if layers in ("attn", "all"):
        slots += [slot for site in family.head_sites(model) for slot in site.slots]
    if layers in ("mlp", "all"):
        slots += [slot for site in family.ffn_sites(model) for slot in site.slots]
    if not slots:
        raise SlimformerError(f"step 'lowrank': {type(model).__name__} ({family.name} layout) has no {layers!r} "
                              "layers to factorize; valid layers: mlp, attn, all")
    return slots


def lowrank(model: nn.Module, opts: LowRankOptions, ctx: StepContext) -> nn.Module:
    ranks: dict[str, int] = {}
    for slot in chosen_slots(model, opts.layers):
        linear = slot.linear("lowrank")
        full = min(linear.in_features, linear.out_features)
        rank = min(opts.rank, full) if opts.rank is not None else rank_for_energy(linear.weight, opts.energy)
        if opts.skip_if_larger and rank * (linear.in_features + linear.out_features) >= linear.weight.numel():
            log.info("lowrank: %s kept dense (rank %d of %d would not save parameters)", slot.name, rank, full)
            continue
        slot.set(factorize(linear, rank))
        ranks[slot.name] = rank
    if not ranks:  # a step that changes nothing would only mislabel the model (and a search's best recipe)
        what = f"rank={opts.rank}" if opts.rank is not None else f"energy={opts.energy}"
        raise SlimformerError(f"step 'lowrank': {what} factorizes no layer (every chosen rank would add "
                              "parameters); lower 'rank' or 'energy'")
    ctx.state["ranks"] = ranks
    return model


def restore_lowrank(model: nn.Module, opts: LowRankOptions, state: dict) -> nn.Module:
    slots = {slot.name: slot for slot in chosen_slots(model, opts.layers)}
    for slot in slots.values():
        slot.linear("lowrank")  # as apply did: a Conv1D becomes its Linear, factorized or not
    for name, rank in state.get("ranks", {}).items():
        if name not in slots:
            raise SlimformerError(f"lowrank state names layer {name!r}, not in the model")
        linear = slots[name].linear("lowrank")
        w = linear.weight
        slots[name].set(LowRankLinear(linear.in_features, linear.out_features, int(rank), linear.bias is not None,
                                      device=w.device, dtype=w.dtype))
    return model


register(Step("lowrank", LowRankOptions, lowrank,
              "SVD-factorize Linears into two thinner ones (rank, or energy kept)",
              restore=restore_lowrank, needs_float_weights=True, role="structural",
              knob=Knob("energy", (0.995, 0.99, 0.98, 0.95, 0.9), identity=1.0), order=40, priority=6,
              detect=lambda m: any(isinstance(x, LowRankLinear) for x in m.modules())))
