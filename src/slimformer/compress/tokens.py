"""Recipe steps `tome` (token merging) and `token-prune` (EViT-style pruning): input compression.

Both shrink the sequence as it flows through the blocks, so every later layer computes less; neither
changes a weight. The step patches the model instance from outside (`token_patch*.py`); a saved model
dir records the options and `restore` patches the freshly built skeleton again. `unpatch` gives back
the exact original model.

    tome:r=8                       merge 8 tokens per block
    tome:r=16,schedule=decreasing  2r in the first block, falling linearly to 0 (same total)
    tome:schedule=keep,keep_ratio=0.3   keep 30 % of the tokens after the last block (geometric)
    token-prune:keep_rate=0.7,start_layer=3,fuse=true
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..errors import SlimformerError
from ..families import family_of
from .registry import Knob, Step, StepContext, register
from .token_patch import TokenReducer, TokenSite, patch_reference, reducer_of, reference_site, token_sizes, unpatch
from .token_patch_hf import hf_site, patch_hf

__all__ = ["PruneOptions", "TomeOptions", "apply_prune", "apply_tome", "is_token_reduced", "merge_plan", "token_sizes",
           "unpatch"]

Schedule = Literal["constant", "decreasing", "keep"]
Metric = Literal["auto", "keys", "hidden"]
DEFAULT_R = 8


@dataclass
class TomeOptions:
    r: int | list[int] | None = None  # merges per block (default 8); a list gives one per block
    schedule: Schedule = "constant"   # constant r | decreasing: 2r -> 0 | keep: reach keep_ratio
    keep_ratio: float | None = None   # schedule=keep: fraction of tokens left after the last block
    prop_attn: bool = True            # proportional attention: a merged token counts as its size
    # Similarity for matching: attention keys (ToMe's choice for images) or the hidden states being
    # merged; auto = keys for ViTs, hidden for text (on MiniLM, hidden keeps cosine 0.985 vs 0.95 at
    # keep_ratio=0.5: BERT's post-LN keys share a large common direction).
    metric: Metric = "auto"

    def __post_init__(self) -> None:
        rs = self.r if isinstance(self.r, list) else [self.r] if self.r is not None else []
        if any(r < 0 for r in rs):
            raise SlimformerError(f"option 'r' of step 'tome' must be >= 0, got {self.r}")
        if self.schedule == "keep":
            if self.keep_ratio is None or not 0 < self.keep_ratio <= 1:
                raise SlimformerError("step 'tome' with schedule=keep needs option 'keep_ratio' in (0, 1], got "
                                      f"{self.keep_ratio}")
            if self.r is not None:
                raise SlimformerError("step 'tome': option 'r' cannot be combined with schedule=keep "
                                      "(keep_ratio sets the merges); drop one")
        elif self.keep_ratio is not None:
            raise SlimformerError(f"step 'tome': option 'keep_ratio' needs schedule=keep (schedule is "
                                  f"{self.schedule!r})")
        if isinstance(self.r, list) and self.schedule != "constant":
            raise SlimformerError("step 'tome': a per-block list for 'r' needs schedule=constant")


@dataclass
class PruneOptions:
    keep_rate: float | list[float] = 0.9  # fraction of tokens each block keeps; a list: one per block
    fuse: bool = True      # fuse the dropped tokens into one (their attention-weighted average)
    start_layer: int = 1   # first block that prunes (earlier attention maps are not yet informative)

    def __post_init__(self) -> None:
        rates = self.keep_rate if isinstance(self.keep_rate, list) else [self.keep_rate]
        bad = [k for k in rates if not 0 < k <= 1]
        if bad or not rates:
            raise SlimformerError(f"option 'keep_rate' of step 'token-prune' must be in (0, 1], got {self.keep_rate}")
        if self.start_layer < 0:
            raise SlimformerError(f"option 'start_layer' of step 'token-prune' must be >= 0, got {self.start_layer}")


def is_token_reduced(model: nn.Module) -> bool:
    """Whether `tome` or `token-prune` is patched into `model`: its token count changes inside the blocks,
    which code that runs the blocks itself (pipeline stages, tensor-parallel ranks) must know."""
    return reducer_of(model) is not None


def token_site(model: nn.Module, step: str) -> TokenSite:
    """The model's token geometry, or an error naming what can be patched."""
    family = family_of(model, step)
    refusal = family.token_reduction_refusal(model)
    site = None if refusal else reference_site(model, family.name) or hf_site(model, family.name)
    if site is None:
        raise SlimformerError(f"step {step!r}: {refusal or f'no token patch for the {family.name} layout'}")
    return site


def merge_plan(opts: TomeOptions, n_layers: int) -> list[int] | None:
    """Merges per block for constant/decreasing/list schedules (None for keep, which is per row)."""
    if opts.schedule == "keep":
        return None
    if isinstance(opts.r, list):
        if len(opts.r) != n_layers:
            raise SlimformerError(f"option 'r' of step 'tome' lists {len(opts.r)} values; the model has "
                                  f"{n_layers} blocks")
        return list(opts.r)
    r = DEFAULT_R if opts.r is None else opts.r
    if opts.schedule == "decreasing" and n_layers > 1:
        return [round(2 * r * (n_layers - 1 - i) / (n_layers - 1)) for i in range(n_layers)]
    return [r] * n_layers


