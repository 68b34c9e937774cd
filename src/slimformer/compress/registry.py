"""Compression steps registered by name, so a recipe is just a list of names with options.

A step is `apply(model, options, ctx) -> model`. Its options are a dataclass; the recipe parser
validates user input against the dataclass fields. A step that changes the model's *structure*
(smaller matrices, swapped modules, patched forwards) records what it did in `ctx.state` and
provides `restore(model, options, state) -> model`, which rebuilds that structure on a fresh
skeleton without data; `load_model` replays it before loading the weights.

A step also says what `slimformer search` needs to explore it (its knob, role and place in a recipe),
so adding a step is one module and one `register(Step(...))` line: the search knows no step by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

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


# How the search treats a step:
# structural: shrinks matrices or blocks on float weights (may be rescued by a recovery step);
# tokens: reduces the token count (judged by accuracy alone when alone: its speed shows in combinations);
# precision: sets the number format (a recipe holds one; tried as is, compiled, and calibrated if offered);
# flag: a switch without a knob that joins the others rather than replacing them;
# recovery: trains the compressed model back toward the uncompressed one (appended to a structural step).
Role = Literal["structural", "tokens", "precision", "flag", "recovery"]


@dataclass(frozen=True)
class Knob:
    """The one option the search sweeps, from mild to aggressive.

    values: the settings, mild to aggressive; with `per_token` they are fractions of the model's token
    count, rounded to whole tokens (at least one), so the grid scales with the input.
    identity: the value that leaves the model as it was (where the halfway rescue starts).
    presets: options that must be set beside it, inline (e.g. `schedule=keep`).
    """

    option: str
    values: tuple[Any, ...]
    identity: Any
    per_token: bool = False
    presets: str = ""

    def grid(self, tokens: int) -> list[Any]:
        if self.per_token:
            return sorted({max(1, round(tokens * f)) for f in self.values})
        return list(self.values)


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
    # What the search needs (search.py reads these):
    role: Role | None = None            # None: the search leaves the step out
    knob: Knob | None = None            # the option swept (structural and token steps)
    text_knob: Knob | None = None       # the knob for variable-length text inputs, where it differs
    order: int = 99                     # place in a recipe the search builds (structure first, precision last)
    priority: int = 99                  # explored earlier when time is short (cheap, usually a big win)
    # Whether the step can apply to a model at all (None: to any); the search leaves it out elsewhere
    # rather than spend candidates on a step that can only refuse (audio-trim on a text encoder).
    applies: Callable[[nn.Module], bool] | None = None
    # Options that older saved dirs recorded and the step no longer takes: ignored when a saved recipe
    # is replayed, so those dirs still load.
    legacy_options: tuple[str, ...] = ()
    # Whether a model carries this step's change, for steps whose change a saved dir would otherwise lose
    # or misread (patched forwards, swapped modules, dtypes): `save_model` refuses such a model when it has
    # no recipe record, since it would load back uncompressed or not at all.
    detect: Callable[[nn.Module], bool] | None = None

    def __post_init__(self) -> None:
        fields = {f.name for f in dataclasses.fields(self.options)} if dataclasses.is_dataclass(self.options) \
            else set()
        for knob in (self.knob, self.text_knob):
            if knob is not None and knob.option not in fields:
                raise ValueError(f"step {self.name!r}: knob option {knob.option!r} is not one of its options")


STEPS: dict[str, Step] = {}


def register(step: Step) -> Step:
    """Add a step; its options class must be its own, since a typed recipe picks the step by that type."""
    if step.name in STEPS:
        raise ValueError(f"step {step.name!r} registered twice")
    shared = [s.name for s in STEPS.values() if s.options is step.options]
    if shared:
        raise ValueError(f"step {step.name!r} reuses the options class of step {shared[0]!r}; give it its own")
    STEPS[step.name] = step
    return step
