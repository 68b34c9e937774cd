"""Readable reference Transformers (plain PyTorch, configs as dataclasses) and their registry.

`ARCHITECTURES` maps the name stored in a model dir to (class, config class); `BUILTINS` maps the
names users type (`vit-b16`, ...) to an architecture and its configuration.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from torch import nn

from ..errors import SlimformerError
from .decoder import Decoder, DecoderConfig
from .encoder import Encoder, EncoderConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .vit import ViT, ViTConfig

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "vit": (ViT, ViTConfig),
    "encoder": (Encoder, EncoderConfig),
    "decoder": (Decoder, DecoderConfig),
    "seq2seq": (Seq2Seq, Seq2SeqConfig),
}

BUILTINS: dict[str, tuple[str, Any, str]] = {
    # name: (architecture, config, one-line description)
    "vit-tiny": ("vit", ViTConfig(image_size=16, patch_size=2, in_channels=1, n_classes=10, d_model=96,
                                  n_layers=4, n_heads=4, d_ff=192),
                 "ViT for 16x16 grayscale, 65 tokens, 4 layers, d=96: the digits task's model"),
    "vit-fashion": ("vit", ViTConfig(image_size=28, patch_size=4, in_channels=1, n_classes=10, d_model=64,
                                     n_layers=4, n_heads=4, d_ff=128),
                    "ViT for 28x28 grayscale, patch 4, 50 tokens, 4 layers, d=64: the fashion task's model"),
    "vit-b16": ("vit", ViTConfig(), "ViT-B/16 shape: 224x224x3, 197 tokens, 12 layers, d=768 (random init)"),
    "encoder-small": ("encoder", EncoderConfig(vocab_size=8000, max_len=128, d_model=256, n_layers=4,
                                               n_heads=4, d_ff=1024),
                      "BERT-style text encoder, 4 layers, d=256 (random init)"),
    "decoder-small": ("decoder", DecoderConfig(vocab_size=8000, max_len=128, d_model=256, n_layers=4,
                                               n_heads=4, d_ff=1024),
                      "GPT-style causal decoder with KV cache, 4 layers, d=256 (random init)"),
    "seq2seq-small": ("seq2seq", Seq2SeqConfig(vocab_size=8000, max_len=128, d_model=256, n_enc_layers=3,
                                               n_dec_layers=3, n_heads=4, d_ff=1024),
                      "encoder-decoder translator, 3+3 layers, d=256 (random init)"),
}


def config_from_dict(architecture: str, values: dict[str, Any]):
    """Rebuild a config dataclass, naming any key the architecture does not know."""
    if architecture not in ARCHITECTURES:
        raise SlimformerError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    cls = ARCHITECTURES[architecture][1]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SlimformerError(f"config key(s) {', '.join(unknown)} not valid for architecture "
                              f"{architecture!r}; valid: {', '.join(sorted(known))}")
    return cls(**values)


def build_model(architecture: str, config: Any) -> nn.Module:
    """A fresh, randomly initialized model of `architecture` with `config` (dataclass or dict)."""
    if isinstance(config, dict):
        config = config_from_dict(architecture, config)
    elif architecture not in ARCHITECTURES:
        raise SlimformerError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[architecture][0](config)


def build_builtin(name: str) -> nn.Module:
    """A built-in reference model by the name users type, e.g. `vit-b16` (random init)."""
    if name not in BUILTINS:
        raise SlimformerError(f"unknown built-in model {name!r}; built-ins: {', '.join(BUILTINS)}, minilm")
    architecture, config, _ = BUILTINS[name]
    return build_model(architecture, config)


def architecture_of(model: nn.Module) -> str:
    """The registry name of a reference model's class (the inverse of `ARCHITECTURES`)."""
    for name, (cls, _) in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise SlimformerError(f"{type(model).__name__} is not a slimformer reference architecture")


def config_dict(model: nn.Module) -> dict[str, Any]:
    return asdict(model.config)


__all__ = ["ARCHITECTURES", "BUILTINS", "Decoder", "DecoderConfig", "Encoder", "EncoderConfig", "Seq2Seq",
           "Seq2SeqConfig", "ViT", "ViTConfig", "architecture_of", "build_builtin", "build_model",
           "config_dict", "config_from_dict"]
