"""Depth pruning (`prune-layers`): remove whole Transformer blocks from an encoder stack.

Why: on small models and inputs most of the time goes to work that does not shrink with narrower
matrices (attention over the tokens, norms, activations, per-op overhead); a block removed takes all
of it with it, on any backend. Which blocks: those that change the hidden states least on calibration
data, scored as `1 - cos(input, output)` per token, averaged (ShortGPT's block influence): a block
whose output points where its input did mostly adds a small correction the others can absorb.
Distillation afterwards recovers most of the accuracy; the search adds it where a setting misses the
budget.

Works on the reference `ViT` and `Encoder` (`blocks`) and Hugging Face BERT-style encoders and ViTs
(`encoder.layer`); the model's own loop runs over the shorter list, so nothing else changes. The
removed indices are recorded, and loading a saved model removes the same blocks before the weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import family_of
from .calibrate import calibration_batches
from .registry import Knob, Step, StepContext, register

log = logging.getLogger(__name__)


@dataclass
class PruneLayersOptions:
    ratio: float = 0.25  # share of the blocks removed (rounded to whole blocks; at least one stays)

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise SlimformerError(f"option 'ratio' of step 'prune-layers' must be in (0, 1), got {self.ratio}")


def block_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of blocks the model's forward loops over: the encoder's (a seq2seq model keeps its
    decoder), or a decoder-only model's."""
    family = family_of(model, "prune-layers")
    stack = family.main_stack(model)
    if stack is None:
        raise SlimformerError(f"step 'prune-layers': {type(model).__name__} ({family.name} layout) has no block "
                              "stack to shorten")
    return stack


def n_to_remove(n_blocks: int, ratio: float) -> int:
    removed = min(round(n_blocks * ratio), n_blocks - 1)
    if removed < 1:
        raise SlimformerError(f"step 'prune-layers': ratio {ratio} of {n_blocks} blocks removes none; "
                              f"use ratio >= {0.5 / n_blocks:.3g}")
    return removed


def _hidden(value) -> Tensor:
    return value if isinstance(value, Tensor) else value[0]


@torch.no_grad()
def block_influence(model: nn.Module, blocks: nn.ModuleList, ctx: StepContext) -> Tensor:
    """`[n_blocks]`: mean over calibration tokens of `1 - cos(block input, block output)`."""
    totals = torch.zeros(len(blocks))
    counts = torch.zeros(len(blocks))

    def hook_for(i: int):
        def hook(_module, args, kwargs, output) -> None:
            x = _hidden(args[0] if args else next(iter(kwargs.values())))
            y = _hidden(output)
            if x.shape == y.shape:  # a block that reduced tokens (token merging) is not comparable
                cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
                totals[i] += (1 - cos).sum()
                counts[i] += cos.numel()
        return hook

    handles = [b.register_forward_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        for args, kwargs in calibration_batches(model, ctx, "prune-layers"):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if (counts == 0).any():
        raise SlimformerError("step 'prune-layers': the calibration run did not reach every block; apply it "
                              "before token merging or pruning")
    return totals / counts


def remove_blocks(blocks: nn.ModuleList, removed: list[int]) -> None:
    """Delete the blocks at `removed` in place (the model keeps its own ModuleList object). Modules that
    index a cache by their layer (`layer_idx`, Hugging Face decoders) are renumbered to their new place."""
    gone = set(removed)
    keep = [b for i, b in enumerate(blocks) if i not in gone]
    for i in range(len(blocks) - 1, -1, -1):
        del blocks[i]
    blocks.extend(keep)
    for i, block in enumerate(blocks):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def prune_layers(model: nn.Module, opts: PruneLayersOptions, ctx: StepContext) -> nn.Module:
    blocks = block_list(model)
    n_remove = n_to_remove(len(blocks), opts.ratio)
    scores = block_influence(model, blocks, ctx)
    fixed = family_of(model).fixed_blocks(model)
    candidates = scores.clone()
    candidates[list(fixed)] = float("inf")  # blocks the rest depend on (T5's first block holds the position bias)
    removed = sorted(torch.topk(-candidates, n_remove).indices.tolist())
    remove_blocks(blocks, removed)
    ctx.state["removed"] = removed
    log.info("prune-layers: removed blocks %s of %d (influence %s)", removed, len(scores),
             [round(float(s), 4) for s in scores])
    return model


def restore_layers(model: nn.Module, opts: PruneLayersOptions, state: dict) -> nn.Module:
    blocks = block_list(model)
    removed = state.get("removed")
    if not isinstance(removed, list) or not all(isinstance(i, int) and 0 <= i < len(blocks) for i in removed) \
            or len(set(removed)) >= len(blocks):
        raise SlimformerError(f"step 'prune-layers': state 'removed' in slimformer.json must list block indices "
                              f"below {len(blocks)}, leaving at least one; got {removed!r}")
    remove_blocks(blocks, removed)
    return model


register(Step("prune-layers", PruneLayersOptions, prune_layers,
              "remove whole Transformer blocks (those that change the hidden states least on calibration data)",
              restore=restore_layers, needs_float_weights=True, role="structural",
              knob=Knob("ratio", (0.25, 0.5), identity=0.0), order=10, priority=5))
