"""Whisper: a BART-like encoder-decoder whose encoder reads log-mel `input_features` through two
convolutions (stride 2: 2 x `max_source_positions` frames in, `max_source_positions` tokens out)."""

from __future__ import annotations

from torch import nn

from .bart import bart_attention, layer_ffn
from .hf import SpeechFamily
from .sites import FFNSite, HeadSite


class Whisper(SpeechFamily):
    name, generative = "whisper", True
    layout = "Whisper (whisper: conv front end, .self_attn.out_proj, .fc1)"
    model_types = frozenset({"whisper"})
    stack_paths = {"encoder": ("encoder.layers",), "decoder": ("decoder.layers",)}
    ff_fields = ("encoder_ffn_dim",)

    def frames(self, config) -> int:
        return 2 * int(config.max_source_positions)

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        return bart_attention(name, m)

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return layer_ffn(name, m)

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None  # audio frames merge in the encoder (none protected, frame order kept)


FAMILY = Whisper()