def _check_merges(plan: list[int], site: TokenSite) -> None:
    """Refuse a plan that asks a block to merge more than it can: at most half of the mergeable tokens
    left (for text models, checked at the longest input; shorter rows merge at most half per block)."""
    n = total = site.tokens - site.protected
    for i, r in enumerate(plan):
        if r > n // 2:
            best = max((c for c in range(total // 2 + 1) if _fits([c] * len(plan), total)), default=0)
            what = "tokens" if site.fixed else f"tokens at the longest input ({site.tokens} positions)"
            raise SlimformerError(
                f"option 'r' of step 'tome': r={r} at block {i} is larger than the {n // 2} {what} that block can "
                f"merge ({n} mergeable left of {site.tokens}; a block merges at most half). The largest constant "
                f"r for this model is {best}")
        n -= r


def _fits(plan: list[int], n: int) -> bool:
    for r in plan:
        if r > n // 2:
            return False
        n -= r
    return True


def apply_tome(model: nn.Module, opts: TomeOptions, ctx: StepContext | None = None) -> nn.Module:
    """Patch ToMe into `model` (in place) and return it."""
    site = token_site(model, "tome")
    plan = merge_plan(opts, site.n_layers)
    if plan is not None:
        _check_merges(plan, site)
    elif opts.keep_ratio < 0.5 ** site.n_layers:
        raise SlimformerError(f"option 'keep_ratio' of step 'tome' must be >= {0.5 ** site.n_layers:.3g} for "
                              f"{site.n_layers} blocks (a block merges at most half), got {opts.keep_ratio}")
    red = TokenReducer("tome", site.n_layers, prop_attn=opts.prop_attn, r=plan,
                       keep_ratio=opts.keep_ratio if plan is None else None,
                       metric=site.metric if opts.metric == "auto" else opts.metric)
    return _patch(model, red)


def apply_prune(model: nn.Module, opts: PruneOptions, ctx: StepContext | None = None) -> nn.Module:
    """Patch EViT-style pruning into `model` (in place) and return it."""
    site = token_site(model, "token-prune")
    n = site.n_layers
    if opts.start_layer >= n:
        raise SlimformerError(f"option 'start_layer' of step 'token-prune' must be < {n} (the model has {n} "
                              f"blocks), got {opts.start_layer}")
    rates = opts.keep_rate if isinstance(opts.keep_rate, list) else [opts.keep_rate] * (n - opts.start_layer)
    if len(rates) > n - opts.start_layer:
        raise SlimformerError(f"option 'keep_rate' of step 'token-prune' lists {len(rates)} values, but only "
                              f"{n - opts.start_layer} blocks follow start_layer={opts.start_layer}")
    rates = [1.0] * opts.start_layer + rates + [1.0] * (n - opts.start_layer - len(rates))
    red = TokenReducer("prune", n, keep_rates=rates, fuse=opts.fuse, query=site.query)
    return _patch(model, red)


def _patch(model: nn.Module, red: TokenReducer) -> nn.Module:
    unpatch(model)  # re-applying replaces the old patch instead of stacking on it
    if reference_site(model, family_of(model, "token reduction").name) is not None:
        patch_reference(model, red)
    else:
        patch_hf(model, red)
    return model


def _tome_step(model: nn.Module, opts: TomeOptions, ctx: StepContext) -> nn.Module:
    return apply_tome(model, opts, ctx)


def _prune_step(model: nn.Module, opts: PruneOptions, ctx: StepContext) -> nn.Module:
    return apply_prune(model, opts, ctx)


register(Step("tome", TomeOptions, _tome_step,
              "token merging (ToMe): merge similar tokens between attention and MLP of every block",
              restore=lambda model, opts, state: apply_tome(model, opts), family="tokens", role="tokens",
              # images: merges per block as a share of the tokens; text rows vary in length, so a constant r
              # takes much of a short sentence and little of a long one (on MiniLM, r=2 costs cosine 0.034
              # on ~30-token verses but 0.001 on 128-token passages): text keeps a share of every row instead
              knob=Knob("r", (0.04, 0.08, 0.12, 0.16, 0.2), identity=0, per_token=True),
              text_knob=Knob("keep_ratio", (0.9, 0.8, 0.75, 0.7, 0.6, 0.5), identity=1.0, presets="schedule=keep"),
              order=50, priority=2, detect=lambda m: getattr(reducer_of(m), "method", None) == "tome"))
register(Step("token-prune", PruneOptions, _prune_step,
              "token pruning (EViT): keep the most-attended tokens, fuse the rest into one",
              restore=lambda model, opts, state: apply_prune(model, opts), family="tokens", role="tokens",
              knob=Knob("keep_rate", (0.9, 0.8, 0.7, 0.6, 0.5), identity=1.0), order=60, priority=3,
              detect=lambda m: getattr(reducer_of(m), "method", None) == "prune"))
