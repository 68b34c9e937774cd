"""What every model family can be asked: the one interface techniques, guards and benchmarks use.

A family is a model *layout* (BERT-style, GPT-2, Llama-style, T5, BART/Marian, Whisper, our reference
models, ...), not a class: many Hugging Face classes share one layout. Each family module implements
`Family` once; nothing outside `families/` tests what kind of model it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import SlimformerError
from .sites import FFNSite, HeadSite

Kind = Literal["image", "encoder", "decoder", "seq2seq", "speech"]
Inputs = tuple[tuple, dict]


@dataclass(frozen=True)
class Dims:
    """Sizes for memory estimates and input checks."""

    d: int  # model width
    heads: int
    ff: int  # FFN hidden width
    layers: int  # all blocks, encoder + decoder
    vocab: int  # output vocabulary (logits per token; 0 if the model has no LM head)
    max_len: int  # most tokens per sequence the model takes (image models: their fixed token count)
    images: bool = False  # the token count is fixed by the input image size


class Family:
    """One model layout. Subclasses set the class attributes and implement the layout-specific parts."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    layout: ClassVar[str]  # what it matches, for the "unsupported model" message
    generative: ClassVar[bool] = False  # True for layouts whose LM-head classes can `generate`

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    # ---- structure
    def head_sites(self, model: nn.Module) -> list[HeadSite]:
        """Every multi-head attention layer, in module order."""
        raise NotImplementedError

    def ffn_sites(self, model: nn.Module) -> list[FFNSite]:
        """Every position-wise feed-forward network, in module order."""
        raise NotImplementedError

    def stacks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        """The block stacks the model's forward loops over, by role ("encoder", "decoder")."""
        raise NotImplementedError

    def dims(self, model: nn.Module) -> Dims:
        raise NotImplementedError

    def fixed_blocks(self, model: nn.Module) -> set[int]:
        """Indices of main-stack blocks that depth pruning must keep (the others depend on them)."""
        return set()

    # ---- inputs
    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        """(args, kwargs) of random inputs with real shapes and valid ids (speed work only)."""
        raise NotImplementedError

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """Refuse inputs the model cannot take, naming the field (see guard.check_*)."""
        raise NotImplementedError

    def token_count(self, model: nn.Module, seq_len: int) -> int:
        """Tokens the (encoder) blocks really see for inputs of `seq_len` (image models: fixed)."""
        dims = self.dims(model)
        return dims.max_len if dims.images else seq_len

    def protected_tokens(self, model: nn.Module) -> int:
        """Leading tokens token reduction must keep as they are (class, distillation, register tokens)."""
        return 0

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        """Why token merging / pruning cannot run on this model, or None if it can."""
        if self.kind == "decoder":
            return (f"{type(model).__name__} is a causal decoder: merging or dropping tokens would mix past "
                    "and future positions; use int8 / bf16 / pruning on it, or token reduction on an encoder")
        return (f"token reduction has no patch for the {self.name} layout ({type(model).__name__}) yet; "
                "it runs on the reference models and Hugging Face BERT-style encoders and ViTs")

    # ---- parallel
    def tp_plan(self, model: nn.Module) -> dict[str, str] | None:
        """Tensor-parallel plan: submodule pattern -> "colwise" / "rowwise"; None if the family has none."""
        return None

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """A short summary for tables and /info."""
        dims = self.dims(model)
        return {"family": self.name, "kind": self.kind, "class": type(model).__name__, "d_model": dims.d,
                "heads": dims.heads, "layers": dims.layers}


def random_ids(g: torch.Generator, vocab: int, shape: tuple[int, ...], low: int = 0) -> Tensor:
    """Token ids in `[low, vocab)`, `low` lowered when the vocabulary is tiny (ids stay inside it)."""
    if vocab < 1:
        raise SlimformerError(f"the model's vocabulary size is {vocab}; it must be >= 1")
    low = min(low, vocab - 1)
    return torch.randint(low, vocab, shape, generator=g)


def check_len(seq_len: int, max_len: int, model: nn.Module) -> None:
    if seq_len > max_len:
        raise SlimformerError(f"sequence length {seq_len} exceeds the model's {max_len} positions "
                              f"({type(model).__name__}); use --seq <= {max_len}")
