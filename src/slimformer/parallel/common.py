"""Pieces every parallel job shares: inputs and a loss per model family, fixed-count timing, comparing
weights across ranks. Fixed counts matter: every rank must run the same number of collectives, so the
adaptive warm-up of `bench.timing` (which stops when *this* process settles) cannot be used here."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..bench.inputs import example_inputs
from ..bench.timing import Timing, summarize
from ..errors import SlimformerError
from ..models import Decoder, Encoder, Seq2Seq, ViT

FAMILIES = (ViT, Encoder, Decoder, Seq2Seq)


def family(model: nn.Module) -> str:
    """`vit`, `encoder`, `decoder` or `seq2seq`; refuses models that have no parallel plan."""
    for cls in FAMILIES:
        if type(model) is cls:
            return cls.__name__.lower()
    raise SlimformerError(f"parallel plans exist for the reference ViT, Encoder, Decoder and Seq2Seq; "
                          f"{type(model).__name__} has none (use `slimformer parallel serve`, which runs any model)")


def refuse_token_reduction(model: nn.Module, what: str) -> None:
    """Token merging / pruning (`tome`, `token-prune`) patches the model's forward and changes the token
    count inside the blocks: a pipeline stage runs the blocks itself (the reduction would silently not
    happen) and a tensor-parallel rank sees only its heads' keys (ranks would merge differently)."""
    if getattr(model, "_token_reduction", None) is not None:
        raise SlimformerError(f"{what} cannot run a token-reduced model (tome / token-prune): the token count "
                              "changes inside the blocks; use `slimformer parallel serve` or ddp for it")


def trainable(model: nn.Module) -> bool:
    """True when every weight is a plain float tensor (an int8 / bf16 recipe makes inference-only models)."""
    return all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in model.parameters())


def output_of(model: nn.Module, inputs: tuple) -> Tensor:
    """The model's main output tensor (a Decoder also returns its cache, which we drop)."""
    out = model(*inputs)
    return out[0] if isinstance(out, tuple) else out


def batch_for(model: nn.Module, batch: int, seq_len: int, seed: int) -> tuple[tuple, Tensor]:
    """(inputs, target) of random data with the model's shapes; the same on every rank for a seed.

    Targets: class labels `[batch]` for a ViT, next tokens `[batch, time]` for a decoder / seq2seq,
    random hidden states `[batch, time, d_model]` (a regression target) for an encoder.
    """
    args, _ = example_inputs(model, batch=batch, seq_len=seq_len, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    fam = family(model)
    if fam == "vit":
        target = torch.randint(0, model.config.n_classes, (batch,), generator=g)
    elif fam == "encoder":
        target = torch.randn(batch, seq_len, model.config.d_model, generator=g)
    else:
        target = torch.randint(3, model.config.vocab_size, (batch, seq_len), generator=g)
    return args, target


def loss_fn(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """A mean loss (so averaging it over ranks or microbatches gives the full-batch loss)."""
    if family(model) == "encoder":
        return F.mse_loss
    if family(model) == "vit":
        return F.cross_entropy
    return lambda logits, target: F.cross_entropy(logits.flatten(0, 1), target.flatten())


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
