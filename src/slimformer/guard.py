"""Checks at the boundary (API, CLI, tasks, bench, serving) so bad inputs and impossible requests fail
early with a message that says what to fix, instead of deep inside model code or after allocating.

Model code stays free of these checks: a model does what its math says (NaN in, NaN out; an empty
batch, a wrong image size or an unknown token id end in a low-level torch error). Whatever hands a
model user data calls `check_inputs` first, and whatever is about to allocate for a request (a
benchmark's batch x seq, a loaded config) calls `check_request` / `check_model_config`.

The memory estimates are deliberately simple (fp32, one layer's activations alive at a time, attention
scores materialized): close enough to refuse a request that is 10x too big, never used as a
measurement.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import SlimformerError
from .families import checks, family_of

GIB = 2**30
# A pruned + quantized model holds fewer elements than its architecture; never this many times fewer.
MAX_SHRINK = 64
# Leave room for the rest of the process (Python, libraries, the caller's own tensors).
MEMORY_FRACTION = 0.8


def available_memory() -> int:
    """Bytes this process may still allocate: `SLIMFORMER_MAX_MEMORY_GB` if set, else the OS's
    MemAvailable (what can be had without swapping)."""
    limit = os.environ.get("SLIMFORMER_MAX_MEMORY_GB")
    if limit:
        try:
            return int(float(limit) * GIB)
        except ValueError as e:
            raise SlimformerError(f"SLIMFORMER_MAX_MEMORY_GB must be a number of GiB, got {limit!r}") from e
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed: int, what: str, hint: str) -> None:
    """Refuse `what` if it needs more than the memory available (before anything is allocated)."""
    budget = int(available_memory() * MEMORY_FRACTION)
    if needed > budget:
        raise SlimformerError(f"{what} needs about {needed / GIB:.1f} GiB, more than the {budget / GIB:.1f} GiB "
                              f"available; {hint}")


# ---------------------------------------------------------------------------------------------- configs

def _field_rule(name: str) -> int:
    """Smallest valid value of an int config field: ids may be 0, layer counts may be 0, sizes >= 1."""
    return 0 if name.endswith("_id") or "layers" in name else 1


def check_config_values(architecture: str, values: dict[str, Any], where: str) -> None:
    """Type- and range-check a reference architecture's config dict against its dataclass, naming the key.

    Unknown architectures and keys are left to `models.config_from_dict`, which names them.
    """
    from .models import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        return
    cls = ARCHITECTURES[architecture][1]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, tp = values[f.name], hints[f.name]
        if tp is int:
            low = _field_rule(f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SlimformerError(f"{where}: config {f.name!r} must be an integer >= {low}, got {value!r}")
        elif tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise SlimformerError(f"{where}: config {f.name!r} must be a number in [0, 1), got {value!r}")
        elif tp is bool and not isinstance(value, bool):
            raise SlimformerError(f"{where}: config {f.name!r} must be true or false, got {value!r}")
    d_model, n_heads = values.get("d_model"), values.get("n_heads")
    if isinstance(d_model, int) and isinstance(n_heads, int) and n_heads and d_model % n_heads:
        raise SlimformerError(f"{where}: config d_model {d_model} must be divisible by n_heads {n_heads}")


def tensor_bytes(module: nn.Module) -> tuple[int, int]:
    """(elements, bytes) of a module's parameters and buffers, each shared tensor counted once."""
    seen, elements, size = set(), 0, 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        elements += t.numel()
        size += t.numel() * t.element_size()
    return elements, size


def file_elements(path: Path) -> int:
    """Number of tensor elements a safetensors file declares, read from its header only (no data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            total = 0
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
            return total
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SlimformerError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from e


def check_model_config(meta: dict[str, Any], weights: Path, where: str,
                       build: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Before a model dir's skeleton is allocated: its config must be well typed, build (on the `meta`
    device, which allocates nothing), fit in memory, and roughly agree with the size of the weights file.

    This is what keeps a hostile or corrupted `slimformer.json` (`d_model: 10**7`) from allocating
    terabytes or hanging in weight init before the shape check would have refused it. `build` makes the
    skeleton from `meta` (io's builder, passed in so this module needs nothing of io).
    """
    check_config_values(meta["architecture"], meta["config"], where)
    try:
        with torch.device("meta"):
            skeleton = build({**meta, "recipe": []})
    except SlimformerError:
        raise
    except Exception as e:  # untrusted config: any failure to build is the file's fault, say which
        raise SlimformerError(f"{where}: config does not build a model ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]})") from e
    try:  # the recipe's structure too (a lowrank rank of 10**9 is big), where its restore works on `meta`
        with torch.device("meta"):
            skeleton = build(meta)
    except Exception:  # noqa: S110 - the real build reports it; this is only a size estimate
        pass
    elements, size = tensor_bytes(skeleton)
    check_memory(size, f"the model in {where} ({elements:,} parameters)",
                 "the config is wrong or the model is too large for this machine")
    if weights.exists():
        stored = file_elements(weights)
        if elements > MAX_SHRINK * stored + 2**20:
            raise SlimformerError(f"{where}: config describes {elements:,} parameters but {weights.name} holds "
                                  f"only {stored:,}; config and weights do not belong together")


