"""Autoregressive generation for `Seq2Seq` (and a lone `Decoder`): greedy and beam search.

Every function takes a padded source batch and returns plain token lists (no BOS, no EOS, no pad), so
batched and one-at-a-time calls are directly comparable.

Three ways to run the decoder, one loop for each search (`_Decoding` below):
- no cache (`use_cache=False`): the whole prefix every step, O(time^2) work; the reference that the
  cached paths must match token for token, and the baseline for the speed-up.
- growing cache (default): each layer's self-attention keys/values grow by `torch.cat` every step,
  the cross-attention keys/values of the encoder memory are computed once; rows that are done are
  dropped from the batch with `LayerCache.select`, the same call beam search uses to reorder beams.
- static cache (`static=True`, gpt-fast style): keys/values preallocated for every position and
  written in place at the step's position; the memory is padded to the model's full length, and
  finished rows keep running (masked, their tokens ignored) instead of being dropped, so every step
  has the same shapes. That is what lets `compiled=True` compile the decode step once
  (`torch.compile(fullgraph=True, dynamic=False)`): one graph per batch size, none as the sequence
  grows (`compiled_graphs` counts them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import SlimformerError
from .models.attention import masked_value
from .models.blocks import LayerCache
from .models.decoder import Decoder
from .models.seq2seq import Seq2Seq


def _check(model: Seq2Seq, src: Tensor, max_new_tokens: int | None) -> int:
    """Validate the source `[batch, source]` and return how many tokens may be generated."""
    limit = model.config.max_len - 1  # position 0 holds BOS
    if src.ndim != 2 or src.shape[0] == 0 or src.shape[1] == 0:
        raise SlimformerError(f"source must be a non-empty [batch, tokens] tensor, got shape {tuple(src.shape)}")
    if src.shape[1] > model.config.max_len:
        raise SlimformerError(f"source has {src.shape[1]} tokens but the model has {model.config.max_len} "
                              "positions; truncate it first")
    if max_new_tokens is None:
        return limit
    if not 1 <= max_new_tokens <= limit:
        raise SlimformerError(f"max_new_tokens must be in 1..{limit} for this model, got {max_new_tokens}")
    return max_new_tokens


Decode = Callable[..., Tensor]


def decode_step(decoder: Decoder, tokens: Tensor, pos: Tensor, cache: list[LayerCache],
                memory_bias: Tensor | None) -> Tensor:
    """One step on a static cache: `tokens` `[batch, 1]` at position `pos` `[1]` -> last logits
    `[batch, vocab]` (fp32). The function that `compiled=True` compiles."""
    logits, _ = decoder(tokens, None, memory_bias, cache, pos)
    return logits[:, -1].float()


_COMPILED: dict[object, Decode] = {}


def compiled_step(backend: str | Callable = "inductor") -> Decode:
    """`decode_step` compiled once per backend: full graph, static shapes (a new batch size or cache
    length is a new graph, a new position is not). Inductor freezes the weights (constants it may
    fold and prepack), which needs the no-grad mode generation runs in."""
    if backend not in _COMPILED:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        options = {"freezing": True} if backend == "inductor" else None
        _COMPILED[backend] = torch.compile(decode_step, fullgraph=True, dynamic=False, backend=backend,
                                           options=options)
    return _COMPILED[backend]


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (all functions): a decode that adds one per
    batch size, and none per step, compiled once."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _pad_memory(memory: Tensor, bias: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Pad the encoder memory `[batch, source, d]` and its bias to `length` positions, the extra keys
    masked: cross-attention then has one shape whatever the source length (same result)."""
    extra = length - memory.shape[1]
    if extra <= 0:
        return memory, bias
    memory = torch.cat([memory, memory.new_zeros(memory.shape[0], extra, memory.shape[2])], dim=1)
    pad = bias.new_full((*bias.shape[:-1], extra), masked_value(bias.dtype))
    return memory, torch.cat([bias, pad], dim=-1)


