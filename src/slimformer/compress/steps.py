"""The built-in steps: importing this module registers every one (add a line here when adding a step
module), and it is where steps are looked up, so the registry itself imports no technique."""

from __future__ import annotations

from ..errors import SlimformerError
from . import attention_bf16, audio_trim, distill, lowrank, prune, prune_layers, quantize, tokens  # noqa: F401
from .registry import STEPS, Step


def get_step(name: str) -> Step:
    if name not in STEPS:
        raise SlimformerError(f"unknown step {name!r}; valid steps: {', '.join(sorted(STEPS))}")
    return STEPS[name]


def all_steps() -> dict[str, Step]:
    return dict(STEPS)
