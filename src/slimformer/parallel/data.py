"""Data-parallel training: DDP (every rank holds the whole model, gradients are all-reduced) or FSDP2
(`fully_shard`: parameters, gradients and optimizer state sharded, gathered layer by layer).

Each rank takes its own slice of every global batch, so one step on N ranks with b items each equals
one single-process step on the N·b items (the losses are means, and both wrappers average gradients).
Rank 0 writes checkpoints as model dirs (`io.save_model`, atomic: a crash mid-save leaves the previous
checkpoint whole) with the optimizer and schedule state beside the weights, so `--resume DIR` continues
where the run stopped. Tasks: the real digits images, a synthetic seq2seq task (reverse / copy a
random token sequence), which trains the encoder-decoder without needing the translation corpus, and
`random` (the family's random inputs, random class targets over the main output's last dimension), which
trains any model slimformer knows. The job harness (training loop, one-step check) lives in `jobs.py`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.nn.parallel import DistributedDataParallel

from .. import io
from ..errors import SlimformerError
from ..families import family_of
from .common import Batch, check_positive, full, item_output_shape, loss, output_of, random_batch

log = logging.getLogger(__name__)

TASKS = ("digits", "reverse", "copy", "random")
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


class DigitsData:
    """The real digits training split; a global batch is a slice of a per-epoch permutation."""

    def __init__(self, seed: int):
        from ..tasks.digits import load_data

        self.data = load_data()
        self.seed = seed

    def steps_per_epoch(self, global_batch: int) -> int:
        return len(self.data.y_train) // global_batch  # drop the ragged last batch: equal shards

    def shard(self, epoch: int, step: int, global_batch: int, rank: int, world: int, augment: bool) -> Batch:
        from ..tasks.images import random_affine

        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(len(self.data.y_train), generator=g)
        local = global_batch // world
        idx = order[step * global_batch + rank * local: step * global_batch + (rank + 1) * local]
        x = self.data.x_train[idx]
        if augment:
            x = random_affine(x, torch.Generator().manual_seed(hash((self.seed, epoch, step, rank)) % 2**31))
        return Batch((x,), {}, self.data.y_train[idx])


class SequenceData:
    """Synthetic seq2seq: the target is the source reversed (or copied), between BOS and EOS."""

    def __init__(self, seed: int, vocab: int, length: int, reverse: bool, bos: int = 1, eos: int = 2):
        self.seed, self.vocab, self.length, self.reverse, self.bos, self.eos = seed, vocab, length, reverse, bos, eos

    def steps_per_epoch(self, global_batch: int) -> int:
        return 50

    def shard(self, epoch: int, step: int, global_batch: int, rank: int, world: int, augment: bool) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + step)
        src = torch.randint(3, self.vocab, (global_batch, self.length), generator=g)
        local = global_batch // world
        src = src[rank * local:(rank + 1) * local]
        out = src.flip(1) if self.reverse else src
        bos = torch.full((local, 1), self.bos)
        eos = torch.full((local, 1), self.eos)
        return Batch((src, torch.cat([bos, out], 1)), {}, torch.cat([out, eos], 1))


class RandomData:
    """Any model: the family's random inputs, random class targets over the main output's last dimension;
    a global batch is drawn from the seed and step, and each rank takes its slice."""

    def __init__(self, model: nn.Module, seed: int, seq_len: int):
        # family and output shape now: once wrapped (DDP, FSDP) the model is neither looked up nor called here
        self.model, self.seed, self.seq_len, self.family = model, seed, seq_len, family_of(model, "ddp")
        args, kwargs = self.family.example_inputs(model, 1, seq_len, torch.Generator().manual_seed(seed))
        self.out_shape = item_output_shape(model, args, kwargs)

    def steps_per_epoch(self, global_batch: int) -> int:
        return 50

    def shard(self, epoch: int, step: int, global_batch: int, rank: int, world: int, augment: bool) -> Batch:
        whole = random_batch(self.model, global_batch, self.seq_len, self.seed * 1_000_003 + epoch * 1009 + step,
                             self.out_shape, self.family)
        local = global_batch // world
        return whole.rows(rank * local, (rank + 1) * local)


def make_data(task: str, model: nn.Module, seed: int, seq_len: int):
    if task == "digits":
        return DigitsData(seed)
    if task == "random":
        return RandomData(model, seed, seq_len)
    return SequenceData(seed, model.config.vocab_size, seq_len, reverse=task == "reverse")


def task_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, int, int]:
    """Mean cross-entropy over items (classes `[b, C]`) or tokens (`[b, t, V]`); also #correct, #items."""
    flat_logits, flat_target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    return loss(logits, target), int((flat_logits.argmax(-1) == flat_target).sum()), flat_target.numel()


