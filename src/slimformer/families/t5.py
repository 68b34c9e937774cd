"""T5: `{q,k,v,o}` projections without bias (`n_heads`, `key_value_proj_dim`), FFN `wi` / `wo` (gated
`wi_0` / `wi_1` / `wo` in T5 v1.1), RMS-style norms, and a relative position bias per head.

The bias table lives in the first block of each stack and the bias it computes is handed on to every
later block, so all attention layers of one stack (encoder self, decoder self, decoder cross) must keep
the same heads: their sites share a `tie` key, and the table's columns are sliced with them.
"""

from __future__ import annotations

from torch import nn

from .hf import HFFamily, counts_setter
from .sites import FFNSite, HeadSite, has_modules, slot


class T5(HFFamily):
    name, kind, generative = "t5", "seq2seq", True
    layout = "T5 (t5, mt5: .SelfAttention.q, .DenseReluDense.wi)"
    model_types = frozenset({"t5", "mt5"})
    stack_paths = {"encoder": ("encoder.block",), "decoder": ("decoder.block",)}
    ff_fields = ("d_ff",)

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        if not has_modules(m, "q", "k", "v", "o") or not hasattr(m, "key_value_proj_dim"):
            return None

        def inner(n: int) -> None:
            m.inner_dim = n * m.key_value_proj_dim

        stack, attr = name.split(".block.")[0], name.rsplit(".", 1)[-1]
        tables = [slot(m, "relative_attention_bias", name)] if getattr(m, "has_relative_attention_bias", False) else []
        return HeadSite(name, *(slot(m, a, name) for a in ("q", "k", "v", "o")), m.n_heads, m.key_value_proj_dim,
                        counts_setter(m, "n_heads", extra=inner), tables=tables, tie=f"{stack}.{attr}")

    def fixed_blocks(self, model: nn.Module) -> set[int]:
        return {0}  # it computes the position bias every later block adds

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        if has_modules(m, "wi_0", "wi_1", "wo"):
            return FFNSite(name, slot(m, "wi_1", name), slot(m, "wo", name), slot(m, "wi_0", name))
        if has_modules(m, "wi", "wo"):
            return FFNSite(name, slot(m, "wi", name), slot(m, "wo", name))
        return None

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # the first source token; the last real one (</s>) is protected by the patch, per row

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None  # merged tokens keep their mean position for the relative position bias


FAMILY = T5()
