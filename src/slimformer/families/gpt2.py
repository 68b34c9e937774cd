"""GPT-2: fused `c_attn` (q | k | v, a transposed `Conv1D`) + `c_proj`, MLP `c_fc` / `c_proj` (Conv1D),
pre-LN, learned positions, LM head tied to the token embedding."""

from __future__ import annotations

from torch import nn

from .hf import HFFamily, ffn
from .sites import FFNSite, HeadSite, has_modules, slot


class GPT2(HFFamily):
    name, kind, generative = "gpt2", "decoder", True
    layout = "GPT-2 (gpt2: fused Conv1D .attn.c_attn)"
    model_types = frozenset({"gpt2"})
    stack_paths = {"decoder": ("h",)}
    ff_fields = ("n_inner",)

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        if not has_modules(m, "c_attn", "c_proj") or not hasattr(m, "split_size") or hasattr(m, "q_attn"):
            return None

        def set_heads(n: int, _kv: int) -> None:
            m.num_heads = n
            m.split_size = m.embed_dim = n * m.head_dim  # the fused output is split in three at split_size

        return HeadSite(name, None, None, None, slot(m, "c_proj", name), m.num_heads, m.head_dim, set_heads,
                        qkv=slot(m, "c_attn", name))

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return ffn(name, m, "c_fc", "c_proj")


FAMILY = GPT2()
