"""Compression steps registered by name, so a recipe is just a list of names with options.

A step is `apply(model, options, ctx) -> model`. Its options are a dataclass; the recipe parser
validates user input against the dataclass fields. A step that changes the model's *structure*
(smaller matrices, swapped modules, patched forwards) records what it did in `ctx.state` and
provides `restore(model, options, state) -> model`, which rebuilds that structure on a fresh
skeleton without data; `load_model` replays it before loading the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class StepContext:
    """What a step may need beyond the model: calibration / training data and a place for its state.

    calib: a callable returning an iterator of model inputs (tuples of positional args), or None.
    task: the task name the model serves (e.g. "digits"), or None.
    teacher: the uncompressed model, for distillation.
    """

    calib: Callable[[], Iterator[tuple]] | None = None
    task: str | None = None
    teacher: nn.Module | None = None
    state: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    name: str
    options: type
    apply: Callable[[nn.Module, Any, StepContext], nn.Module]
    summary: str
    restore: Callable[[nn.Module, Any, dict], nn.Module] | None = None
    # Ordering rules, checked before anything runs:
    needs_float_weights: bool = False   # e.g. pruning, low-rank, distillation
    makes_low_precision: bool = False   # e.g. int8, bf16
    family: str | None = None           # two steps of one family (e.g. "tokens") cannot both apply


STEPS: dict[str, Step] = {}


def register(step: Step) -> Step:
    if step.name in STEPS:
        raise ValueError(f"step {step.name!r} registered twice")
    STEPS[step.name] = step
    return step
