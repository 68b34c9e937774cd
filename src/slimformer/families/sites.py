"""Sites: the submodules a structural technique reshapes, described without naming any model family.

Structured pruning, low-rank factorization and quantization need to know, for every attention layer,
its q/k/v projections (heads along their output features; fused into one `qkv` projection in GPT-2)
and output projection (heads along its input features), how many query and key/value heads it has, and
any per-head table (T5's relative position bias); and for every FFN its up (`fc1`), optional gate and
down (`fc2`) projections. Each family module (`families/*.py`) builds these from its own layout; the
techniques only ever see `Slot`, `HeadSite` and `FFNSite`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SlimformerError


def is_conv1d(module: nn.Module) -> bool:
    """transformers' `Conv1D` (GPT-2): a Linear stored transposed, weight `[in, out]`."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def conv1d_to_linear(module: nn.Module) -> nn.Linear:
    """The `nn.Linear` computing exactly what a `Conv1D` computes (`x @ W + b` == `x @ W.T' + b`)."""
    n_in, n_out = module.weight.shape
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None, device=module.weight.device,
                       dtype=module.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(module.weight.detach().T)
        if module.bias is not None:
            linear.bias.copy_(module.bias.detach())
    return linear


def is_linear_like(module: nn.Module) -> bool:
    return type(module) is nn.Linear or is_conv1d(module)


@dataclass
class Slot:
    """A submodule by its parent and attribute, so a technique can swap in a replacement."""

    parent: nn.Module
    attr: str
    name: str  # qualified name in the model, e.g. "blocks.0.attn.q"

    def get(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def set(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)

    def linear(self, step: str) -> nn.Linear:
        """The slot's module as a plain `nn.Linear` for `step` to reshape (a `Conv1D` is swapped for its
        equal Linear here, once, so every technique handles one kind of projection)."""
        module = self.get()
        if is_conv1d(module):
            module = conv1d_to_linear(module)
            self.set(module)
        if type(module) is not nn.Linear:
            raise SlimformerError(f"step {step!r} needs {self.name} to be a plain nn.Linear, found "
                                  f"{type(module).__name__}; put {step!r} before steps that replace Linears "
                                  "(lowrank, int8, ...)")
        return module


@dataclass
class HeadSite:
    """One multi-head attention layer. Heads are contiguous `head_dim` blocks of the q/k/v outputs and the
    o inputs. With grouped key/value heads (`n_kv_heads < n_heads`), query heads `g*group .. g*group+group-1`
    share key/value head g, so the unit a technique may remove is a whole group."""

    name: str
    q: Slot | None  # None when fused into `qkv`
    k: Slot | None
    v: Slot | None
    o: Slot
    n_heads: int
    head_dim: int
    set_heads: Callable[[int, int], None]  # (query heads, kv heads): keeps the module's own counts in step
    n_kv_heads: int = 0  # 0: same as n_heads
    qkv: Slot | None = None  # fused [q | k | v] along output features (GPT-2's c_attn)
    tables: list[Slot] = field(default_factory=list)  # nn.Embedding whose columns are heads (T5 position bias)
    tie: str | None = None  # sites with the same key must keep the same heads (a bias shared across layers)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.kv_heads

    @property
    def slots(self) -> list[Slot]:
        return [s for s in (self.q, self.k, self.v, self.qkv, self.o) if s is not None]

    @property
    def projections(self) -> list[Slot]:
        """The input-side projections, whose output features are heads."""
        return [s for s in (self.q, self.k, self.v, self.qkv) if s is not None]


@dataclass
class FFNSite:
    """One feed-forward network: neurons are the output features of `fc1` (and of `gate` in a gated MLP,
    `down(act(gate(x)) * up(x))`) and the input features of `fc2`."""

    name: str
    fc1: Slot
    fc2: Slot
    gate: Slot | None = None

    @property
    def slots(self) -> list[Slot]:
        return [s for s in (self.gate, self.fc1, self.fc2) if s is not None]


def join(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def slot(parent: nn.Module, attr: str, prefix: str) -> Slot:
    return Slot(parent, attr, join(prefix, attr))


def has_modules(m: nn.Module, *attrs: str) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Module) for a in attrs)


def by_name(sites: list, kind: str, step: str, model: nn.Module | None = None) -> dict:
    """Sites keyed by name, for replaying a step's recorded state on a fresh skeleton."""
    out = {s.name: s for s in sites}
    if not out:
        found = f" in {type(model).__name__}" if model is not None else ""
        raise SlimformerError(f"step {step!r}: found no {kind}{found} that this step can change")
    return out
