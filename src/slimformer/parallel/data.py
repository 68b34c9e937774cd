"""Data-parallel training: DDP (every rank holds the whole model, gradients are all-reduced) or FSDP2
(`fully_shard`: parameters, gradients and optimizer state sharded, gathered layer by layer).

Each rank takes its own slice of every global batch, so one step on N ranks with b items each equals
one single-process step on the N·b items (the losses are means, and both wrappers average gradients).
Rank 0 writes checkpoints as model dirs (`io.save_model`, atomic: a crash mid-save leaves the previous
checkpoint whole) with the optimizer and schedule state beside the weights, so `--resume DIR` continues
where the run stopped. Tasks: the real digits images, and a synthetic seq2seq task (reverse / copy a
random token sequence), which trains the encoder-decoder without needing the translation corpus.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
from ..models import Seq2Seq, ViT
from ..tasks.training import cosine_schedule
from .common import check_positive, full, max_param_diff

log = logging.getLogger(__name__)

TASKS = ("digits", "reverse", "copy")
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


@dataclass
class LocalBatch:
    """This rank's part of global batch `step`: model inputs and targets."""

    inputs: tuple
    target: Tensor


class DigitsData:
    """The real digits training split; a global batch is a slice of a per-epoch permutation."""

    def __init__(self, seed: int):
        from ..tasks.digits import load_data

        self.data = load_data()
        self.seed = seed

    def steps_per_epoch(self, global_batch: int) -> int:
        return len(self.data.y_train) // global_batch  # drop the ragged last batch: equal shards

    def shard(self, epoch: int, step: int, global_batch: int, rank: int, world: int, augment: bool) -> LocalBatch:
        from ..tasks.images import random_affine

        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(len(self.data.y_train), generator=g)
        local = global_batch // world
        idx = order[step * global_batch + rank * local: step * global_batch + (rank + 1) * local]
        x = self.data.x_train[idx]
        if augment:
            x = random_affine(x, torch.Generator().manual_seed(hash((self.seed, epoch, step, rank)) % 2**31))
        return LocalBatch((x,), self.data.y_train[idx])


class SequenceData:
    """Synthetic seq2seq: the target is the source reversed (or copied), between BOS and EOS."""

    def __init__(self, seed: int, vocab: int, length: int, reverse: bool, bos: int = 1, eos: int = 2):
        self.seed, self.vocab, self.length, self.reverse, self.bos, self.eos = seed, vocab, length, reverse, bos, eos

    def steps_per_epoch(self, global_batch: int) -> int:
        return 50

    def shard(self, epoch: int, step: int, global_batch: int, rank: int, world: int, augment: bool) -> LocalBatch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + step)
        src = torch.randint(3, self.vocab, (global_batch, self.length), generator=g)
        local = global_batch // world
        src = src[rank * local:(rank + 1) * local]
        out = src.flip(1) if self.reverse else src
        bos = torch.full((local, 1), self.bos)
        eos = torch.full((local, 1), self.eos)
        return LocalBatch((src, torch.cat([bos, out], 1)), torch.cat([out, eos], 1))


def make_data(task: str, model: nn.Module, seed: int, seq_len: int):
    if task == "digits":
        return DigitsData(seed)
    return SequenceData(seed, model.config.vocab_size, seq_len, reverse=task == "reverse")


def task_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, int, int]:
    """Mean cross-entropy over items (classes `[b, C]`) or tokens (`[b, t, V]`); also #correct, #items."""
    flat_logits, flat_target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_target)
    return loss, int((flat_logits.argmax(-1) == flat_target).sum()), flat_target.numel()


def validate_ddp(model: nn.Module, task: str, nproc: int, batch: int, fsdp: bool) -> None:
    """Refuse, before any process starts, a model/task/size that cannot train, with the numbers."""
    check_positive("--nproc", nproc)
    check_positive("--batch (per rank)", batch)
    if task not in TASKS:
        raise SlimformerError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "digits":
        c = getattr(model, "config", None)
        if not isinstance(model, ViT) or (c.image_size, c.in_channels, c.n_classes) != (16, 1, 10):
            raise SlimformerError("the digits task trains a ViT for 16x16x1 images and 10 classes (e.g. vit-tiny or "
                                  f"a digits model dir); got {type(model).__name__}")
        n = 1437  # digits training split
        if batch * nproc > n:
            raise SlimformerError(f"global batch {batch} x {nproc} ranks = {batch * nproc} exceeds the "
                                  f"{n} digits training images")
    elif not isinstance(model, Seq2Seq):
        raise SlimformerError(f"task {task!r} trains an encoder-decoder (e.g. seq2seq-small); got "
                              f"{type(model).__name__}")
    if fsdp and not any(isinstance(m, nn.ModuleList) for m in model.modules()):
        raise SlimformerError("FSDP shards per Transformer block; this model has no block list")


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap for DDP: all-reduce (average) gradients in buckets while the backward pass still runs."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def apply_fsdp(model: nn.Module, device_type: str, world: int) -> nn.Module:
    """FSDP2: shard each Transformer block, then the rest (embeddings, head) as the root unit.
    Sharding per block lets a block's all-gather overlap the previous block's compute."""
    mesh = init_device_mesh(device_type, (world,))
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW, no decay on biases, norms and embeddings (as `tasks.training.fit`)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def wrap(model: nn.Module, spec: dict[str, Any], worker) -> nn.Module:
    if worker.world == 1:
        return model  # one process: the plain single-process trainer, nothing to synchronize
    if spec.get("fsdp"):
        return apply_fsdp(model, worker.device.type, worker.world)
    return apply_ddp(model, worker.device)


