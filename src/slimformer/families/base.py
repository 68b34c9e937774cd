"""What every model family can be asked: the one interface techniques, guards and benchmarks use.

A family is a model *layout* (BERT-style, GPT-2, Llama-style, T5, BART/Marian, Whisper, our reference
models, ...), not a class: many Hugging Face classes share one layout. Each family module implements
`Family` once; nothing outside `families/` tests what kind of model it holds.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def main_stack(self, model: nn.Module) -> nn.ModuleList | None:
        """The encoder's blocks (a seq2seq model keeps its decoder), else a decoder-only model's; None if none."""
        stacks = self.stacks(model)
        return stacks.get("encoder", stacks.get("decoder"))

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
        return (f"token reduction has no patch for the {self.name} layout ({type(model).__name__}); it runs on "
                "the encoders of the reference models and of the BERT, DistilBERT, ViT, T5, BART/Marian and Whisper "
                "layouts")

    # ---- parallel
    def tp_plan(self, model: nn.Module, degree: int = 1) -> dict[str, str]:
        """Tensor-parallel plan (Megatron's): submodule name -> "colwise" / "rowwise", from the sites.

        q, k, v (and an FFN's gate and up) are split by output features, so each rank owns whole heads
        (and their key/value heads) and a slice of the hidden layer; o and down are split by input
        features, their partial sums all-reduced. Refuses, stating the rule and the numbers, what cannot
        be split `degree` ways. After sharding, a rank holds `n / degree` heads: `site.set_heads` says so.
        """
        what = f"tensor parallel ({type(model).__name__}, {self.name} layout)"
        plan: dict[str, str] = {}
        for site in self.head_sites(model):
            if site.qkv is not None:
                raise SlimformerError(
                    f"{what}: {site.name} projects q, k and v with one fused layer ({site.qkv.name}); split by "
                    "output features a rank would get all of q and part of k instead of whole heads. Tensor "
                    "parallel needs separate q/k/v projections; use `slimformer parallel ddp` for it")
            if site.tables:
                raise SlimformerError(
                    f"{what}: {site.name} adds a per-head table ({site.tables[0].name}) shared across layers; "
                    "tensor parallel splits heads only where attention has no per-head tables; use `slimformer "
                    "parallel ddp` for it")
            if site.n_heads % degree:
                raise SlimformerError(f"{what}: {site.name}: number of heads {site.n_heads} must be divisible by "
                                      f"the tensor-parallel degree {degree} (each rank owns whole heads)")
            if site.kv_heads % degree:
                raise SlimformerError(
                    f"{what}: {site.name}: number of key/value heads {site.kv_heads} (shared by {site.n_heads} "
                    f"query heads) must be divisible by the tensor-parallel degree {degree} (each rank owns the "
                    "key/value heads its query heads read)")
            plan.update({s.name: "colwise" for s in site.projections})
            plan[site.o.name] = "rowwise"
        for site in self.ffn_sites(model):
            width = int(site.fc1.get().weight.shape[0])
            if width % degree:
                raise SlimformerError(f"{what}: {site.name} has FFN width {width}; it must be divisible by the "
                                      f"tensor-parallel degree {degree}")
            plan.update({s.name: "colwise" for s in (site.gate, site.fc1) if s is not None})
            plan[site.fc2.name] = "rowwise"
        if not plan:
            raise SlimformerError(f"{what}: found no attention or FFN layer to split")
        return plan

    def stage_parts(self, model: nn.Module) -> StageParts | None:
        """How pipeline stages cut this model (see `StageParts`); None where the layout has no single
        stack to cut (an encoder-decoder: every decoder stage needs the encoder's memory)."""
        return None

    def stage_refusal(self, model: nn.Module) -> str:
        """Why `stage_parts` is None for this model (for the pipeline-parallel refusal)."""
        if self.kind in ("seq2seq", "speech"):
            return (f"{type(model).__name__} has two stacks, an encoder and a decoder (every decoder stage needs "
                    "the encoder memory); use `slimformer parallel ddp` or tp for it")
        return (f"{type(model).__name__} ({self.name} layout) has no pipeline split yet; pipeline parallel runs "
                "the reference ViT, Encoder and Decoder, Hugging Face Llama-style decoders (base or causal LM) "
                "and BERT-style base encoders")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """A short summary for tables and /info."""
        dims = self.dims(model)
        return {"family": self.name, "kind": self.kind, "class": type(model).__name__, "d_model": dims.d,
                "heads": dims.heads, "layers": dims.layers}


State = tuple[Tensor, ...]


@dataclass(frozen=True)
class StageParts:
    """A model cut for pipeline stages, in the model's own modules.

    Paths are dotted attribute paths from the model. A stage holds the parts it runs at the same paths
    (so its parameter names are the unsplit model's), and the three functions take that holder: on the
    whole model they compute the model's main output (`run_stage_parts`), which is how each family's cut
    is tested. What flows between stages (`State`) is float tensors only: a pipeline sizes its buffers
    by running a stage on uninitialized tensors, so token ids or integer masks must not cross stages.
    """

    blocks: str  # the block list the stages split
    first: tuple[str, ...]  # parts run before the blocks (embeddings): the first stage's
    last: tuple[str, ...]  # parts run after them (final norm, head): the last stage's
    embed: Callable[[nn.Module, tuple, dict], State]  # (holder, model args, model kwargs) -> state
    run_blocks: Callable[[nn.Module, list[nn.Module], State], State]  # a stage's consecutive blocks
    head: Callable[[nn.Module, State], Tensor]  # state after the last block -> the model's main output
    every: tuple[str, ...] = ()  # parameter-free parts every stage needs (rotary tables)


def attr_path(root: Any, path: str) -> Any:
    """`root.a.b` for path "a.b" (the root itself for "")."""
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root


def run_stage_parts(model: nn.Module, parts: StageParts, args: tuple, kwargs: dict) -> Tensor:
    """The whole model run through its stage parts: equals its main output when the cut is right."""
    state = parts.embed(model, args, kwargs)
    return parts.head(model, parts.run_blocks(model, list(attr_path(model, parts.blocks)), state))


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
