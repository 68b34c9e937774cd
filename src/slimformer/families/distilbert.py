"""DistilBERT: `.attention.{q,k,v,out}_lin` (`n_heads`, `dim`), FFN `.ffn.lin1` / `.ffn.lin2`."""

from __future__ import annotations

from torch import nn

from .hf import HFFamily, ffn, proj_site
from .sites import FFNSite, HeadSite, has_modules


class DistilBert(HFFamily):
    name, kind = "distilbert", "encoder"
    layout = "DistilBERT (.attention.q_lin, .ffn.lin1)"
    model_types = frozenset({"distilbert"})
    stack_paths = {"encoder": ("transformer.layer",)}
    ff_fields = ("hidden_dim",)

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        if not has_modules(m, "q_lin", "k_lin", "v_lin", "out_lin"):
            return None
        return proj_site(name, m, ("q_lin", "k_lin", "v_lin", "out_lin"), "n_heads", m.attention_head_size)

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return ffn(name, m, "lin1", "lin2")

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # [CLS]; [SEP] (the last real token) is protected by the patch, per row

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


FAMILY = DistilBert()
