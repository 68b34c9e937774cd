"""Hugging Face ViT (transformers 5): `.attention.{q,k,v,o}_proj`, MLP `.mlp.fc1` / `.mlp.fc2`, pre-LN,
class token first."""

from __future__ import annotations

from torch import nn

from .hf import ImageFamily, ffn, proj_site
from .sites import FFNSite, HeadSite, has_modules


class ViT(ImageFamily):
    name = "vit"
    layout = "Hugging Face ViT (vit, deit: .attention.q_proj, .mlp.fc1)"
    model_types = frozenset({"vit", "deit"})
    stack_paths = {"encoder": ("layers", "encoder.layer", "encoder.layers")}

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        if not has_modules(m, "q_proj", "k_proj", "v_proj", "o_proj") or not hasattr(m, "num_attention_heads"):
            return None
        return proj_site(name, m, ("q_proj", "k_proj", "v_proj", "o_proj"), "num_attention_heads", m.head_dim)

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        return ffn(name, m, "fc1", "fc2") if name.endswith("mlp") else None

    def protected_tokens(self, model: nn.Module) -> int:
        return 2 if model.config.model_type == "deit" else 1  # class (+ distillation) token

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


FAMILY = ViT()
