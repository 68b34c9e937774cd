"""Pipeline parallelism with `torch.distributed.pipelining`: consecutive layers on consecutive ranks.

The split is by layer: rank r of p gets a contiguous slice of the blocks (earlier ranks take the
remainder), the first rank also the embedding and the last the final norm and head. Where to cut and how
to run each part is the family's (`Family.stage_parts`); a `Stage` holds this rank's parts under their
original names, so its `named_parameters()` line up with the unsplit model's. The batch is cut into m
microbatches; GPipe runs all forwards then all backwards, 1F1B interleaves them to hold fewer
activations. Both leave the pipeline idle for (p-1)/(m+p-1) of the time when stages take equal time.

A weight tied between the first and the last stage (a decoder's output layer and input embedding) is
kept equal across the split by adding its gradients across the ranks holding it (what the tie does in
one process). The job harness (timing, bubble, comparison) lives in `jobs.py`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

from ..errors import SlimformerError
from ..families import family_of
from ..families.base import StageParts, State, attr_path
from .common import check_positive, refuse_token_reduction

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def split_layers(n_layers: int, stages: int) -> list[tuple[int, int]]:
    """[(first, end)] block ranges, as even as possible, earlier stages taking one more."""
    base, extra = divmod(n_layers, stages)
    bounds, lo = [], 0
    for s in range(stages):
        hi = lo + base + (s < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def stage_parts(model: nn.Module) -> StageParts:
    """The family's cut of `model`, or an error saying why it has none."""
    family = family_of(model, "pipeline parallel")
    parts = family.stage_parts(model)
    if parts is None:
        raise SlimformerError(f"pipeline parallel: {family.stage_refusal(model)}")
    return parts


def validate_pp(model: nn.Module, stages: int, microbatches: int, batch: int, schedule: str) -> None:
    """Refuse, before any process starts, a split that cannot work, stating the rule and the numbers."""
    check_positive("--nproc (pipeline stages)", stages)
    check_positive("--microbatches", microbatches)
    refuse_token_reduction(model, "pipeline parallel")
    n_layers = len(attr_path(model, stage_parts(model).blocks))
    if stages > n_layers:
        raise SlimformerError(f"--nproc {stages} pipeline stages is more than the model's {n_layers} layers "
                              "(each stage needs at least one layer)")
    if schedule not in SCHEDULES:
        raise SlimformerError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if batch % microbatches:
        raise SlimformerError(f"batch {batch} must be divisible by --microbatches {microbatches} "
                              "(equal microbatches keep the averaged loss equal to the full-batch loss)")
    if schedule == "1f1b" and microbatches < stages:
        raise SlimformerError(f"1F1B needs --microbatches >= stages: {microbatches} < {stages}")


def place(root: nn.Module, path: str, part: nn.Module | nn.Parameter) -> None:
    """Put `part` at dotted `path` under `root`, creating empty containers on the way."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not hasattr(root, name):
            root.add_module(name, nn.Module())
        root = getattr(root, name)
    if isinstance(part, nn.Parameter):
        root.register_parameter(leaf, part)
    else:
        root.add_module(leaf, part)


class Stage(nn.Module):
    """Blocks [lo, hi) of `model`, plus its embedding on the first stage and norm/head on the last.

    The first stage takes the model's inputs as positional tensors (its positional inputs, then its
    keyword inputs in `input_names` order: pipeline schedules pass tensors positionally); between stages
    flows the family's `State`; the last stage returns the model's main output.
    """

    def __init__(self, model: nn.Module, parts: StageParts, lo: int, hi: int, first: bool, last: bool,
                 n_args: int = 0, input_names: tuple[str, ...] = ()):
        super().__init__()
        self._parts, self._first, self._last = parts, first, last
        self._n_args, self._input_names = n_args, input_names
        self.config = getattr(model, "config", None)  # the model's own mask builders read it
        for path in (parts.first if first else ()) + (parts.last if last else ()) + parts.every:
            place(self, path, attr_path(model, path))
        blocks = attr_path(model, parts.blocks)
        place(self, parts.blocks, nn.ModuleDict({str(i): blocks[i] for i in range(lo, hi)}))

    @property
    def is_first(self) -> bool:
        return self._first

    @property
    def is_last(self) -> bool:
        return self._last

    def forward(self, *inputs: Tensor) -> Tensor | State:
        if self._first:
            args = inputs[: self._n_args]
            state = self._parts.embed(self, args, dict(zip(self._input_names, inputs[self._n_args:], strict=True)))
        else:
            state = inputs
        state = self._parts.run_blocks(self, list(attr_path(self, self._parts.blocks).values()), state)
        return self._parts.head(self, state) if self._last else state


def build_stage(model: nn.Module, rank: int, stages: int, kwarg_names: tuple[str, ...] = (),
                n_args: int = 0) -> Stage:
    parts = stage_parts(model)
    lo, hi = split_layers(len(attr_path(model, parts.blocks)), stages)[rank]
    return Stage(model, parts, lo, hi, rank == 0, rank == stages - 1, n_args, kwarg_names)


def tied_weights(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """(first-stage name, last-stage name, shape) of each parameter the first and the last stage share."""
    parts = stage_parts(model)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    inside = lambda name, paths: any(name.startswith(f"{p}.") or name == p for p in paths)  # noqa: E731
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for group in names.values():
        first = [n for n in group if inside(n, parts.first)]
        last = [n for n in group if inside(n, parts.last)]
        if first and last:
            out.append((first[0], last[0], tuple(params[first[0]].shape)))
    return out


def sync_tied(stage: Stage, tied: list[tuple[str, str, tuple[int, ...]]], world: int) -> None:
    """Sum the gradients of each tied weight across the first and last stage (middle stages add zeros:
    a collective needs every rank of the group)."""
    if world == 1:
        return
    params = dict(stage.named_parameters())
    device = next(stage.parameters()).device
    for first_name, last_name, shape in tied:
        own = params.get(first_name) if stage.is_first else (params.get(last_name) if stage.is_last else None)
        grad = own.grad if own is not None and own.grad is not None else torch.zeros(shape, device=device)
        dist.all_reduce(grad)
        if own is not None:
            own.grad = grad


def carried_state(model: nn.Module, args: tuple, kwargs: dict) -> State:
    """What the first stage sends for these inputs (shapes for timing a later stage on its own)."""
    with torch.no_grad():
        return tuple(t.detach() for t in stage_parts(model).embed(model, args, kwargs))
