"""BERT-style encoders (BERT, RoBERTa, MiniLM, ELECTRA, ...): `.attention.self.{query,key,value}` +
`.attention.output.dense`, FFN `.intermediate.dense` + `.output.dense`, post-LN, `[CLS] ... [SEP]`."""

from __future__ import annotations

from torch import nn

from .base import StageParts, State
from .hf import HFFamily, carried_mask, counts_setter, real_tokens
from .sites import FFNSite, HeadSite, has_modules, join, slot


class Bert(HFFamily):
    name, kind = "bert", "encoder"
    layout = "BERT-style encoders (bert, roberta, xlm-roberta, electra, camembert: .attention.self.query)"
    model_types = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet"})
    stack_paths = {"encoder": ("encoder.layer",)}

    def matches(self, model: nn.Module) -> bool:
        if not super().matches(model):
            return False
        c = model.config
        return not (getattr(c, "is_decoder", False) or getattr(c, "add_cross_attention", False))

    def max_len(self, config) -> int:
        # RoBERTa counts positions from padding_idx + 1, so two of its table's rows are never a token
        offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
        return int(config.max_position_embeddings) - offset

    def attention_site(self, name: str, m: nn.Module) -> HeadSite | None:
        sa = getattr(m, "self", None)
        if sa is None or not has_modules(sa, "query", "key", "value") or not has_modules(m, "output"):
            return None
        if not has_modules(m.output, "dense") or not hasattr(sa, "num_attention_heads"):
            return None

        def all_head_size(n: int) -> None:
            sa.all_head_size = n * sa.attention_head_size

        prefix = join(name, "self")
        return HeadSite(name, slot(sa, "query", prefix), slot(sa, "key", prefix), slot(sa, "value", prefix),
                        slot(m.output, "dense", join(name, "output")), sa.num_attention_heads,
                        sa.attention_head_size, counts_setter(sa, "num_attention_heads", extra=all_head_size))

    def ffn_site(self, name: str, m: nn.Module) -> FFNSite | None:
        if not (has_modules(m, "intermediate", "output") and has_modules(m.intermediate, "dense")
                and has_modules(m.output, "dense")):
            return None
        return FFNSite(name, slot(m.intermediate, "dense", join(name, "intermediate")),
                       slot(m.output, "dense", join(name, "output")))

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # [CLS]; [SEP] (the last real token) is protected by the patch, per row

    def stage_parts(self, model: nn.Module) -> StageParts | None:
        """`BertModel.forward` cut at `encoder.layer`: embeddings first; every stage rebuilds the attention
        mask from the carried padding mask; the main output is the last layer's hidden states (post-LN:
        no final norm). Task heads (classifier, MLM) have no cut here."""
        if model.base_model is not model:
            return None

        def embed(h: nn.Module, args: tuple, kwargs: dict) -> State:
            x = h.embeddings(input_ids=kwargs["input_ids"], token_type_ids=kwargs.get("token_type_ids"))
            return x, carried_mask(kwargs, x)

        def run_blocks(h: nn.Module, blocks: list[nn.Module], state: State) -> State:
            from transformers.masking_utils import create_bidirectional_mask

            x, mask = state
            bias = create_bidirectional_mask(config=h.config, inputs_embeds=x, attention_mask=real_tokens(mask))
            for block in blocks:
                x = block(x, bias)
            return x, mask

        return StageParts("encoder.layer", ("embeddings",), (), embed, run_blocks, lambda h, state: state[0])

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


FAMILY = Bert()