class _Decoding:
    """Decoder state for a batch of rows: `step(tokens [rows, 1]) -> logits [rows, vocab]` of the last
    position, `keep(index)` reorders (beam search) or, unless `static`, subsets the rows."""

    static = False

    def __init__(self, model: Seq2Seq, memory: Tensor, memory_bias: Tensor):
        self.model, self.memory, self.memory_bias = model, memory, memory_bias

    def keep(self, index: Tensor) -> None:
        self.memory, self.memory_bias = self.memory[index], self.memory_bias[index]


class _NoCache(_Decoding):
    def __init__(self, model: Seq2Seq, memory: Tensor, memory_bias: Tensor):
        super().__init__(model, memory, memory_bias)
        self.prefix = torch.zeros(memory.shape[0], 0, dtype=torch.long, device=memory.device)

    def step(self, tokens: Tensor) -> Tensor:
        self.prefix = torch.cat([self.prefix, tokens], dim=1)
        return self.model.decode(self.prefix, self.memory, self.memory_bias)[0][:, -1]

    def keep(self, index: Tensor) -> None:
        super().keep(index)
        self.prefix = self.prefix[index]


class _GrowingCache(_Decoding):
    cache: list[LayerCache] | None = None

    def step(self, tokens: Tensor) -> Tensor:
        logits, self.cache = self.model.decode(tokens, self.memory, self.memory_bias, self.cache)
        return logits[:, -1]

    def keep(self, index: Tensor) -> None:
        super().keep(index)
        self.cache = [layer.select(index) for layer in self.cache]


class _StaticCache(_Decoding):
    static = True

    def __init__(self, model: Seq2Seq, memory: Tensor, memory_bias: Tensor, fn: Decode):
        length = model.config.max_len
        memory, memory_bias = _pad_memory(memory, memory_bias, length)
        super().__init__(model, memory, memory_bias)
        self.cache = model.decoder.static_cache(memory.shape[0], length, memory)
        self.fn, self.pos = fn, 0

    def step(self, tokens: Tensor) -> Tensor:
        pos = torch.tensor([self.pos], device=tokens.device)  # a tensor: a new position is no new graph
        self.pos += 1
        return self.fn(self.model.decoder, tokens, pos, self.cache, self.memory_bias)

    def keep(self, index: Tensor) -> None:
        self.memory_bias = self.memory_bias[index]
        self.cache = [layer.select(index) for layer in self.cache]


def _start(model: Seq2Seq, src: Tensor, src_mask: Tensor | None, expand: int, use_cache: bool, static: bool,
           compiled: bool | str | Callable) -> _Decoding:
    """Encode the source (each row repeated `expand` times, for beams) and set up the decoder state."""
    if compiled and not static:
        raise SlimformerError("compiled=True needs static=True: only a static cache has fixed shapes")
    if static and not use_cache:
        raise SlimformerError("static=True is a cache: it cannot be combined with use_cache=False")
    memory, memory_bias = model.encode(src, src_mask)
    if expand > 1:
        rows = torch.arange(src.shape[0], device=src.device).repeat_interleave(expand)
        memory, memory_bias = memory[rows], memory_bias[rows]
    if static:
        fn = compiled_step("inductor" if compiled is True else compiled) if compiled else decode_step
        return _StaticCache(model, memory, memory_bias, fn)
    return (_GrowingCache if use_cache else _NoCache)(model, memory, memory_bias)


@torch.inference_mode()
def greedy(model: Seq2Seq, src: Tensor, max_new_tokens: int | None = None, use_cache: bool = True,
           src_mask: Tensor | None = None, static: bool = False,
           compiled: bool | str | Callable = False) -> list[list[int]]:
    """Greedy decoding of a padded source batch `[batch, source]` -> one token list per row.

    use_cache=False recomputes the full prefix each step (same result, O(time^2) work). static=True
    decodes on a preallocated cache, finished rows masked; compiled=True (or a torch.compile backend)
    runs its step compiled. All give the same tokens (fp32).
    """
    steps = _check(model, src, max_new_tokens)
    c = model.config
    state = _start(model, src, src_mask, 1, use_cache, static, compiled)
    batch = src.shape[0]
    out: list[list[int]] = [[] for _ in range(batch)]
    rows = list(range(batch))  # original row of each state row
    live = torch.ones(batch, dtype=torch.bool, device=src.device)
    tokens = torch.full((batch, 1), c.bos_id, dtype=torch.long, device=src.device)
    for _ in range(steps):
        token = state.step(tokens).argmax(-1)
        if state.static:  # a finished row keeps its place in the batch; what it computes is ignored
            token = token.masked_fill_(~live, c.eos_id)
        done = token == c.eos_id
        for r, t, d in zip(rows, token.tolist(), done.tolist(), strict=True):
            if not d:
                out[r].append(t)
        live &= ~done
        if not bool(live.any()):
            break
        if not state.static and bool(done.any()):  # drop finished rows: later steps pay for live ones only
            keep = (~done).nonzero().squeeze(1)
            rows, token, live = [rows[i] for i in keep.tolist()], token[keep], live[keep]
            state.keep(keep)
        tokens = token[:, None]
    return out


