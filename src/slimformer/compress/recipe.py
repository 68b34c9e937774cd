"""Recipes: parse (inline `a:x=1,y=2+b`, YAML, or typed step configs), validate every name, option, type
and order up front, then apply the steps in sequence.

Inline:  `prune-heads:ratio=0.25+int8`
YAML:    steps:
           - prune-heads: {ratio: 0.25}
           - int8
Typed:   [PruneHeads(ratio=0.25), Int8()]   (slimformer.steps: one config class per step, torchao-style)

The three forms of one recipe parse to the same steps; `inline` and `to_yaml` write a parsed recipe back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from torch import nn

from ..errors import SlimformerError
from .registry import Step, StepContext
from .steps import all_steps, get_step, step_for

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines; anything bigger is a mistake or an attack
# Error messages quote user values through this: a YAML alias bomb must not expand into a 10 GB message.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxstring, _repr.maxother = 3, 6, 6, 80, 80
_short = _repr.repr


@dataclass
class RecipeStep:
    step: Step
    options: Any

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step.name, "options": dataclasses.asdict(self.options)}

    def changed(self) -> dict[str, Any]:
        """The options that differ from the step's defaults."""
        defaults = type(self.options)()
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)
                if getattr(self.options, f.name) != getattr(defaults, f.name)}

    def __str__(self) -> str:
        changed = [f"{k}={_inline_value(v)}" for k, v in self.changed().items()]
        return self.step.name + (":" + ",".join(changed) if changed else "")


