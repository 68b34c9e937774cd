"""Knowledge distillation: a short fine-tune of the compressed student against the uncompressed teacher.

Pruning, low-rank and token compression each remove a little of what the network computed; the teacher
(the model before the recipe ran, `ctx.teacher`) still knows it, and its soft outputs carry more signal
per example than labels do (Hinton et al. 2015). Two data regimes:

- the task has labelled training data (`training_data()`, e.g. digits): loss =
  `alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(labels)`;
- unlabelled inputs (the embedding task's training sentences, whose batches carry no labels, or
  else the task's calibration inputs): the student's output matches the teacher's: `1 - cosine` of
  the mean-pooled outputs (the sentence embedding) plus the MSE of the per-token outputs, relative
  to the teacher's mean square.

`hidden > 0` adds the relative MSE between every Transformer layer's output in student and teacher,
which needs both to keep the same layers and tokens (prune / low-rank do; token merging does not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SlimformerError
from ..families import all_blocks
from ..tasks import get_task
from ..tasks.training import TrainConfig, fit
from .registry import Step, StepContext, register

log = logging.getLogger(__name__)


@dataclass
class DistillOptions:
    epochs: int = 3
    lr: float = 5e-4
    temperature: float = 2.0  # softens both distributions so the student also learns the wrong-class ranking
    alpha: float = 0.7        # weight of the teacher term; 1 - alpha goes to the labels (when there are any)
    hidden: float = 0.0       # weight of per-layer hidden-state matching (0 = off)

    def __post_init__(self) -> None:
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
                  ("temperature", self.temperature > 0, "> 0"), ("alpha", 0 <= self.alpha <= 1, "in [0, 1]"),
                  ("hidden", self.hidden >= 0, ">= 0")]
        for name, ok, rule in checks:
            if not ok:
                raise SlimformerError(f"option {name!r} of step 'distill' must be {rule}, got {getattr(self, name)}")


# ---- losses (pure functions on tensors) ------------------------------------------------------------

def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Soft-target KL divergence, `[batch, classes]` logits -> scalar, scaled by T^2 so its gradient
    size does not depend on T."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def relative_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE divided by the teacher's mean square: scale-free, so layers of any magnitude weigh alike."""
    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-12)


