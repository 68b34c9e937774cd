"""The external anchor for decoding speed: our `Seq2Seq` weights in CTranslate2, via a transformers MarianMT.

Route: `Seq2Seq` -> `transformers.MarianMTModel` of identical shape (same vocabulary, width, layers,
heads, FFN, GELU, tied embeddings, no embedding scale; our learned position tables copied into its
position-embedding weights) -> CTranslate2 model dir (fp32 or int8 weights).

What transformers' Marian cannot express, and how the conversion handles it (stated in the results):
- MarianConfig has no `normalize_before`: transformers' Marian layers are post-LayerNorm, ours pre-LN.
  CTranslate2's own Marian loader also forces post-LN. We convert with CTranslate2's BART loader logic
  and `normalize_before=True`, which maps each Marian `*_layer_norm` to the pre-norm position.
- Marian has no final encoder/decoder LayerNorm; ours has one each. They are attached to the Marian
  modules as `layer_norm` (unused by transformers' forward, read by the converter).
- Marian positions are sinusoidal; the module is an `nn.Embedding`, so it holds our learned table.
- CTranslate2 starts a Marian decoder from a zero embedding; ours starts from `<s>`, so the decoder
  start token is `<s>` (`decoder_start_token_id = bos_id`).
- LayerNorm epsilon: ours 1e-6, CTranslate2's is fixed (1e-5 / 1e-6 depending on build) - a rounding-level
  difference; the fp32 CTranslate2 model's token agreement with ours measures it.
So the transformers model *object* is a weight carrier of identical shape; running it in transformers
would compute post-LN Marian, not our function. The CTranslate2 model computes our function.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import SlimformerError
from ..models.seq2seq import Seq2Seq


def to_marian(model: Seq2Seq):
    """A `transformers.MarianMTModel` of identical shape holding `model`'s weights (see module doc)."""
    from transformers import MarianConfig, MarianMTModel

    c = model.config
    cfg = MarianConfig(vocab_size=c.vocab_size, decoder_vocab_size=c.vocab_size, d_model=c.d_model,
                       encoder_layers=c.n_enc_layers, decoder_layers=c.n_dec_layers,
                       encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads,
                       encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, activation_function="gelu",
                       max_position_embeddings=c.max_len, scale_embedding=False, dropout=0.0,
                       attention_dropout=0.0, activation_dropout=0.0, pad_token_id=c.pad_id,
                       bos_token_id=c.bos_id, eos_token_id=c.eos_id, decoder_start_token_id=c.bos_id,
                       forced_eos_token_id=c.eos_id, share_encoder_decoder_embeddings=True,
                       tie_word_embeddings=True)
    hf = MarianMTModel(cfg).eval()
    m = hf.model

    def put(dst: nn.Module, src: nn.Module) -> None:
        dst.weight.data.copy_(src.weight.data)
        if getattr(src, "bias", None) is not None:
            dst.bias.data.copy_(src.bias.data)

    def attention(dst, src) -> None:
        for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            put(getattr(dst, a), getattr(src, b))

    with torch.no_grad():
        m.shared.weight.copy_(model.encoder.tok_emb.weight)
        for side in (m.encoder, m.decoder):
            side.embed_tokens.weight = m.shared.weight
        hf.lm_head.weight = m.shared.weight
        m.encoder.embed_positions.weight.copy_(model.encoder.pos_emb.weight)
        m.decoder.embed_positions.weight.copy_(model.decoder.pos_emb.weight)
        for dst, src in zip(m.encoder.layers, model.encoder.blocks, strict=True):
            attention(dst.self_attn, src.attn)
            put(dst.self_attn_layer_norm, src.norm1)
            put(dst.fc1, src.mlp.fc1)
            put(dst.fc2, src.mlp.fc2)
            put(dst.final_layer_norm, src.norm2)
        for dst, src in zip(m.decoder.layers, model.decoder.blocks, strict=True):
            attention(dst.self_attn, src.self_attn)
            put(dst.self_attn_layer_norm, src.norm1)
            attention(dst.encoder_attn, src.cross_attn)
            put(dst.encoder_attn_layer_norm, src.norm2)
            put(dst.fc1, src.mlp.fc1)
            put(dst.fc2, src.mlp.fc2)
            put(dst.final_layer_norm, src.norm3)
    m.encoder.layer_norm = copy.deepcopy(model.encoder.norm)  # read by the converter only
    m.decoder.layer_norm = copy.deepcopy(model.decoder.norm)
    return hf


class _Vocab:
    """The two things CTranslate2's loader asks of a tokenizer: the vocabulary and the special tokens."""

    def __init__(self, tok):
        self.tok = tok
        self.bos_token, self.eos_token, self.unk_token = "<s>", "</s>", "<pad>"

    def get_vocab(self) -> dict[str, int]:
        return self.tok.get_vocab()

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tok.id_to_token(i)