def _inline_value(value: Any) -> str:
    """A value as the inline parser reads it back (lists joined by '/', None as none)."""
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    return "none" if value is None else str(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML, or a string from an inline recipe) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SlimformerError as e:
                errors.append(str(e))
        names = [_type_name(a) if a is not type(None) else "none" for a in args]
        raise SlimformerError(f"{where} must be " + " or ".join(names) + f", got {_short(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise SlimformerError(f"{where} must be one of {', '.join(map(repr, choices))}, got {_short(value)}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = value.split("/") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SlimformerError(f"{where} must be a list (inline: values joined by '/'), got {_short(value)}")
        return [_coerce(v, inner, where) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise SlimformerError(f"{where} must be true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise SlimformerError(f"{where} must be an integer, got {_short(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SlimformerError(f"{where} must be an integer, got {_short(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise SlimformerError(f"{where} must be a number, got {_short(value)}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
        raise SlimformerError(f"{where} must be a finite number, got {_short(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SlimformerError(f"{where} must be text, got {_short(value)}")
    return value


def options_from_dict(step: Step, values: dict[str, Any]) -> Any:
    """Build `step`'s options dataclass from user values, naming any unknown key or bad value."""
    if not isinstance(values, dict):
        raise SlimformerError(f"options of step {step.name!r} must be a mapping, got {_short(values)}")
    hints = typing.get_type_hints(step.options)
    valid = [f.name for f in dataclasses.fields(step.options)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise SlimformerError(f"unknown option {key!r} for step {step.name!r}; valid options: "
                                  f"{', '.join(valid) if valid else '(none)'}")
        kwargs[key] = _coerce(value, hints[key], f"option {key!r} of step {step.name!r}")
    try:
        return step.options(**kwargs)
    except SlimformerError:
        raise
    except (TypeError, ValueError) as e:
        raise SlimformerError(f"step {step.name!r}: {e}") from e


def _parse_inline(spec: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for part in spec.split("+"):
        part = part.strip()
        if not part:
            raise SlimformerError(f"empty step in recipe {spec!r} (steps are joined by '+')")
        name, _, opts = part.partition(":")
        values: dict[str, Any] = {}
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise SlimformerError(f"option {item!r} of step {name.strip()!r} is not key=value")
            values[key.strip()] = value.strip()
        out.append((name.strip(), values))
    return out


def _parse_yaml(data: Any, source: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict):
        unknown = set(data) - {"steps", "name", "description", "measured_on"}
        if unknown:
            raise SlimformerError(f"{source}: unknown top-level key(s) {', '.join(map(repr, sorted(unknown)))}; "
                                  "valid: steps, name, description, measured_on")
        data = data.get("steps")
    if not isinstance(data, list):
        raise SlimformerError(f"{source}: expected a list of steps under 'steps'")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.extend(_parse_inline(item) if item.strip() else [(item, {})])  # a name, or `name:opt=v`
        elif isinstance(item, RecipeStep):
            out.append((item.step.name, dataclasses.asdict(item.options)))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            out.append((step_for(item).name, dataclasses.asdict(item)))  # a typed step config
        elif isinstance(item, dict) and len(item) == 1:
            ((name, opts),) = item.items()
            out.append((str(name), opts if opts is not None else {}))
        else:
            raise SlimformerError(f"{source}: step {i} must be a name, {{name: {{option: value}}}} or a step "
                                  f"config from slimformer.steps, got {_short(item)}")
    return out


def parse_recipe(spec: Any, task: str | None = None) -> list[RecipeStep]:
    """Parse and fully validate a recipe: YAML file path, inline spec, a list (of step names, inline
    steps, `{name: {option: value}}` mappings, typed step configs or parsed steps), one typed step
    config, or a preset (`fast`, `small`: the measured pick for `task` on this CPU, see presets.py).
    Typed configs are validated like text: `Tome(r="8")` is coerced, `Tome(r=-1)` refused."""
    from .presets import expand

    spec = expand(spec, task)
    if spec is None or spec == "" or spec == "none":
        return []
    if isinstance(spec, RecipeStep) or (dataclasses.is_dataclass(spec) and not isinstance(spec, type)):
        spec = [spec]  # one typed step config
    if isinstance(spec, (list, tuple)):
        raw = _parse_yaml(spec, "recipe")
    elif str(spec).endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise SlimformerError(f"recipe file {path} not found")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise SlimformerError(f"recipe file {path} is {path.stat().st_size:,} bytes; recipes are at most "
                                  f"{MAX_RECIPE_BYTES:,}")
        try:
            raw = _parse_yaml(yaml.safe_load(path.read_text()), str(path))
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: `[[[[...` bombs
            raise SlimformerError(f"{path}: not valid YAML ({(str(e).splitlines() or [''])[0]})") from e
    else:
        raw = _parse_inline(str(spec))
    steps = [RecipeStep(get_step(name), options_from_dict(get_step(name), opts)) for name, opts in raw]
    check_order(steps)
    return steps


def inline(steps: list[RecipeStep]) -> str:
    """A parsed recipe as an inline spec (options left at their defaults omitted)."""
    return "+".join(str(s) for s in steps)


def to_yaml(steps: list[RecipeStep], **top: Any) -> str:
    """A parsed recipe as a YAML recipe file (`top`: name, description, measured_on)."""
    doc = {**top, "steps": [{s.step.name: dataclasses.asdict(s.options)} for s in steps]}
    return yaml.safe_dump(doc, sort_keys=False)


def check_order(steps: list[RecipeStep]) -> None:
    """Refuse orders that cannot work, saying what would."""
    low_precision: str | None = None
    claimed: dict[str, str] = {}  # part of the model (encoder / decoder) -> the precision step that set it
    families: dict[str, str] = {}
    for rs in steps:
        s = rs.step
        if s.needs_float_weights and low_precision:
            raise SlimformerError(f"step {s.name!r} cannot come after {low_precision!r}: it needs float "
                                  f"weights; put {low_precision!r} last")
        if s.makes_low_precision:
            # a step scoped to one side of an encoder-decoder (int8:scope=decoder, bf16:scope=encoder)
            # sets that side only, so two precision steps on disjoint sides compose
            scope = getattr(rs.options, "scope", "all")
            parts = ("encoder", "decoder") if scope == "all" else (scope,)
            clash = next((claimed[p] for p in parts if p in claimed), None)
            if clash:
                raise SlimformerError(f"steps {clash!r} and {s.name!r} both set the precision of the same part; "
                                      "keep one, or scope them to different parts (scope=encoder / decoder)")
            claimed.update(dict.fromkeys(parts, s.name))
            low_precision = s.name
        if s.family:
            if s.family in families:
                raise SlimformerError(f"steps {families[s.family]!r} and {s.name!r} both {s.family}; keep one")
            families[s.family] = s.name


def apply_recipe(model: nn.Module, steps: list[RecipeStep], ctx: StepContext | None = None,
                 applied: list[dict] | None = None) -> tuple[nn.Module, list[dict]]:
    """Apply validated steps in order. Returns the model and the recipe record for `slimformer.json`
    (appended to `applied`, the record of steps already applied to `model`)."""
    record = list(applied or [])
    earlier = [recorded_step(e) for e in record]
    check_order(earlier + steps)
    for rs in steps:
        step_ctx = ctx or StepContext()
        step_ctx.state = {}
        model = rs.step.apply(model, rs.options, step_ctx)
        record.append({**rs.to_dict(), "state": step_ctx.state})
    return model, record


def describe_steps() -> list[tuple[str, str, str]]:
    """(name, options with defaults, summary) of every registered step, for `slimformer models`."""
    rows = []
    for name, step in sorted(all_steps().items()):
        opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(step.options)
                         if f.default is not dataclasses.MISSING)
        rows.append((name, opts, step.summary))
    return rows


def recorded_step(entry: dict) -> RecipeStep:
    """One entry of a recipe record (`{"step", "options"}`), validated; options a step no longer takes
    (`Step.legacy_options`) are dropped, so dirs saved before still load."""
    step = get_step(entry["step"])
    values = entry.get("options") or {}
    if isinstance(values, dict) and step.legacy_options:
        values = {k: v for k, v in values.items() if k not in step.legacy_options}
    return RecipeStep(step, options_from_dict(step, values))


def restore_recipe(model: nn.Module, recipe: list[dict]) -> nn.Module:
    """Replay the structure of each applied step on a freshly built model (no data needed)."""
    for i, entry in enumerate(recipe):
        if not isinstance(entry, dict) or "step" not in entry:
            raise SlimformerError(f"recipe entry {i} in slimformer.json is not {{'step': ..., 'options': ...}}")
        rs = recorded_step(entry)
        if rs.step.restore is not None:
            model = rs.step.restore(model, rs.options, entry.get("state") or {})
    return model