@torch.inference_mode()
def beam_search(model: Seq2Seq, src: Tensor, beam: int = 4, max_new_tokens: int | None = None,
                length_penalty: float = 1.0, src_mask: Tensor | None = None, static: bool = False,
                compiled: bool | str | Callable = False) -> list[list[int]]:
    """Beam search of a padded source batch `[batch, source]` -> the best token list per row.

    Hypotheses are ranked by log-probability / length**length_penalty. Each step keeps, per sentence,
    the `beam` best continuations that do not end; those that end go to the finished list, and a
    sentence stops when it has `beam` finished ones (or at the length limit). With beam=1 this is
    exactly greedy decoding. static / compiled as in `greedy`: a sentence that stops keeps its rows
    (dead beams) instead of leaving the batch.
    """
    if not 1 <= beam <= 64:
        raise SlimformerError(f"beam must be in 1..64, got {beam}")
    steps = _check(model, src, max_new_tokens)
    c = model.config
    batch, k = src.shape[0], beam
    state = _start(model, src, src_mask, k, True, static, compiled)
    # Row b*k + j of block b holds beam j of sentence blocks[b]; growing caches drop stopped blocks.
    blocks = list(range(batch))
    live = set(blocks)
    scores = torch.zeros(batch, k, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((batch * k, 1), c.bos_id, dtype=torch.long, device=src.device)
    hyps: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(batch)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]

    def norm(score: float, length: int) -> float:
        return score / max(length, 1) ** length_penalty

    for step in range(steps):
        logp = torch.log_softmax(state.step(tokens).float(), dim=-1)  # [blocks*k, vocab]
        vocab = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).reshape(len(blocks), k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=-1)  # 2k: room for k that do not end
        next_rows, next_tokens, next_scores, still = [], [], [], []
        for i, b in enumerate(blocks):
            kept = _extend(b, top_scores[i].tolist(), top_idx[i].tolist(), k, vocab, c.eos_id, hyps, finished, norm) \
                if b in live else []
            if kept and step == steps - 1:  # length limit: the live beams count as finished
                finished[b].extend((norm(s, len(hyps[b][j]) + 1), hyps[b][j] + [t]) for j, t, s in kept)
                kept = []
            if kept:
                kept += [(kept[0][0], kept[0][1], float("-inf"))] * (k - len(kept))  # pad with dead beams
                still.append(b)
                hyps[b] = [hyps[b][j] + [t] for j, t, _ in kept]
            elif state.static:  # stopped: its rows stay, running dead beams
                kept = [(j, c.eos_id, float("-inf")) for j in range(k)]
            else:
                continue
            next_rows += [i * k + j for j, _, _ in kept]
            next_tokens += [t for _, t, _ in kept]
            next_scores += [s for _, _, s in kept]
        if not still:
            break
        state.keep(torch.tensor(next_rows, device=src.device))
        tokens = torch.tensor(next_tokens, device=src.device)[:, None]
        live = set(still)
        blocks = blocks if state.static else still
        scores = torch.tensor(next_scores, device=src.device).reshape(len(blocks), k)
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def _extend(b: int, top_scores: list[float], top_idx: list[int], k: int, vocab: int, eos: int,
            hyps: list[list[list[int]]], finished: list[list[tuple[float, list[int]]]],
            norm: Callable[[float, int], float]) -> list[tuple[int, int, float]]:
    """Sentence `b`'s step: endings among the k best candidates go to `finished[b]`; returns up to k
    (beam, token, score) continuations that do not end, or none if the sentence has stopped."""
    kept: list[tuple[int, int, float]] = []
    for rank, (s, idx) in enumerate(zip(top_scores, top_idx, strict=True)):
        j, t = divmod(idx, vocab)
        if t == eos:
            if rank < k and s > float("-inf"):  # an ending only counts among the k best
                finished[b].append((norm(s, len(hyps[b][j]) + 1), hyps[b][j]))
        elif s > float("-inf"):
            kept.append((j, t, s))
        if len(kept) == k:
            break
    return [] if len(finished[b]) >= k else kept


