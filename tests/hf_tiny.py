"""Helpers for the compression tests: tiny randomly initialized Hugging Face models (BERT, ViT), their
inputs (the one-thread fixture lives in conftest.py)."""

from __future__ import annotations

import torch


def tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="sdpa")
    return BertModel(cfg).eval()


def tiny_hf_vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, attn_implementation="sdpa")
    return ViTModel(cfg).eval()


def bert_inputs(batch: int = 3, seq: int = 12, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0  # one padded row, so masking is exercised too
    return ids, mask


def vit_inputs(batch: int = 3, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, 8, 8, generator=g),)


def model_and_inputs(name: str, pad_row: bool = False) -> tuple:
    """(model, args, kwargs) for a tiny HF model ("tiny-bert", "tiny-hf-vit") or a built-in one, with
    fresh inputs (seed 7). pad_row: on encoder-small, pad the first row's second half (masking exercised)."""
    if name == "tiny-bert":
        ids, mask = bert_inputs(seed=7)
        return tiny_bert(), (), {"input_ids": ids, "attention_mask": mask}
    if name == "tiny-hf-vit":
        return tiny_hf_vit(), vit_inputs(seed=7), {}
    from slimformer import io
    from slimformer.bench.inputs import example_inputs

    model = io.load(name)
    args, kwargs = example_inputs(model, batch=3, seq_len=12, seed=7)
    if pad_row and name == "encoder-small":
        args[1][0, 6:] = False
    return model, args, kwargs