def convert(model: Seq2Seq, tok, out: str | Path, quantization: str | None = "int8") -> Path:
    """Write a CTranslate2 model dir at `out` computing `model` (pre-LN), through `to_marian`."""
    import ctranslate2
    from ctranslate2.converters.transformers import BartLoader

    if tok.get_vocab_size() != model.config.vocab_size:
        raise SlimformerError(f"tokenizer has {tok.get_vocab_size()} tokens, model {model.config.vocab_size}")

    class PreNormMarianLoader(BartLoader):
        @property
        def architecture_name(self) -> str:
            return "MarianMTModel"

        def get_model_spec(self, hf):
            hf.config.normalize_before = True  # our blocks normalize first (see module doc)
            hf.config.normalize_embedding = False  # no LayerNorm right after the embeddings
            return super().get_model_spec(hf)

    hf = to_marian(model)

    class _Converter(ctranslate2.converters.Converter):
        def _load(self):
            return PreNormMarianLoader()(hf, _Vocab(tok))

    return Path(_Converter().convert(str(out), quantization=quantization, force=True))


def translator(path: str | Path, compute_type: str = "int8", threads: int = 2):
    import ctranslate2

    return ctranslate2.Translator(str(path), device="cpu", compute_type=compute_type, intra_threads=threads,
                                  inter_threads=1)


def ct2_greedy(translator, tok, sources: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding in CTranslate2 of source id lists (with EOS) -> target id lists (no BOS/EOS)."""
    tokens = [[tok.id_to_token(i) for i in s] for s in sources]
    results = translator.translate_batch(tokens, beam_size=1, max_decoding_length=max_new_tokens,
                                         max_batch_size=0, return_scores=False)
    return [[tok.token_to_id(t) for t in r.hypotheses[0]] for r in results]


class _SyntheticVocab:
    """A vocabulary for a random-weight model that has no tokenizer: token i is "t{i}", except the
    model's own special ids, which take the names CTranslate2's loaders look for."""

    def __init__(self, size: int, specials: dict[int, str], bos: str, eos: str, unk: str):
        self.tokens = [specials.get(i, f"t{i}") for i in range(size)]
        self.bos_token, self.eos_token, self.unk_token = bos, eos, unk

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tokens[i]


def convert_hf(model: nn.Module, out: str | Path, quantization: str | None = "int8") -> tuple[Path, _SyntheticVocab]:
    """A CTranslate2 model dir for a random-weight transformers GPT-2 or Marian model (CTranslate2's own
    loaders; vocabulary synthetic, see `_SyntheticVocab`) and that vocabulary, for `ct2_generate`."""
    import ctranslate2
    from ctranslate2.converters.transformers import GPT2Loader, MarianMTLoader

    c = model.config
    if c.model_type == "gpt2":
        end = "<|endoftext|>"
        loader, vocab = GPT2Loader(), _SyntheticVocab(c.vocab_size, {c.eos_token_id: end}, end, end, end)
    elif c.model_type == "marian":
        loader = MarianMTLoader()
        vocab = _SyntheticVocab(c.vocab_size, {c.eos_token_id: "</s>", c.pad_token_id: "<pad>"}, "</s>", "</s>", "</s>")
    else:
        raise SlimformerError(f"convert_hf takes gpt2 or marian models, got {c.model_type!r}")

    class _Converter(ctranslate2.converters.Converter):
        def _load(self):
            return loader(model, vocab)

    return Path(_Converter().convert(str(out), quantization=quantization, force=True)), vocab


def ct2_generate(path: str | Path, vocab: _SyntheticVocab, kind: str, compute_type: str, threads: int = 2):
    """A callable `ids [[int]] -> [[int]]` decoding greedily exactly `n` new tokens per row in
    CTranslate2 (`kind` "gpt2": continue the prompt; "marian": translate the source)."""
    import ctranslate2

    def to_tokens(rows: list[list[int]]) -> list[list[str]]:
        return [[vocab.tokens[i] for i in r] for r in rows]

    ids = vocab.get_vocab()
    if kind == "gpt2":
        gen = ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type, intra_threads=threads)

        def run(rows: list[list[int]], n: int) -> list[list[int]]:
            res = gen.generate_batch(to_tokens(rows), max_length=n, min_length=n, sampling_topk=1,
                                     include_prompt_in_result=False)
            return [[ids[t] for t in r.sequences[0]] for r in res]
    else:
        tr = ctranslate2.Translator(str(path), device="cpu", compute_type=compute_type, intra_threads=threads)

        def run(rows: list[list[int]], n: int) -> list[list[int]]:
            res = tr.translate_batch(to_tokens(rows), beam_size=1, max_decoding_length=n, min_decoding_length=n,
                                     max_batch_size=0)
            return [[ids[t] for t in r.hypotheses[0]] for r in res]
    return run
