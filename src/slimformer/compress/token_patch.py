"""Token reduction patched into the reference models (`ViT`, `Encoder`, `Seq2Seq`) from outside.

The model classes know nothing of this: `patch_reference` replaces the forward of one model instance
(and `Seq2Seq.encode`) with a version that runs the same submodules in the same order, and reduces
the tokens between each block's attention and its MLP (where ToMe and EViT put it). `TokenReducer`
holds the plan and the per-forward state (sizes, protected tokens, attention bias); the Hugging Face
adapters in `token_patch_hf.py` drive the same object.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models import Encoder, Seq2Seq, ViT
from ..models.attention import Attention, additive, padding_bias
from ..models.blocks import EncoderBlock
from .merge import bipartite_soft_matching, mergeable, size_bias, uniform_merge
from .token_pruning import attention_received, attentive_pruning

STATE = "_token_reduction"          # attribute holding the TokenReducer on every patched module
LAYER = "_token_layer_index"        # attribute holding a patched HF layer's index
PLANS = "_token_plans"              # HF text models: ToMe's static plan for every unpadded length
PATCHED_METHODS = ("forward", "encode")


@dataclass
class TokenSite:
    """What validation needs to know about a model: its depth and token counts.

    tokens: the fixed number of tokens (ViT), else the most a text model accepts; protected: tokens
    per sequence that never reduce; fixed: whether every input has exactly `tokens` tokens.
    """

    n_layers: int
    tokens: int
    protected: int
    fixed: bool
    query: str  # whose attention ranks tokens for pruning: "cls" or "mean"
    metric: str  # what ToMe compares by default: "keys" (images, as ToMe) or "hidden" (text)


@dataclass
class TokenReducer:
    """A token-reduction plan plus the state of the forward pass in flight.

    method "tome": merge `r[l]` tokens per row in block l (or, with `keep_ratio`, a per-row geometric
    plan that keeps `keep_ratio` of each row's mergeable tokens after the last block). Rows too short
    for the plan merge at most half of their mergeable tokens per block (ToMe's own clamp).
    method "prune": block l keeps `keep_rates[l]` of the mergeable tokens (1.0 = all).
    """

    method: str
    n_layers: int
    prop_attn: bool = True
    r: list[int] | None = None
    keep_ratio: float | None = None
    keep_rates: list[float] | None = None
    fuse: bool = True
    query: str = "mean"
    metric: str = "keys"             # tome similarity: "keys" (mean over heads) or "hidden" states
    # State of the current forward (per batch):
    size: Tensor | None = None       # [B, T] float, 0 = padding / dead slot
    protected: Tensor | None = None  # [B, T] bool
    bias: Tensor | None = None       # additive attention bias for the current tokens
    plan: Tensor | None = None       # [B, n_layers] merges per row and block (tome)
    changed: bool = False            # whether any block reduced tokens in this forward
    merges: tuple[int, ...] | None = None  # this forward's static plan (rows alike: `uniform_merge`)
    protect_last: bool = False       # static path: the last token (text's [SEP]) never merges either
    unpadded: bool = False           # HF text models: this batch has no padding (set before the layers)

    def begin(self, size: Tensor, protected: Tensor, bias: Tensor | None,
              merges: tuple[int, ...] | None = None, protect_last: bool = False) -> None:
        """Start a forward: size, protected `[B, T]`, and the model's own attention bias. `merges` (from
        `static_plan`, for rows the caller vouches are alike: images, unpadded text) selects the
        static-shape path, which keeps the first token (and with `protect_last` the last) unmerged."""
        self.size, self.protected, self.bias, self.changed = size, protected & (size > 0), bias, False
        self.merges, self.protect_last = merges, protect_last
        if merges is not None:
            return
        if self.method == "tome":
            self.plan = self._merge_plan(mergeable(size, self.protected).sum(1))

    def _merge_plan(self, n: Tensor) -> Tensor:
        """n `[B]` mergeable tokens per row -> merges `[B, n_layers]`: each row's `static_plan`."""
        rows = [self.static_plan(k) for k in n.tolist()]
        return torch.tensor(rows, dtype=torch.long, device=n.device).reshape(len(rows), self.n_layers)

    def step(self, layer: int, x: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """Reduce the tokens after block `layer`'s attention. x `[B, T, C]`; q, k `[B, H, T, D]` (the
        block's queries and keys). Returns x `[B, T', C]`; sizes, protection and bias follow."""
        if self.merges is not None:
            return self._static_step(layer, x, k)
        if self.method == "tome":
            r = self.plan[:, layer]
            if not bool(r.any()):
                return x
            metric = k.mean(1) if self.metric == "keys" else x
            red = bipartite_soft_matching(metric, r, self.size, self.protected)
        else:
            rate = self.keep_rates[layer]
            if rate >= 1.0:
                return x
            score = attention_received(q, k, additive(self.bias, q.dtype), self.size, self.query)
            red = attentive_pruning(score, rate, self.size, self.protected, self.fuse)
        x, self.size, self.protected = red.apply(x, self.size, self.protected)
        self.changed = True
        needs_bias = self.prop_attn or not bool((self.size > 0).all())
        self.bias = size_bias(self.size, self.prop_attn, x.dtype) if needs_bias else None
        return x

    def static_plan(self, n: int) -> tuple[int, ...] | None:
        """ToMe merges per block for a row of `n` mergeable tokens, as plain ints; None for pruning.
        With `keep_ratio`, every block keeps the same fraction, so `keep_ratio` of the row is left.
        The ViT patch stores its plan on the module, where torch.compile treats it as a constant: read
        from this object, a plan that differs between two compiled models would be turned into a
        symbolic int, which inductor fails on."""
        if self.method != "tome":
            return None
        if self.keep_ratio is None:
            return tuple(self.r)
        q = self.keep_ratio ** (1 / self.n_layers)
        remain = [n] + [round(n * q ** layer) for layer in range(1, self.n_layers + 1)]
        return tuple(before - after for before, after in zip(remain, remain[1:], strict=False))

    def _static_step(self, layer: int, x: Tensor, k: Tensor) -> Tensor:
        """`step` for alike rows: static shapes, no host sync (compiles as one graph)."""
        r = self.merges[layer]
        if r == 0:
            return x
        metric = k.mean(1) if self.metric == "keys" else x
        x, self.size = uniform_merge(x, self.size, metric, r, protect_first=True, protect_last=self.protect_last)
        # the protected ends keep their places (first, last); nothing between them is protected
        self.protected = torch.cat([self.protected[:, :x.shape[1] - 1], self.protected[:, -1:]], dim=1)
        self.changed = True
        self.bias = size_bias(self.size, True, x.dtype) if self.prop_attn else None
        return x


def attend(attn: Attention, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """`Attention.forward` for self-attention, op for op (so an unreduced run is bit-identical), that
    also returns the queries and keys `[B, H, T, D]` the reduction needs. x `[B, T, C]` -> `[B, T, C]`."""
    q = attn.split_heads(attn.q(x))
    kv = attn.project_kv(x)
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    out = attn.kernel(q, kv.k, kv.v, bias)
    out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return attn.o(out), q, kv.k


def run_blocks(blocks: nn.ModuleList, x: Tensor, red: TokenReducer) -> Tensor:
    """The reference `EncoderBlock`s with reduction between attention and MLP; state in `red`
    (after `red.begin`). x `[B, T, C]` -> `[B, T', C]`."""
    for i, block in enumerate(blocks):
        h, q, k = attend(block.attn, block.norm1(x), red.bias)
        x = x + block.drop(h)
        x = red.step(i, x, q, k)
        x = x + block.mlp(block.norm2(x))
    return x


def _vit_forward(self: ViT, images: Tensor) -> Tensor:
    """images `[B, C, H, W]` -> logits; the class token (first) is protected and stays first."""
    red: TokenReducer = getattr(self, STATE)
    x = self.embed(images)
    protected = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    protected[:, 0] = True
    red.begin(torch.ones(x.shape[:2], dtype=x.dtype, device=x.device), protected, None, self._token_merges)
    x = run_blocks(self.blocks, x, red)
    return self.head(self.norm(x)[:, 0])


def _encoder_forward(self: Encoder, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """tokens, mask `[B, T]` -> hidden states `[B, T', C]`; `token_sizes(model)` gives their sizes."""
    red: TokenReducer = getattr(self, STATE)
    x = self.embed(tokens)
    bias = None if mask is None else padding_bias(mask, x.dtype)
    real = torch.ones(tokens.shape, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    protect_ids = torch.tensor(getattr(self, "_token_protect_ids", ()), dtype=tokens.dtype, device=x.device)
    red.begin(real.to(x.dtype), torch.isin(tokens, protect_ids), bias)
    x = run_blocks(self.blocks, x, red)
    return self.norm(x)


def _seq2seq_encode(self: Seq2Seq, src: Tensor, src_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Like `Seq2Seq.encode`, but the memory may be shorter: its bias masks dead slots and, with
    proportional attention, adds log(size) so the decoder attends to a merged token as to all of its
    originals."""
    if src_mask is None:
        src_mask = src != self.config.pad_id
    memory = self.encoder(src, src_mask)
    red: TokenReducer = getattr(self, STATE)
    if not red.changed:
        return memory, padding_bias(src_mask, memory.dtype)
    return memory, red.bias


def reference_site(model: nn.Module, family: str) -> TokenSite | None:
    """The `TokenSite` of a reference model (by its family's name), or None if it is not one."""
    # depth counts the blocks present (prune-layers may have removed some the config still lists)
    if family == "reference-vit":
        c = model.config
        return TokenSite(len(model.blocks), c.n_patches + 1, 1, True, "cls", "keys")
    if family == "reference-encoder":
        return TokenSite(len(model.blocks), model.config.max_len, 0, False, "mean", "hidden")
    if family == "reference-seq2seq":
        return TokenSite(len(model.encoder.blocks), model.config.max_len, 0, False, "mean", "hidden")
    return None


def _bind(module: nn.Module, name: str, fn, red: TokenReducer) -> None:
    setattr(module, name, types.MethodType(fn, module))
    setattr(module, STATE, red)


def patch_reference(model: nn.Module, red: TokenReducer) -> None:
    """Swap in the reducing forward on this instance (its class and weights stay untouched)."""
    from ..families import family_of

    family = family_of(model, "token reduction").name
    if family == "reference-vit":
        _check_blocks(model.blocks)
        model._token_merges = red.static_plan(model.config.n_patches)  # every image: same tokens, class token kept
        _bind(model, "forward", _vit_forward, red)
    elif family == "reference-encoder":
        _check_blocks(model.blocks)
        _bind(model, "forward", _encoder_forward, red)
    elif family == "reference-seq2seq":
        _check_blocks(model.encoder.blocks)
        _bind(model.encoder, "forward", _encoder_forward, red)
        # BOS/EOS mark the sentence boundaries the decoder relies on: never merge them.
        model.encoder._token_protect_ids = (model.config.bos_id, model.config.eos_id)
        _bind(model, "encode", _seq2seq_encode, red)
    else:
        raise TypeError(type(model).__name__)


def _check_blocks(blocks: nn.ModuleList) -> None:
    from ..errors import SlimformerError

    for i, block in enumerate(blocks):
        if not isinstance(block, EncoderBlock) or not isinstance(block.attn, Attention):
            raise SlimformerError(f"token reduction: block {i} is a {type(block).__name__}, not the reference "
                                  "EncoderBlock it knows how to run; apply tome/token-prune before steps that "
                                  "replace whole blocks")


def unpatch(model: nn.Module) -> nn.Module:
    """Undo any token-reduction patch on `model` and its submodules: the instance is exactly as before."""
    for module in model.modules():
        if STATE not in vars(module):
            continue
        for name in (*PATCHED_METHODS, LAYER, "_token_protect_ids", "_token_merges", PLANS):
            if name in vars(module):
                delattr(module, name)
        delattr(module, STATE)
    return model


def reducer_of(model: nn.Module) -> TokenReducer | None:
    """The TokenReducer patched into `model` (or its HF base model), if any."""
    for module in (model, getattr(model, "base_model", None)):
        if module is not None and STATE in vars(module):
            return vars(module)[STATE]
    return None


def token_sizes(model: nn.Module) -> Tensor | None:
    """Sizes `[B, T']` of the tokens the last forward of a patched `model` returned (how many original
    tokens each stands for; 0 = padding), or None if the model is not patched. A size-weighted mean
    over these tokens equals the plain mean over the original tokens."""
    red = reducer_of(model)
    return None if red is None else red.size