def positional_shapes(model: nn.Module, seq_len: int) -> list[tuple[int, ...]] | None:
    """Shapes of the model's inputs for one item, if it takes them all positionally (None otherwise)."""
    args, kwargs = family_of(model, "ddp").example_inputs(model, 1, seq_len, torch.Generator().manual_seed(0))
    return None if kwargs else [tuple(a.shape) for a in args]


def validate_ddp(model: nn.Module, task: str, nproc: int, batch: int, fsdp: bool) -> None:
    """Refuse, before any process starts, a model/task/size that cannot train, with the numbers."""
    check_positive("--nproc", nproc)
    check_positive("--batch (per rank)", batch)
    if task not in TASKS:
        raise SlimformerError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    family = family_of(model, "ddp")
    if task == "digits":
        shapes = positional_shapes(model, 1)
        classes = None
        if shapes == [(1, 1, 16, 16)]:
            with torch.no_grad():
                classes = output_of(model.eval(), (torch.zeros(1, 1, 16, 16),)).shape[-1]
        if classes != 10:
            raise SlimformerError("the digits task trains a ViT taking 16x16x1 images positionally, 10 classes "
                                  f"(e.g. vit-tiny or a digits model dir); got {type(model).__name__}; "
                                  "--task random trains any model")
        n = 1437  # digits training split
        if batch * nproc > n:
            raise SlimformerError(f"global batch {batch} x {nproc} ranks = {batch * nproc} exceeds the "
                                  f"{n} digits training images")
    elif task in ("reverse", "copy"):
        shapes = positional_shapes(model, 4) if family.kind == "seq2seq" else None
        if shapes is None or len(shapes) != 2:
            raise SlimformerError(f"task {task!r} trains an encoder-decoder taking (source, target) token tensors "
                                  f"positionally (e.g. seq2seq-small); got {type(model).__name__}; --task random "
                                  "trains any model")
    if fsdp and not family.stacks(model):
        raise SlimformerError("FSDP shards per Transformer block; this model has no block list")


def unused_parameters(model: nn.Module, probe: Batch) -> list[str]:
    """Parameters the loss does not reach (a BERT pooler beside the hidden states the loss reads), found
    by one backward on the probe's first item. DDP must be told of them: it all-reduces a bucket when
    all of its gradients are ready, and a bucket holding one that never comes is silently not averaged."""
    item = probe.rows(0, 1)
    was_training = model.training
    model.eval()
    loss(output_of(model, item.args, item.kwargs), item.target).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