# ---------------------------------------------------------------------------------------------- requests

def _dims(model: nn.Module) -> dict[str, int]:
    """d_model, heads, d_ff, layers, output vocabulary (0 if none) and max tokens of a supported model."""
    dims = dataclasses.asdict(family_of(model).dims(model))
    return {**dims, "images": int(dims["images"])}


def estimate_request_bytes(model: nn.Module, batch: int, seq_len: int) -> int:
    """Rough peak bytes of one inference forward pass at `batch` x `seq_len`: the weights plus one
    layer's activations (residual, q/k/v, attention scores and softmax, MLP hidden) plus the logits."""
    dims = _dims(model)
    _, weights = tensor_bytes(model)
    per_layer = (batch * seq_len * (5 * dims["d"] + 2 * dims["ff"])
                 + 2 * batch * dims["heads"] * seq_len * seq_len)
    logits = batch * seq_len * dims["vocab"]
    return weights + 4 * (per_layer + logits)


def check_request(model: nn.Module, batch: int, seq_len: int) -> None:
    """Refuse a batch / sequence length that is invalid or would not fit in memory, before allocating.
    For image models `seq_len` is ignored (the image size fixes the tokens)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SlimformerError(f"batch must be an integer >= 1, got {batch!r}")
    try:
        dims = _dims(model)
    except SlimformerError:  # a model family we have no memory model for: nothing to estimate
        return
    if dims.get("images"):
        seq_len = dims["max_len"]
    elif isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise SlimformerError(f"sequence length must be an integer >= 1, got {seq_len!r}")
    check_memory(estimate_request_bytes(model, batch, min(seq_len, dims["max_len"])),
                 f"batch {batch} x sequence {seq_len} on {type(model).__name__} (d_model {dims['d']}, "
                 f"{dims['layers']} layers)", "use a smaller batch or sequence length")


def check_threads(threads: int) -> int:
    """A thread count that torch can honour: 1 .. 8 x the cores (more only oversubscribes, and 10**8
    would try to start 10**8 OpenMP threads)."""
    cap = 8 * (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cap:
        raise SlimformerError(f"--threads must be an integer in [1, {cap}] (8 x the {os.cpu_count()} cores), "
                              f"got {threads!r}")
    return threads


# ---------------------------------------------------------------------------------------------- inputs

def check_images(model: nn.Module, images: Tensor) -> None:
    """images `[batch, channels, H, W]`, float, finite, of the size and channel count the model was built for."""
    c = model.config
    channels = getattr(c, "in_channels", None) or getattr(c, "num_channels", None)
    checks.check_images(images, channels, c.image_size)


def check_tokens(model: nn.Module, tokens: Tensor, mask: Tensor | None = None) -> None:
    """tokens `[batch, time]` int ids in [0, vocab), time <= the model's positions; mask `[batch, time]`."""
    checks.check_tokens(tokens, getattr(model.config, "vocab_size", None), _dims(model)["max_len"], mask)


def check_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """A tokenizer can only feed a model whose vocabulary holds every id it emits."""
    c = model.config
    vocab = getattr(c, "vocab_size", None)
    n = len(tokenizer)
    if vocab is not None and n > vocab:
        raise SlimformerError(f"tokenizer has {n} tokens but the model's vocabulary has {vocab}: they do not "
                              "belong together")


def check_inputs(model: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
    """Validate the positional/keyword inputs about to be passed to `model` (as from
    `bench.inputs.example_inputs` or a serving request): the model's family knows what it takes."""
    family_of(model, "input check").check_inputs(model, tuple(args), dict(kwargs or {}))
