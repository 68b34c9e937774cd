"""Input checks on tensors, shared by every family's `check_inputs`: shapes, dtypes, ids inside the
vocabulary, finite values. Each names the field and what would be valid."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SlimformerError


def _check_finite(x: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise SlimformerError(f"{what} contain {bad} NaN/Inf value(s) out of {x.numel()}; clean the input")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_images(images: Tensor, channels: int, size: int, field: str = "images") -> None:
    """images `[batch, channels, H, W]`, float, finite, of the size and channel count the model was built for."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise SlimformerError(f"{field} must be a tensor [batch, {channels}, {size}, {size}], got {_shape(images)}")
    if images.shape[0] == 0:
        raise SlimformerError(f"empty batch: give at least one image in {field}")
    if not images.is_floating_point():
        raise SlimformerError(f"{field} must be floating point (normalized), got {images.dtype}")
    if tuple(images.shape[1:]) != (channels, size, size):
        raise SlimformerError(f"{field} are {tuple(images.shape[1:])} (channels, H, W); the model takes "
                              f"({channels}, {size}, {size}): resize them first")
    _check_finite(images, field)


def check_features(features: Tensor, bins: int, frames: int, field: str = "input_features") -> None:
    """Audio features `[batch, bins, frames]` (log-mel), float and finite."""
    if not isinstance(features, Tensor) or features.dim() != 3:
        raise SlimformerError(f"{field} must be a tensor [batch, {bins}, {frames}], got {_shape(features)}")
    if features.shape[0] == 0:
        raise SlimformerError(f"empty batch: {field} has shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise SlimformerError(f"{field} must be floating point log-mel features, got {features.dtype}")
    if tuple(features.shape[1:]) != (bins, frames):
        raise SlimformerError(f"{field} are {tuple(features.shape[1:])} (bins, frames); the model takes "
                              f"({bins}, {frames}): pad or trim the audio to the model's window")
    _check_finite(features, field)


def check_tokens(tokens: Tensor, vocab: int | None, max_len: int, mask: Tensor | None = None,
                 field: str = "tokens") -> None:
    """tokens `[batch, time]` int ids in [0, vocab), time <= max_len; mask `[batch, time]`."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        raise SlimformerError(f"{field} must be a tensor [batch, time], got {_shape(tokens)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise SlimformerError(f"empty batch: {field} have shape {tuple(tokens.shape)}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise SlimformerError(f"{field} must be integer ids, got {tokens.dtype}")
    if tokens.shape[1] > max_len:
        raise SlimformerError(f"sequence length {tokens.shape[1]} exceeds the model's {max_len} positions "
                              f"({field} ids); truncate or split the input")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (vocab is not None and high >= vocab):
        where = "" if field == "tokens" else f" in {field}"
        raise SlimformerError(f"token ids span [{low}, {high}]{where} but the model's vocabulary is [0, {vocab}); "
                              "was the text encoded with another model's tokenizer?")
    if mask is not None and _shape(mask) != tuple(tokens.shape):
        raise SlimformerError(f"mask has shape {_shape(mask)}, {field} {tuple(tokens.shape)}: they must match")
