"""Our own reference models (models/): ViT, Encoder, Decoder, Seq2Seq, one family each.

Their layout is the simplest: `Attention` (q, k, v, o; `n_heads`, `head_dim`) and `MLP` (fc1, fc2) blocks
in `blocks` lists.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models import Decoder, Encoder, Seq2Seq, ViT
from ..models.attention import Attention, padding_bias
from ..models.blocks import MLP
from .base import Dims, Family, Inputs, StageParts, State, check_len, random_ids
from .checks import check_images, check_tokens
from .sites import FFNSite, HeadSite, slot


def _head_site(name: str, m: Attention) -> HeadSite:
    def set_heads(n: int, _kv: int) -> None:
        m.n_heads = n

    return HeadSite(name, *(slot(m, a, name) for a in ("q", "k", "v", "o")), m.n_heads, m.head_dim, set_heads)


# ---- pipeline stage parts: the models' own forward, cut at the block list -------------------------------
# `ViT.embed` / `Encoder.embed` are called unbound, with a stage holding the same attributes as `self`.

def _vit_embed(h: nn.Module, args: tuple, kwargs: dict) -> State:
    return (ViT.embed(h, args[0]),)


def _vit_head(h: nn.Module, state: State) -> Tensor:
    return h.head(h.norm(state[0])[:, 0])


def _plain_blocks(h: nn.Module, blocks: list[nn.Module], state: State) -> State:
    x = state[0]
    for block in blocks:
        x = block(x)
    return (x,)


def _encoder_embed(h: nn.Module, args: tuple, kwargs: dict) -> State:
    x = Encoder.embed(h, args[0])
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, padding_bias(mask, x.dtype)


def _encoder_blocks(h: nn.Module, blocks: list[nn.Module], state: State) -> State:
    x, bias = state
    for block in blocks:
        x = block(x, bias)
    return x, bias


def _decoder_embed(h: nn.Module, args: tuple, kwargs: dict) -> State:
    tokens = args[0]
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return (h.drop(h.tok_emb(tokens) + h.pos_emb(pos)),)


def _decoder_blocks(h: nn.Module, blocks: list[nn.Module], state: State) -> State:
    x = state[0]
    for block in blocks:
        x, _ = block(x)
    return (x,)


class Reference(Family):
    """Shared by the four reference families: they differ in class, stacks and inputs."""

    cls: type[nn.Module]
    layout = ""

    def matches(self, model: nn.Module) -> bool:
        return type(model) is self.cls

    def head_sites(self, model: nn.Module) -> list[HeadSite]:
        return [_head_site(n, m) for n, m in model.named_modules() if isinstance(m, Attention)]

    def ffn_sites(self, model: nn.Module) -> list[FFNSite]:
        return [FFNSite(n, slot(m, "fc1", n), slot(m, "fc2", n)) for n, m in model.named_modules()
                if isinstance(m, MLP)]

    def stacks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return {"encoder" if self.kind != "decoder" else "decoder": model.blocks}

    def dims(self, model: nn.Module) -> Dims:
        c = model.config
        layers = len([m for m in model.modules() if isinstance(m, MLP)])
        vocab = c.vocab_size if self.kind in ("decoder", "seq2seq") else 0
        return Dims(c.d_model, c.n_heads, c.d_ff, layers, vocab, c.max_len)


class ReferenceViT(Reference):
    name, kind, cls = "reference-vit", "image", ViT
    layout = "slimformer ViT"

    def dims(self, model: nn.Module) -> Dims:
        c = model.config
        return Dims(c.d_model, c.n_heads, c.d_ff, len(model.blocks), 0, c.n_patches + 1, images=True)

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        return (torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g),), {}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        from ..errors import SlimformerError

        if len(args) != 1:
            raise SlimformerError(f"a ViT takes one input (images), got {len(args)}")
        c = model.config
        check_images(args[0], c.in_channels, c.image_size)

    def protected_tokens(self, model: nn.Module) -> int:
        return 1  # the class token

    def stage_parts(self, model: nn.Module) -> StageParts:
        return StageParts("blocks", ("patch_embed", "cls_token", "pos_emb", "drop"), ("norm", "head"),
                          _vit_embed, _plain_blocks, _vit_head)

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


class ReferenceEncoder(Reference):
    name, kind, cls = "reference-encoder", "encoder", Encoder
    layout = "slimformer Encoder"

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        check_len(seq_len, c.max_len, model)
        return (random_ids(g, c.vocab_size, (batch, seq_len), 3), torch.ones(batch, seq_len, dtype=torch.bool)), {}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        c = model.config
        check_tokens(args[0], c.vocab_size, c.max_len, args[1] if len(args) > 1 else kwargs.get("mask"))

    def stage_parts(self, model: nn.Module) -> StageParts:
        return StageParts("blocks", ("tok_emb", "pos_emb", "drop"), ("norm",), _encoder_embed, _encoder_blocks,
                          lambda h, state: h.norm(state[0]))

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


class ReferenceDecoder(Reference):
    name, kind, cls = "reference-decoder", "decoder", Decoder
    layout = "slimformer Decoder"
    generative = True

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        check_len(seq_len, c.max_len, model)
        return (random_ids(g, c.vocab_size, (batch, seq_len), 3),), {}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        c = model.config
        for t in args[:1]:
            check_tokens(t, c.vocab_size, c.max_len)

    def stage_parts(self, model: nn.Module) -> StageParts:
        return StageParts("blocks", ("tok_emb", "pos_emb", "drop"), ("norm", "lm_head"), _decoder_embed,
                          _decoder_blocks, lambda h, state: h.lm_head(h.norm(state[0])))


class ReferenceSeq2Seq(Reference):
    name, kind, cls = "reference-seq2seq", "seq2seq", Seq2Seq
    layout = "slimformer Seq2Seq"
    generative = True

    def stacks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return {"encoder": model.encoder.blocks, "decoder": model.decoder.blocks}

    def example_inputs(self, model: nn.Module, batch: int, seq_len: int, g: torch.Generator) -> Inputs:
        c = model.config
        check_len(seq_len, c.max_len, model)
        return (random_ids(g, c.vocab_size, (batch, seq_len), 3), random_ids(g, c.vocab_size, (batch, seq_len), 3)), {}

    def check_inputs(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        c = model.config
        for t in args[:2]:
            check_tokens(t, c.vocab_size, c.max_len)

    def token_reduction_refusal(self, model: nn.Module) -> str | None:
        return None


FAMILIES = (ReferenceViT(), ReferenceEncoder(), ReferenceDecoder(), ReferenceSeq2Seq())
