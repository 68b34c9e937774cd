"""One small supervised training loop shared by every task: AdamW, warm-up + cosine schedule, gradient
clipping, and a rich progress bar showing loss, accuracy and items/s."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0


def progress_bar(transient: bool = False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=transient)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[tuple[tuple, Tensor]]],
    steps_per_epoch: int,
    loss_fn: Callable[[Tensor, Tensor], tuple[Tensor, int, int]],
    config: TrainConfig,
    description: str = "train",
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint: Callable[[int, dict], None] | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Train `model` in place.

    epoch_batches(epoch) yields `(inputs, targets)`; `model(*inputs)` gives outputs and
    `loss_fn(outputs, targets)` returns (loss, n_correct, n_items) so the bar can show accuracy.
    Returns per-epoch history `[{"epoch", "loss", "accuracy", "items_per_s"}]`.
    checkpoint(epoch, state) runs after each epoch with `{"optimizer", "scheduler", "history"}`; passing
    that state back as `resume` (with the model's weights restored by the caller) continues with the
    next epoch, so an interrupted run ends where an uninterrupted one would.
    """
    torch.manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = cosine_schedule(optimizer, config.epochs * steps_per_epoch, config.warmup_frac)
    history = []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = list(resume["history"])
    model.train()
    with progress_bar() as progress:
        bar = progress.add_task(description, total=config.epochs * steps_per_epoch, info="",
                                completed=len(history) * steps_per_epoch)
        for epoch in range(len(history), config.epochs):
            total_loss, correct, items, start = 0.0, 0, 0, time.perf_counter()
            for inputs, targets in epoch_batches(epoch):
                loss, n_correct, n_items = loss_fn(model(*inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * n_items
                correct += n_correct
                items += n_items
                rate = items / (time.perf_counter() - start)
                progress.update(bar, advance=1, info=f"epoch {epoch + 1} loss {total_loss / items:.3f} "
                                                     f"acc {correct / items:.3f} {rate:.0f} it/s")
            record = {"epoch": epoch + 1, "loss": total_loss / max(items, 1),
                      "accuracy": correct / max(items, 1), "items_per_s": items / (time.perf_counter() - start)}
            history.append(record)
            if on_epoch_end:
                on_epoch_end(epoch, record)
            if checkpoint:
                checkpoint(epoch, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "history": history})
    model.eval()
    return history


def classification_loss(label_smoothing: float = 0.0):
    def loss_fn(logits: Tensor, targets: Tensor) -> tuple[Tensor, int, int]:
        loss = nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        return loss, int((logits.argmax(-1) == targets).sum()), len(targets)

    return loss_fn
