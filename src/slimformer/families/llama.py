"""Llama-style decoders (Llama, Mistral, Qwen2, ...): `{q,k,v,o}_proj` with grouped key/value heads,
rotary positions, RMSNorm, gated MLP `down(act(gate(x)) * up(x))`."""

from __future__ import annotations

from torch import nn

from .hf import HFFamily, ffn
from .sites import FFNSite, HeadSite, has_modules, slot


class Llama(HFFamily):
    name, kind, generative = "llama", "decoder", True
    layout = "Llama-style decoders (llama, mistral, qwen2: .self_attn.q_proj, .mlp.gate_proj)"
    model_types = frozenset({"llama", "mistral", "qwen2", "qwen3"})
    stack_paths = {"decoder": ("layers",)}

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        if not has_modules(m, "q_proj", "k_proj", "v_proj", "o_proj") or not hasattr(m, "num_key_value_groups"):
            return None
        q, k, v, o = (slot(m, a, name) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
        n_heads, n_kv = q.get().out_features // m.head_dim, k.get().out_features // m.head_dim
        # The module reshapes with -1 and repeats each key/value head `num_key_value_groups` times: removing
        # whole groups leaves nothing of its own to update.
        return HeadSite(name, q, k, v, o, n_heads, m.head_dim, lambda n, kv: None, n_kv_heads=n_kv)

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return ffn(name, m, "up_proj", "down_proj", gate="gate_proj")


FAMILY = Llama()