def mean_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """`[batch, tokens, d]` (+ mask `[batch, tokens]`, 1 = real) -> `[batch, d]` mean over real tokens."""
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def embedding_loss(student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
    """`1 - cosine` of mean-pooled embeddings + relative MSE of the outputs (any shape `[batch, ...]`)."""
    if student.ndim == 3:
        s, t = mean_pool(student, mask), mean_pool(teacher, mask)
    else:
        s, t = student.flatten(1), teacher.flatten(1)
    return (1 - F.cosine_similarity(s, t, dim=-1)).mean() + relative_mse(student, teacher)


# ---- adapters ----------------------------------------------------------------------------------------

def main_output(out) -> Tensor:
    """The tensor a model's output stands for: itself, `logits` / `last_hidden_state`, or the first item."""
    if isinstance(out, Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise SlimformerError(f"step 'distill': cannot find the output tensor in a {type(out).__name__}")


def _mask_of(inputs: tuple) -> Tensor | None:
    """The padding mask of text inputs `(ids, mask, ...)` or `({"attention_mask": ...},)`, if there is one."""
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        return inputs[0].get("attention_mask")
    if len(inputs) > 1 and isinstance(inputs[1], Tensor) and inputs[1].shape == inputs[0].shape:
        return inputs[1]
    return None


class LayerTap:
    """Records the output of every Transformer layer during a forward pass."""

    def __init__(self, model: nn.Module):
        self.outputs: list[Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in all_blocks(model)]
        if not self.handles:
            raise SlimformerError("step 'distill': option 'hidden' needs a model with Transformer layers")

    def _hook(self, _module, _inputs, output) -> None:
        self.outputs.append(main_output(output))

    def take(self) -> list[Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def hidden_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    if len(student) != len(teacher) or any(s.shape != t.shape for s, t in zip(student, teacher, strict=True)):
        raise SlimformerError("step 'distill': option 'hidden' needs student and teacher to keep the same "
                              f"layers and tokens (student {[tuple(s.shape) for s in student]}, teacher "
                              f"{[tuple(t.shape) for t in teacher]}); use hidden=0 after token merging")
    return sum(relative_mse(s, t) for s, t in zip(student, teacher, strict=True)) / len(student)


# ---- the step -----------------------------------------------------------------------------------------

def _data(ctx: StepContext) -> tuple[Callable[[int], Iterator[tuple[tuple, Tensor | None]]], int]:
    """(epoch_batches, steps_per_epoch): the task's labelled training data, else its calibration inputs."""
    module = get_task(ctx.task) if ctx.task else None
    if module is not None and hasattr(module, "training_data"):
        return module.training_data()
    if ctx.calib is None:
        raise SlimformerError("step 'distill' needs data: give the task (--task digits or embedding, or a model "
                              "dir that records its task)")
    batches = [item if isinstance(item, tuple) else (item,) for item in ctx.calib() if isinstance(item, (tuple, dict))]
    if not batches:
        raise SlimformerError(f"step 'distill': task {ctx.task!r} gave no calibration inputs (tuples or dicts of "
                              "tensors)")
    return (lambda _epoch: ((b, None) for b in batches)), len(batches)


class KeywordInputs(nn.Module):
    """Lets the training loop's `model(*inputs)` drive a model that takes keyword inputs (Hugging Face):
    a batch `(kwargs,)` becomes `model(**kwargs)`; positional batches pass through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            return self.model(**inputs[0])
        return self.model(*inputs)


def distill(model: nn.Module, opts: DistillOptions, ctx: StepContext) -> nn.Module:
    teacher = ctx.teacher
    if teacher is None:
        raise SlimformerError("step 'distill' needs the uncompressed model as teacher; run it inside a recipe "
                              "(api.compress_model / slimformer compress)")
    teacher.eval().requires_grad_(False)
    epoch_batches, steps = _data(ctx)
    taps = (LayerTap(model), LayerTap(teacher)) if opts.hidden > 0 else None

    def with_teacher(epoch: int):
        for inputs, labels in epoch_batches(epoch):
            with torch.no_grad():
                t_out = main_output(KeywordInputs(teacher)(*inputs))
            t_hidden = taps[1].take() if taps else []
            yield inputs, (labels, t_out, t_hidden, _mask_of(inputs))

    def loss_fn(out, target) -> tuple[Tensor, int, int]:
        labels, t_out, t_hidden, mask = target
        s_out = main_output(out)
        if labels is not None:
            loss = opts.alpha * kd_loss(s_out, t_out, opts.temperature)
            if opts.alpha < 1:
                loss = loss + (1 - opts.alpha) * F.cross_entropy(s_out, labels)
            correct = int((s_out.argmax(-1) == labels).sum())
        else:
            loss = embedding_loss(s_out, t_out, mask)
            correct = 0
        if taps:
            loss = loss + opts.hidden * hidden_loss(taps[0].take(), t_hidden)
        return loss, correct, s_out.shape[0]

    try:
        history = fit(KeywordInputs(model), with_teacher, steps, loss_fn,
                      TrainConfig(epochs=opts.epochs, lr=opts.lr), description="distill")
    finally:
        if taps:
            taps[0].close()
            taps[1].close()
    ctx.state.clear()  # distillation changes weights only: nothing to rebuild on load
    log.info("distill: final epoch %s", history[-1] if history else None)
    return model.eval()


register(Step("distill", DistillOptions, distill,
              "fine-tune against the uncompressed teacher (soft logits / embeddings, optional hidden states)",
              needs_float_weights=True, role="recovery", order=70))
