"""Synthetic inputs of the right shape for any supported model, for speed measurements.

Accuracy never comes from these; they only need the shapes (and valid token ids) of real inputs. The
model's family makes them (images, token ids inside the vocabulary, decoder inputs, audio features).
"""

from __future__ import annotations

from torch import nn

from .. import families
from ..guard import check_request


def example_inputs(model: nn.Module, batch: int = 8, seq_len: int = 128, seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) to call `model` with, refusing a batch x seq that cannot fit before allocating it."""
    check_request(model, batch, seq_len)
    return families.example_inputs(model, batch, seq_len, seed)
