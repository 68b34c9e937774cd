"""Model families: the one place that answers "what kind of model is this".

`family_of(model)` returns the `Family` that knows the model's layout (its blocks, attention and FFN
projections, head counts, inputs, token count, protected tokens, tensor-parallel plan). Techniques,
guards, benchmarks and parallel plans ask it; none of them tests a model's class. A model no family
knows gets one error naming its class and the layouts that are supported.
"""

from __future__ import annotations

from torch import nn

from ..errors import SlimformerError
from . import bart, bert, distilbert, gpt2, llama, reference, t5, vit, whisper
from .base import Dims, Family, Inputs, Kind
from .sites import FFNSite, HeadSite, Slot

FAMILIES: tuple[Family, ...] = (*reference.FAMILIES, bert.FAMILY, distilbert.FAMILY, vit.FAMILY, gpt2.FAMILY,
                                llama.FAMILY, t5.FAMILY, bart.FAMILY, whisper.FAMILY)

__all__ = ["FAMILIES", "Dims", "FFNSite", "Family", "HeadSite", "Inputs", "Kind", "Slot", "all_blocks",
           "example_inputs", "family_of",
           "find_family", "supported"]


def find_family(model: nn.Module) -> Family | None:
    for family in FAMILIES:
        if family.matches(model):
            return family
    return None


def supported() -> list[str]:
    return [f.layout for f in FAMILIES]


def family_of(model: nn.Module, what: str = "slimformer") -> Family:
    """The family of `model`, or an error naming its class (and model_type) and what is supported."""
    family = find_family(model)
    if family is not None:
        return family
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    kind = f" (model_type {model_type!r})" if model_type else ""
    raise SlimformerError(f"{what}: {type(model).__name__}{kind} is not a layout slimformer knows; supported: "
                          + "; ".join(supported()))


def example_inputs(model: nn.Module, batch: int = 8, seq_len: int = 128, seed: int = 0) -> Inputs:
    """(args, kwargs) of random inputs with the model's real shapes and valid ids, the same for a seed."""
    import torch

    return family_of(model, "example inputs").example_inputs(model, batch, seq_len,
                                                             torch.Generator().manual_seed(seed))


def all_blocks(model: nn.Module) -> list[nn.Module]:
    """Every Transformer block, encoder then decoder (distillation matches their hidden states)."""
    family = find_family(model)
    return [b for stack in (family.stacks(model).values() if family else ()) for b in stack]