def apply_ddp(model: nn.Module, device: torch.device, probe: Batch | None = None) -> nn.Module:
    """Wrap for DDP: all-reduce (average) gradients in buckets while the backward pass still runs.
    With a `probe` batch, parameters the loss does not reach are looked for and DDP told of them."""
    find_unused = bool(probe is not None and unused_parameters(model, probe.to(device)))
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def apply_fsdp(model: nn.Module, device_type: str, world: int) -> nn.Module:
    """FSDP2: shard each Transformer block, then the rest (embeddings, head) as the root unit.
    Sharding per block lets a block's all-gather overlap the previous block's compute."""
    mesh = init_device_mesh(device_type, (world,))
    for stack in family_of(model, "FSDP").stacks(model).values():
        for block in stack:
            fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW, no decay on biases, norms and embeddings (as `tasks.training.fit`)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def unwrap(parallel: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards the model in place: it is its own)."""
    return parallel.module if isinstance(parallel, DistributedDataParallel) else parallel


def wrap(model: nn.Module, spec: dict[str, Any], worker, probe: Batch | None = None) -> nn.Module:
    """DDP or FSDP over all ranks (`probe`: a batch the model takes, see `apply_ddp`)."""
    if worker.world == 1:
        return model  # one process: the plain single-process trainer, nothing to synchronize
    if spec.get("fsdp"):
        return apply_fsdp(model, worker.device.type, worker.world)
    return apply_ddp(model, worker.device, probe)





def save_checkpoint(out: Path, parallel: nn.Module, optimizer, scheduler, template: nn.Module | None, step: int,
                    spec: dict[str, Any], worker) -> None:
    """Gather the full model and optimizer state (a collective: every rank calls this) and let rank 0
    write one model dir atomically, with the optimizer state and step beside the weights."""
    model_sd = get_model_state_dict(parallel, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Optimizer state gathered by hand, parameter by parameter in model order (the same on every rank, as
    # a collective needs); in torch 2.13 `get_state_dict` mismatched collectives after a resume under FSDP.
    unwrapped = unwrap(parallel)
    tensors, scalars = {}, {}
    for fqn, p in unwrapped.named_parameters():
        for key, value in sorted(optimizer.state.get(p, {}).items()):
            if isinstance(value, Tensor) and value.ndim:
                tensors[f"{fqn}::{key}"] = full(value).detach().cpu().contiguous()
            else:
                scalars[f"{fqn}::{key}"] = float(value)
    if worker.rank == 0:
        template.load_state_dict(model_sd)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        trainer = {"step": step, "task": spec["task"], "world": worker.world, "batch_per_rank": spec["batch"],
                   "scalars": scalars, "param_groups": groups,
                   "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}}
        io.save_model(template, out, extra={"training": {k: trainer[k] for k in ("step", "task", "world")}},
                      files={OPTIMIZER_FILE: save_tensors(tensors), TRAINER_FILE: json.dumps(trainer).encode()})
        log.info("checkpoint at step %d written to %s", step, out)
    worker.progress()


def load_trainer_state(path: Path, parallel: nn.Module, optimizer, scheduler) -> int:
    """Restore optimizer and schedule from a checkpoint dir (the weights were loaded with the model);
    return the step to continue from."""
    trainer_path = path / TRAINER_FILE
    if not trainer_path.exists():
        raise SlimformerError(f"{path}: not a training checkpoint ({TRAINER_FILE} missing)")
    trainer = json.loads(trainer_path.read_text())
    tensors = load_tensors((path / OPTIMIZER_FILE).read_bytes())
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        fqn, name = key.split("::")
        state.setdefault(fqn, {})[name] = value
    for key, value in trainer["scalars"].items():
        fqn, name = key.split("::")
        state.setdefault(fqn, {})[name] = torch.tensor(value)
    # Placed by hand rather than with `set_optimizer_state_dict`: in torch 2.13 on CPU/gloo that left
    # FSDP's local optimizer shards uninitialized (NaN after the first step); this is exact for both.
    unwrapped = unwrap(parallel)
    params = dict(unwrapped.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise SlimformerError(f"{path}: optimizer state for parameter {missing[0]!r} missing "
                              f"({len(missing)} missing in all): checkpoint of a different model?")
    for fqn, entries in state.items():
        p = params[fqn]
        optimizer.state[p] = {k: shard_like(v, p) if v.ndim else v for k, v in entries.items()}
    for group, saved in zip(optimizer.param_groups, trainer["param_groups"], strict=True):
        group.update({k: tuple(v) if k == "betas" else v for k, v in saved.items() if k != "params"})
    scheduler.load_state_dict({**trainer["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    return int(trainer["step"])


def shard_like(full: Tensor, param: Tensor) -> Tensor:
    """`full` laid out like `param`: this rank's torch.chunk along the sharded dim for an FSDP DTensor
    (the way FSDP2 shards), the whole tensor otherwise. Local slicing, no collective."""
    if not isinstance(param, DTensor):
        return full.to(param.device)
    local = full
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, Shard):
            n, rank = param.device_mesh.size(mesh_dim), param.device_mesh.get_local_rank(mesh_dim)
            chunks = torch.chunk(local, n, dim=placement.dim)
            local = chunks[rank] if rank < len(chunks) else local.narrow(placement.dim, 0, 0)
    return DTensor.from_local(local.contiguous().to(param.device), param.device_mesh, param.placements,
                              shape=param.shape, stride=param.stride(), run_check=False)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / TRAINER_FILE).exists()

