"""Tiny random-weight Hugging Face models of every supported family, for tests and `benchmarks/families.py`.

Sizes are small (width 64, 2 layers) so a family x step matrix runs in seconds; weights are drawn at
std 0.15 (not the 0.02 default) so that a broken compression step visibly changes the outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

WIDTH, LAYERS, HEADS, FF, VOCAB = 64, 2, 4, 128, 1000


def _configs() -> dict[str, Callable[[], tuple[str, object]]]:
    import transformers as T

    common = {"vocab_size": VOCAB}
    enc = {**common, "hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "intermediate_size": FF, "max_position_embeddings": 128}
    bart = {**common, "d_model": WIDTH, "encoder_layers": LAYERS, "decoder_layers": LAYERS,
            "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS, "encoder_ffn_dim": FF,
            "decoder_ffn_dim": FF, "max_position_embeddings": 128}
    return {
        "bert": lambda: ("BertModel", T.BertConfig(**enc)),
        "roberta": lambda: ("RobertaModel", T.RobertaConfig(**{**enc, "max_position_embeddings": 130})),
        "distilbert": lambda: ("DistilBertModel", T.DistilBertConfig(
            **common, dim=WIDTH, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FF, max_position_embeddings=128)),
        "vit": lambda: ("ViTForImageClassification", T.ViTConfig(
            hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FF,
            image_size=16, patch_size=4, num_channels=3, num_labels=10)),
        "gpt2": lambda: ("GPT2LMHeadModel", T.GPT2Config(
            **common, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_inner=FF, n_positions=128,
            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)),
        "llama": lambda: ("LlamaForCausalLM", T.LlamaConfig(
            **common, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=2, intermediate_size=FF, max_position_embeddings=128, tie_word_embeddings=False)),
        "t5": lambda: ("T5ForConditionalGeneration", T.T5Config(
            **common, d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=FF, num_layers=LAYERS, num_decoder_layers=LAYERS,
            num_heads=HEADS, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)),
        "bart": lambda: ("BartForConditionalGeneration", T.BartConfig(**bart)),
        "marian": lambda: ("MarianMTModel", T.MarianConfig(
            **bart, pad_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 1, eos_token_id=0)),
        "whisper": lambda: ("WhisperForConditionalGeneration", T.WhisperConfig(
            vocab_size=VOCAB, num_mel_bins=16, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=LAYERS,
            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FF, decoder_ffn_dim=FF,
            max_source_positions=32, max_target_positions=64, pad_token_id=VOCAB - 1, bos_token_id=VOCAB - 2,
            eos_token_id=VOCAB - 2, decoder_start_token_id=VOCAB - 3, begin_suppress_tokens=None,
            suppress_tokens=None)),
    }


NAMES = ("bert", "roberta", "distilbert", "vit", "gpt2", "llama", "t5", "bart", "marian", "whisper")


def tiny(name: str, std: float = 0.15, seed: int = 0) -> nn.Module:
    """A tiny random-init model of family `name` (one of `NAMES`), eval mode, sdpa where it has it."""
    import transformers

    cls_name, config = _configs()[name]()
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
            elif "norm" in pname or "ln" in pname or "layer_norm" in pname:
                p.normal_(1.0, std / 3)
            else:
                p.normal_(0, std / 3)
    return model