def check_step(model: nn.Module, data, spec: dict[str, Any], worker, fsdp: bool) -> dict[str, float]:
    """One SGD step of the wrapped model on this rank's shard vs one single-process step on the whole
    global batch: the max |difference| of the updated weights."""
    reference = copy.deepcopy(model)
    parallel = wrap(model, {**spec, "fsdp": fsdp}, worker)
    global_batch = spec["batch"] * worker.world
    whole = data.shard(0, 0, global_batch, 0, 1, augment=False)
    mine = data.shard(0, 0, global_batch, worker.rank, worker.world, augment=False)
    for m, shard in ((parallel, mine), (reference, whole)):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)  # update ∝ gradient: the comparison sees gradient errors
        inputs = tuple(x.to(worker.device) for x in shard.inputs)
        task_loss(m(*inputs), shard.target.to(worker.device))[0].backward()
        opt.step()
    unwrapped = parallel.module if isinstance(parallel, DistributedDataParallel) else parallel
    diff, where = max_param_diff(unwrapped, reference)
    return {"max_abs_diff_weights_after_step": diff, "worst_param": where}


def run_job(spec: dict[str, Any], worker) -> dict[str, Any]:
    """Train on the task; optionally first check one step against the single-process step."""
    torch.manual_seed(spec.get("seed", 0))
    resume = spec.get("resume")
    model = io.load(resume or spec["model"]).to(worker.device)
    data = make_data(spec["task"], model, spec.get("seed", 0), spec.get("seq_len", 12))
    result: dict[str, Any] = {"job": "ddp", "mode": "fsdp" if spec.get("fsdp") else "ddp", "world": worker.world,
                              "task": spec["task"], "batch_per_rank": spec["batch"],
                              "global_batch": spec["batch"] * worker.world}
    if spec.get("check"):
        modes = spec.get("check_modes") or ["fsdp" if spec.get("fsdp") else "ddp"]
        result["check"] = {mode: check_step(copy.deepcopy(model), data, spec, worker, mode == "fsdp")
                           for mode in modes}
        worker.progress()
    if spec.get("steps", 0) > 0:
        result.update(train(model, data, spec, worker))
    return result


def train(model: nn.Module, data, spec: dict[str, Any], worker) -> dict[str, Any]:
    rank, world = worker.rank, worker.world
    global_batch = spec["batch"] * world
    total = spec["steps"]
    template = copy.deepcopy(model) if rank == 0 else None  # plain module that checkpoints are written from
    parallel = wrap(model, spec, worker)
    optimizer = make_optimizer(parallel, spec.get("lr", 3e-3))
    scheduler = cosine_schedule(optimizer, total, spec.get("warmup_frac", 0.05))
    start = 0
    if spec.get("resume"):
        start = load_trainer_state(Path(spec["resume"]), parallel, optimizer, scheduler)
    per_epoch = data.steps_per_epoch(global_batch)
    parallel.train()
    times, losses, correct, items = [], [], 0, 0
    for step in range(start, total):
        worker.progress(step)
        t0 = time.perf_counter()
        shard = data.shard(step // per_epoch, step % per_epoch, global_batch, rank, world,
                           augment=spec.get("augment", True))
        inputs, target = tuple(x.to(worker.device) for x in shard.inputs), shard.target.to(worker.device)
        loss, n_correct, n_items = task_loss(parallel(*inputs), target)
        worker.progress(step)  # after the forward, before the backward's collectives: a rank stuck in its
        optimizer.zero_grad(set_to_none=True)  # own compute shows up here as the one that stopped first
        loss.backward()
        nn.utils.clip_grad_norm_(parallel.parameters(), spec.get("grad_clip", 1.0))
        optimizer.step()
        scheduler.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        correct, items = correct + n_correct, items + n_items
        every = spec.get("checkpoint_every", 0)
        if spec.get("out") and ((every and (step + 1) % every == 0) or step + 1 == total):
            save_checkpoint(Path(spec["out"]), parallel, optimizer, scheduler, template, step + 1, spec, worker)
    timed_steps = times[spec.get("warmup_steps", 2):] or times
    local_rate = spec["batch"] * len(timed_steps) / max(sum(timed_steps), 1e-9)
    rates: list = [local_rate] * world
    if world > 1:
        dist.all_gather_object(rates, local_rate)
    return {"start_step": start, "end_step": total, "final_loss": losses[-1] if losses else None,
            "train_accuracy": correct / max(items, 1),
            "items_per_s": sum(rates), "timed_steps": len(timed_steps),
            "step_ms_p50": 1000 * sorted(timed_steps)[len(timed_steps) // 2] if timed_steps else None,
            "checkpoint": spec.get("out")}


def save_checkpoint(out: Path, parallel: nn.Module, optimizer, scheduler, template: nn.Module | None, step: int,
                    spec: dict[str, Any], worker) -> None:
    """Gather the full model and optimizer state (a collective: every rank calls this) and let rank 0
    write one model dir atomically, with the optimizer state and step beside the weights."""
    model_sd = get_model_state_dict(parallel, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Optimizer state gathered by hand, parameter by parameter in model order (the same on every rank, as
    # a collective needs); in torch 2.13 `get_state_dict` mismatched collectives after a resume under FSDP.
    unwrapped = parallel.module if isinstance(parallel, DistributedDataParallel) else parallel
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
    unwrapped = parallel.module if isinstance(parallel, DistributedDataParallel) else parallel
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

