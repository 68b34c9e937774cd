"""BART-style encoder-decoders (BART, Marian, mBART, Pegasus): `{q,k,v}_proj` + `out_proj` (`num_heads`),
FFN `fc1` / `fc2` on each layer, learned or sinusoidal positions, LM head tied to the embeddings."""

from __future__ import annotations

from torch import nn

from .hf import HFFamily, ffn, proj_site
from .sites import FFNSite, HeadSite, has_modules


def bart_attention(name: str, m: nn.Module) -> HeadSite | None:
    if not has_modules(m, "q_proj", "k_proj", "v_proj", "out_proj") or not hasattr(m, "num_heads"):
        return None
    return proj_site(name, m, ("q_proj", "k_proj", "v_proj", "out_proj"), "num_heads", m.head_dim)


def layer_ffn(name: str, m: nn.Module) -> FFNSite | None:
    return ffn(name, m, "fc1", "fc2")


class Bart(HFFamily):
    name, kind, generative = "bart", "seq2seq", True
    layout = "BART-style encoder-decoders (bart, marian, mbart, pegasus: .self_attn.out_proj, .fc1)"
    model_types = frozenset({"bart", "marian", "mbart", "pegasus"})
    stack_paths = {"encoder": ("encoder.layers",), "decoder": ("decoder.layers",)}
    ff_fields = ("encoder_ffn_dim",)

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        return bart_attention(name, m)

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return layer_ffn(name, m)

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # the first source token (<s>); the last real one (</s>) is protected by the patch, per row

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None  # the encoder merges; the decoder attends to the merged memory with the token sizes


FAMILY = Bart()
