"""Image classification on the real handwritten digits bundled with scikit-learn (1,797 8x8 images).

Images are upsampled to 16x16 so a patch-2 ViT sees 64 patches (+1 class token): enough tokens for
token merging to matter. The split is fixed (stratified, seed 0): 1,437 train / 360 test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import io
from ..models import BUILTINS, build_model
from .images import random_affine, resize
from .training import TrainConfig, classification_loss, fit

IMAGE_SIZE = 16
MODEL = "vit-tiny"


@dataclass
class DigitsData:
    x_train: Tensor  # [n, 1, 16, 16], normalized
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


_CACHE: DigitsData | None = None


def load_data() -> DigitsData:
    """The fixed train/test split, upsampled and normalized with the training set's statistics."""
    global _CACHE
    if _CACHE is None:
        with torch.inference_mode(False):  # cached tensors must stay usable for training later
            _CACHE = _build_split()
    return _CACHE


def _build_split() -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=digits.target)
    x = resize(x, IMAGE_SIZE)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    return DigitsData(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def train_batches(data: DigitsData, batch: int, seed: int):
    def epoch_batches(epoch: int) -> Iterator[tuple[tuple, Tensor]]:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            yield (random_affine(data.x_train[idx], g),), data.y_train[idx]

    return epoch_batches


def train(out: str | Path | None = None, epochs: int = 40, batch: int = 64, lr: float = 3e-3,
          seed: int = 0) -> nn.Module:
    """Train the digits ViT (`vit-tiny`) from scratch; save it as a model dir at `out` if given."""
    data = load_data()
    torch.manual_seed(seed)
    architecture, config, _ = BUILTINS[MODEL]
    model = build_model(architecture, config)
    steps = (len(data.y_train) + batch - 1) // batch
    fit(model, train_batches(data, batch, seed), steps, classification_loss(0.1),
        TrainConfig(epochs=epochs, lr=lr, seed=seed), description="train digits ViT")
    if out is not None:
        io.save_model(model, out, extra={"task": "digits"})
    return model


@torch.inference_mode()
def evaluate(model: nn.Module, batch: int = 256) -> dict[str, float]:
    """Top-1 accuracy on the 360 held-out test images."""
    data = load_data()
    model.eval()
    correct = 0
    for i in range(0, len(data.y_test), batch):
        logits = model(data.x_test[i:i + batch])
        correct += int((logits.argmax(-1) == data.y_test[i:i + batch]).sum())
    return {"accuracy": correct / len(data.y_test)}


def calibration(n: int = 256, batch: int = 64) -> Iterator[tuple]:
    """Training images (never test ones) as model inputs, for steps that need data."""
    data = load_data()
    for i in range(0, min(n, len(data.y_train)), batch):
        yield (data.x_train[i:i + batch],)


def training_data(batch: int = 64, seed: int = 0):
    """(epoch_batches, steps_per_epoch) with augmentation: what distillation fine-tunes on."""
    data = load_data()
    return train_batches(data, batch, seed), (len(data.y_train) + batch - 1) // batch
