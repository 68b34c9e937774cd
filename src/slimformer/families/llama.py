"""Llama-style decoders (Llama, Mistral, Qwen2, ...): `{q,k,v,o}_proj` with grouped key/value heads,
rotary positions, RMSNorm, gated MLP `down(act(gate(x)) * up(x))`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import StageParts, State, attr_path
from .hf import HFFamily, carried_mask, ffn, module_path, real_tokens
from .sites import FFNSite, HeadSite, has_modules, join, slot


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

    def stage_parts(self, model: nn.Module) -> StageParts | None:
        """`LlamaModel.forward` cut at its layers: embed_tokens first; every stage rebuilds the causal mask
        and rotary tables for its layers (from the carried padding mask); norm (+ lm_head) last. A causal
        LM's head is its output embedding; other task heads have no cut here."""
        base = module_path(model, model.base_model)
        head = module_path(model, model.get_output_embeddings()) if base else None
        if base is None or (base and not head):
            return None
        at = lambda h, attr: attr_path(h, join(base, attr))  # noqa: E731

        def embed(h: nn.Module, args: tuple, kwargs: dict) -> State:
            x = at(h, "embed_tokens")(kwargs["input_ids"])
            return x, carried_mask(kwargs, x)

        def run_blocks(h: nn.Module, blocks: list[nn.Module], state: State) -> State:
            from transformers.masking_utils import create_causal_mask

            x, mask = state
            pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
            causal = create_causal_mask(config=h.config, inputs_embeds=x, attention_mask=real_tokens(mask), cache=None,
                                        position_ids=pos)
            rotary = at(h, "rotary_emb")(x, position_ids=pos)
            for block in blocks:
                x = block(x, attention_mask=causal, position_embeddings=rotary, position_ids=pos)
            return x, mask

        def last(h: nn.Module, state: State) -> Tensor:
            x = at(h, "norm")(state[0])
            return attr_path(h, head)(x) if head else x

        return StageParts(join(base, "layers"), (join(base, "embed_tokens"),),
                          (join(base, "norm"), *([head] if head else [])), embed, run_blocks, last,
                          every=(join(base, "rotary_emb"),))


FAMILY = Llama()
