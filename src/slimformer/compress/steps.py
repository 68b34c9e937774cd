"""The built-in steps: importing this module registers every one (add a line here when adding a step
module), and it is where steps are looked up, so the registry itself imports no technique."""

from __future__ import annotations

from torch import nn

from ..errors import SlimformerError
from . import attention_bf16, audio_trim, distill, lowrank, prune, prune_layers, quantize, tokens  # noqa: F401
from .registry import STEPS, Step


def get_step(name: str) -> Step:
    if name not in STEPS:
        raise SlimformerError(f"unknown step {name!r}; valid steps: {', '.join(sorted(STEPS))}")
    return STEPS[name]


def step_for(config: object) -> Step:
    """The step a typed config belongs to (its options class is the step's own, see `register`)."""
    for step in STEPS.values():
        if type(config) is step.options:
            return step
    raise SlimformerError(f"{type(config).__name__} is not a step config; use one of slimformer.steps "
                          f"({', '.join(sorted(s.options.__name__ for s in STEPS.values()))})")


def detected_steps(model: nn.Module) -> list[str]:
    """The steps whose change `model` visibly carries (`Step.detect`), whatever its record says."""
    return [name for name, step in STEPS.items() if step.detect is not None and step.detect(model)]


def all_steps() -> dict[str, Step]:
    return dict(STEPS)
