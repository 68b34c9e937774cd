"""The few image operations slimformer needs (no torchvision): resize, a random affine augmentation
(small rotation, scale and shift) done with `affine_grid` + `grid_sample`, and a whole-pixel random
shift (pad + crop, no interpolation blur)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def resize(images: Tensor, size: int) -> Tensor:
    """images `[batch, channels, H, W]` -> `[batch, channels, size, size]` (bilinear)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def random_affine(images: Tensor, generator: torch.Generator, degrees: float = 10.0,
                  scale: tuple[float, float] = (0.9, 1.1), shift: float = 0.1) -> Tensor:
    """Apply one random rotation/scale/shift per image. images `[batch, channels, H, W]`; shift is a
    fraction of the image size. Background fills with the value of the image's top-left pixel."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(degrees)
    s = torch.empty(b).uniform_(*scale, generator=generator)
    t = (torch.rand(b, 2, generator=generator) * 2 - 1) * shift * 2  # grid coords span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    background = images[:, :, :1, :1]
    out = F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros")
    return out + background


def random_shift(images: Tensor, generator: torch.Generator, pixels: int, fill: float) -> Tensor:
    """Move each image by its own random whole-pixel offset in [-pixels, pixels] on both axes; the
    uncovered border takes `fill` (the background value). images `[batch, channels, H, W]`."""
    if pixels == 0:
        return images
    b, ch, h, w = images.shape
    padded = F.pad(images, (pixels, pixels, pixels, pixels), value=fill)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, ch, h, padded.shape[-1])
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, ch, h, w)
    return padded.gather(2, rows).gather(3, cols)
