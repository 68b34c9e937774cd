"""Vision Transformer: cut the image into patches, embed each as a token, prepend a class token,
add learned positions, run encoder blocks, classify from the class token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import EncoderBlock


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    n_classes: int = 1000
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        # A strided convolution is exactly "split into patches, flatten, apply one Linear".
        self.patch_embed = nn.Conv2d(config.in_channels, config.d_model, config.patch_size,
                                     stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.pos_emb = nn.Parameter(torch.randn(1, config.n_patches + 1, config.d_model) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model, eps=1e-6)
        self.head = nn.Linear(config.d_model, config.n_classes)

    def embed(self, images: Tensor) -> Tensor:
        """images `[batch, channels, H, W]` -> tokens `[batch, 1 + patches, d_model]` (class token first)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.drop(torch.cat([cls, x], dim=1) + self.pos_emb)

    def forward(self, images: Tensor) -> Tensor:
        """images `[batch, channels, H, W]` -> class logits `[batch, n_classes]`."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
