"""Where the structure lives: per model family, which Linears make up each attention layer and FFN.

Structured pruning and low-rank factorization only need to know, for every attention layer, its
q/k/v projections (heads along their output features) and output projection (heads along its input
features), and for every FFN its up (fc1) and down (fc2) projections. This file is the only place
that knows how each model family names them, so the techniques stay family-agnostic:

- reference models: `Attention` (q, k, v, o; `n_heads`, `head_dim`) and `MLP` (fc1, fc2);
- Hugging Face BERT-style: `*Attention` with `.self.{query,key,value}` + `.output.dense`, and layers
  with `.intermediate.dense` + `.output.dense` (BERT, MiniLM, RoBERTa, ...);
- Hugging Face ViT-style (transformers 5): `q_proj, k_proj, v_proj, o_proj` + `num_attention_heads`,
  and `fc1, fc2` MLPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import SlimformerError
from ..models.attention import Attention


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
        """The slot's module, which must still be a plain `nn.Linear` for `step` to reshape it."""
        module = self.get()
        if type(module) is not nn.Linear:
            raise SlimformerError(f"step {step!r} needs {self.name} to be a plain nn.Linear, found "
                                  f"{type(module).__name__}; put {step!r} before steps that replace Linears "
                                  "(lowrank, int8, ...)")
        return module


@dataclass
class HeadSite:
    """One multi-head attention layer: heads are contiguous `head_dim` blocks of q/k/v outputs and o inputs."""

    name: str
    q: Slot
    k: Slot
    v: Slot
    o: Slot
    n_heads: int
    head_dim: int
    set_heads: Callable[[int], None]  # keeps the module's own head-count attributes in step

    @property
    def slots(self) -> list[Slot]:
        return [self.q, self.k, self.v, self.o]


@dataclass
class FFNSite:
    """One feed-forward network: neurons are fc1's output features and fc2's input features."""

    name: str
    fc1: Slot
    fc2: Slot

    @property
    def slots(self) -> list[Slot]:
        return [self.fc1, self.fc2]


def _join(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def _slot(parent: nn.Module, attr: str, prefix: str) -> Slot:
    return Slot(parent, attr, _join(prefix, attr))


def _reference_head_site(name: str, m: Attention) -> HeadSite:
    def set_heads(n: int) -> None:
        m.n_heads = n

    return HeadSite(name, *(_slot(m, a, name) for a in ("q", "k", "v", "o")), m.n_heads, m.head_dim, set_heads)


def _bert_head_site(name: str, m: nn.Module) -> HeadSite:
    sa = m.self

    def set_heads(n: int) -> None:
        sa.num_attention_heads = n
        sa.all_head_size = n * sa.attention_head_size

    prefix = _join(name, "self")
    return HeadSite(name, _slot(sa, "query", prefix), _slot(sa, "key", prefix), _slot(sa, "value", prefix),
                    _slot(m.output, "dense", _join(name, "output")), sa.num_attention_heads,
                    sa.attention_head_size, set_heads)


def _proj_head_site(name: str, m: nn.Module) -> HeadSite:
    if getattr(m, "num_key_value_heads", m.num_attention_heads) != m.num_attention_heads:
        raise SlimformerError(f"{name}: grouped-query attention ({m.num_attention_heads} query heads, "
                              f"{m.num_key_value_heads} key/value heads) is not supported by head pruning")

    def set_heads(n: int) -> None:
        m.num_attention_heads = n

    return HeadSite(name, *(_slot(m, a, name) for a in ("q_proj", "k_proj", "v_proj", "o_proj")),
                    m.num_attention_heads, m.head_dim, set_heads)


def _is_linear_attr(m: nn.Module, *attrs: str) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Module) for a in attrs)


def head_sites(model: nn.Module) -> list[HeadSite]:
    """Every multi-head attention layer of `model`, in module order."""
    sites = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            sites.append(_reference_head_site(name, m))
        elif (hasattr(m, "self") and hasattr(m, "output") and _is_linear_attr(m.self, "query", "key", "value")
              and hasattr(m.self, "num_attention_heads") and _is_linear_attr(m.output, "dense")):
            sites.append(_bert_head_site(name, m))
        elif _is_linear_attr(m, "q_proj", "k_proj", "v_proj", "o_proj") and hasattr(m, "num_attention_heads"):
            sites.append(_proj_head_site(name, m))
    return sites


def ffn_sites(model: nn.Module) -> list[FFNSite]:
    """Every position-wise feed-forward network of `model`, in module order."""
    sites = []
    for name, m in model.named_modules():
        if _is_linear_attr(m, "fc1", "fc2"):
            sites.append(FFNSite(name, _slot(m, "fc1", name), _slot(m, "fc2", name)))
        elif (_is_linear_attr(m, "intermediate", "output") and _is_linear_attr(m.intermediate, "dense")
              and _is_linear_attr(m.output, "dense")):
            sites.append(FFNSite(name, _slot(m.intermediate, "dense", _join(name, "intermediate")),
                                 _slot(m.output, "dense", _join(name, "output"))))
    return sites


def by_name(sites: list, kind: str, step: str) -> dict:
    """Sites keyed by name, for replaying a step's recorded state on a fresh skeleton."""
    out = {s.name: s for s in sites}
    if not out:
        raise SlimformerError(f"step {step!r}: the model has no {kind} this step knows how to change")
    return out


def transformer_stack(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of repeated Transformer layers (the longest whose items hold attention), or None."""
    best: nn.ModuleList | None = None
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best or ()) and all(head_sites(layer) for layer in m):
            best = m
    return best


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated Transformer layers, for per-layer hidden-state matching in distillation. Empty if
    the model has none."""
    return list(transformer_stack(model) or [])