@torch.inference_mode()
def lm_greedy(decoder: Decoder, prompt: Tensor, new_tokens: int, static: bool = False,
              compiled: bool | str | Callable = False) -> Tensor:
    """Greedy continuation of equal-length prompts `[batch, prompt]` by a lone `Decoder` (a language
    model, no end token): exactly `new_tokens` more each -> `[batch, new_tokens]`. The prompt is one
    eager pass; with `static`, each new token is one (optionally compiled) `decode_step`."""
    if prompt.ndim != 2 or prompt.numel() == 0:
        raise SlimformerError(f"prompt must be a non-empty [batch, tokens] tensor, got shape {tuple(prompt.shape)}")
    total = prompt.shape[1] + new_tokens
    if new_tokens < 1 or total > decoder.config.max_len:
        raise SlimformerError(f"new_tokens must be in 1..{decoder.config.max_len - prompt.shape[1]} for a "
                              f"{prompt.shape[1]}-token prompt, got {new_tokens}")
    if compiled and not static:
        raise SlimformerError("compiled=True needs static=True: only a static cache has fixed shapes")
    fn = (compiled_step("inductor" if compiled is True else compiled) if compiled else decode_step)
    cache = decoder.static_cache(prompt.shape[0]) if static else None
    pos = torch.arange(prompt.shape[1], device=prompt.device) if static else None
    logits, grown = decoder(prompt, cache=cache, pos=pos)
    token = logits[:, -1].argmax(-1, keepdim=True)
    out = [token]
    for t in range(prompt.shape[1], total - 1):
        if static:
            token = fn(decoder, token, torch.tensor([t], device=prompt.device), cache, None).argmax(-1, keepdim=True)
        else:
            logits, grown = decoder(token, cache=grown)
            token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token)
    return torch.cat(out, dim=1)


def pad_batch(sequences: list[list[int]], pad_id: int) -> Tensor:
    """Right-pad token lists into `[batch, longest]` (long)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def hf_greedy(model, inputs: dict[str, Tensor], new_tokens: int, static: bool = False,
              compiled: bool | str = False) -> Tensor:
    """Greedy decoding of a Hugging Face decoder or seq2seq model (GPT-2, Llama, Marian, BART, T5,
    Whisper) through transformers' own `generate`: exactly `new_tokens` new tokens per row (the end
    token is held off, so every path does the same work) -> `[batch, new_tokens]`.

    static=True: transformers' `StaticCache` (preallocated, written at `cache_position`); compiled=True
    (or a backend name) also compiles the decoding forward once with fullgraph=True and static shapes,
    which transformers does itself on GPUs only unless told (`CompileConfig._compile_all_devices`).
    """
    from transformers import CompileConfig

    if compiled and not static:
        raise SlimformerError("compiled=True needs static=True: only a static cache has fixed shapes")
    kwargs: dict = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                    "num_beams": 1}
    if static:
        kwargs["cache_implementation"] = "static"
    if compiled:
        inductor = compiled in (True, "inductor")  # torch.compile takes a mode or options, not both
        config = CompileConfig(fullgraph=True, dynamic=False, mode=None if inductor else "default",
                               backend="inductor" if compiled is True else compiled,
                               options={"freezing": True} if inductor else None)
        config._compile_all_devices = True  # transformers' switch for compiling on a CPU
        kwargs["compile_config"] = config
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    else:
        kwargs["disable_compile"] = True
    with torch.inference_mode():
        out = model.generate(**inputs, **kwargs)
    return out[:, -new_tokens:]
