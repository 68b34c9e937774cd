"""Pieces every parallel job shares: inputs and a loss for any model family, fixed-count timing, comparing
weights across ranks. Fixed counts matter: every rank must run the same number of collectives, so the
adaptive warm-up of `bench.timing` (which stops when *this* process settles) cannot be used here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..bench.timing import Timing, summarize
from ..compress.distill import main_output
from ..compress.tokens import is_token_reduced
from ..errors import SlimformerError
from ..families import Family, family_of


def refuse_token_reduction(model: nn.Module, what: str) -> None:
    """Token merging / pruning (`tome`, `token-prune`) patches the model's forward and changes the token
    count inside the blocks: a pipeline stage runs the blocks itself (the reduction would silently not
    happen) and a tensor-parallel rank sees only its heads' keys (ranks would merge differently)."""
    if is_token_reduced(model):
        raise SlimformerError(f"{what} cannot run a token-reduced model (tome / token-prune): the token count "
                              "changes inside the blocks; use `slimformer parallel serve` or ddp for it")


def trainable(model: nn.Module) -> bool:
    """True when every weight is a plain float tensor (an int8 / bf16 recipe makes inference-only models)."""
    return all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in model.parameters())


def output_of(model: nn.Module, args: tuple, kwargs: dict | None = None) -> Tensor:
    """The model's main output tensor (logits or hidden states; a Decoder's cache, an HF output's extras
    dropped)."""
    return main_output(model(*args, **(kwargs or {})))


@dataclass
class Batch:
    """Model inputs (positional and keyword, as the family takes them) and a target for `loss`."""

    args: tuple
    kwargs: dict
    target: Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(tuple(a.to(device) for a in self.args), {k: v.to(device) for k, v in self.kwargs.items()},
                     self.target.to(device))

    def rows(self, lo: int, hi: int) -> Batch:
        """Items [lo, hi) of the batch (one rank's shard, one microbatch)."""
        return Batch(tuple(a[lo:hi] for a in self.args), {k: v[lo:hi] for k, v in self.kwargs.items()},
                     self.target[lo:hi])


def item_output_shape(model: nn.Module, args: tuple, kwargs: dict) -> tuple[int, ...]:
    """The shape of the model's main output for the first item of these inputs."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        shape = output_of(model, tuple(a[:1] for a in args), {k: v[:1] for k, v in kwargs.items()}).shape
    model.train(was_training)
    return tuple(shape)


def random_batch(model: nn.Module, batch: int, seq_len: int, seed: int,
                 out_shape: tuple[int, ...] | None = None, family: Family | None = None) -> Batch:
    """Random inputs from the model's family and random class targets over the last dimension of its main
    output (the classes, the vocabulary, or a hidden state's features), the same on every rank for a seed.
    `out_shape` / `family` (known from an earlier call) spare a forward pass / the family lookup.

    One rule for every family: `loss` is a cross-entropy over that dimension, so a training step moves
    every weight the output depends on, and a wrong gradient on any rank shows in the comparison.
    """
    family = family or family_of(model, "parallel")
    args, kwargs = family.example_inputs(model, batch, seq_len, torch.Generator().manual_seed(seed))
    shape = out_shape or item_output_shape(model, args, kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    return Batch(args, kwargs, torch.randint(0, shape[-1], (batch, *shape[1:-1]), generator=g))


def loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the last dimension (averaged over ranks or microbatches it gives the
    full-batch loss, as the equal-size shards make every mean the same weight)."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def timed(fn: Callable[[], object], batch: int, warmup: int, repeats: int, sync: bool = True,
          tick: Callable[[], None] | None = None) -> Timing:
    """Time `repeats` calls after `warmup` calls; with `sync`, all ranks start each call together.
    `tick` is called after every call (the worker's progress report)."""
    for _ in range(warmup):
        fn()
        if tick:
            tick()
    seconds = []
    for _ in range(repeats):
        if sync and dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
        if tick:
            tick()
    return summarize(seconds, batch)


def full(t: Tensor) -> Tensor:
    """A plain tensor holding all of `t` (gathers a DTensor's shards)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def max_param_diff(model: nn.Module, reference: nn.Module) -> tuple[float, str]:
    """Largest |difference| over all parameters (gathered), and the parameter where it occurs."""
    ref = dict(reference.named_parameters(remove_duplicate=False))
    worst, where = 0.0, ""
    for name, p in model.named_parameters():
        d = (full(p.detach()).cpu() - ref[name].detach().cpu()).abs().max().item()
        if d >= worst:
            worst, where = d, name
    return worst, where


class LocalWorker:
    """The single-process stand-in for `worker.Worker`: rank 0 of 1, no heartbeat (nobody watches)."""

    rank, world, device, step = 0, 1, torch.device("cpu"), 0

    def progress(self, step: int | None = None) -> None:
        self.step = self.step + 1 if step is None else step


def check_positive(name: str, value: int, low: int = 1) -> None:
    if value < low:
        raise SlimformerError(f"{name} must be >= {low}, got {value}")
