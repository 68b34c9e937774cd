"""Synthetic inputs of the right shape for any supported model, for speed measurements.

Accuracy never comes from these; they only need the shapes (and valid token ids) of real inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SlimformerError
from ..models import Decoder, Encoder, Seq2Seq, ViT
from ..models.hf import is_hf_model


def example_inputs(model: nn.Module, batch: int = 8, seq_len: int = 128, seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) to call `model` with: images for a ViT, token ids (+ mask) for text models."""
    from ..guard import check_request

    check_request(model, batch, seq_len)  # refuse a batch x seq that cannot fit, before allocating it
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, ViT):
        c = model.config
        return (torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g),), {}
    if isinstance(model, (Encoder, Decoder, Seq2Seq)):
        c = model.config
        if seq_len > c.max_len:
            raise SlimformerError(f"sequence length {seq_len} exceeds the model's {c.max_len} positions")
        tokens = torch.randint(3, c.vocab_size, (batch, seq_len), generator=g)
        if isinstance(model, Encoder):
            return (tokens, torch.ones(batch, seq_len, dtype=torch.bool)), {}
        if isinstance(model, Decoder):
            return (tokens,), {}
        return (tokens, torch.randint(3, c.vocab_size, (batch, seq_len), generator=g)), {}
    if is_hf_model(model):
        cfg = model.config
        if getattr(cfg, "model_type", "") == "vit":
            size = cfg.image_size
            return (), {"pixel_values": torch.randn(batch, cfg.num_channels, size, size, generator=g)}
        if seq_len > cfg.max_position_embeddings:
            raise SlimformerError(f"sequence length {seq_len} exceeds the model's "
                                  f"{cfg.max_position_embeddings} positions")
        ids = torch.randint(1000, cfg.vocab_size, (batch, seq_len), generator=g)
        return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    raise SlimformerError(f"no example inputs for {type(model).__name__}")

