"""Autoregressive generation for `Seq2Seq`: greedy and beam search over the decoder's KV cache.

Every function takes a padded source batch and returns plain token lists (no BOS, no EOS, no pad), so
batched and one-at-a-time calls are directly comparable.

The cache (`Seq2Seq.decode(..., cache)`) holds each layer's self-attention keys/values and the
cross-attention keys/values of the encoder memory, so one step feeds one token per row and costs
O(time). `greedy(..., use_cache=False)` re-runs the whole prefix every step: the reference that the
cached path must match token for token, and the baseline for the speed-up. Rows that are done are
dropped from the batch with `LayerCache.select`, the same call beam search uses to reorder beams.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import SlimformerError
from .models.blocks import LayerCache
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


def _select(cache: list[LayerCache], index: Tensor) -> list[LayerCache]:
    return [layer.select(index) for layer in cache]


@torch.inference_mode()
def greedy(model: Seq2Seq, src: Tensor, max_new_tokens: int | None = None, use_cache: bool = True,
           src_mask: Tensor | None = None) -> list[list[int]]:
    """Greedy decoding of a padded source batch `[batch, source]` -> one token list per row.

    use_cache=False recomputes the full prefix each step (same result, O(time^2) work).
    """
    steps = _check(model, src, max_new_tokens)
    c = model.config
    memory, memory_bias = model.encode(src, src_mask)
    batch = src.shape[0]
    out: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.arange(batch)  # original row of each live row
    prefix = torch.full((batch, 1), c.bos_id, dtype=torch.long, device=src.device)
    cache: list[LayerCache] | None = None
    for _ in range(steps):
        if use_cache:
            logits, cache = model.decode(prefix[:, -1:], memory, memory_bias, cache)
        else:
            logits, _ = model.decode(prefix, memory, memory_bias)
        token = logits[:, -1].argmax(-1)
        done = token == c.eos_id
        for r, t, d in zip(rows.tolist(), token.tolist(), done.tolist(), strict=True):
            if not d:
                out[r].append(t)
        if bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows so later steps only pay for live ones
            keep = (~done).nonzero().squeeze(1)
            rows, token, prefix = rows[keep], token[keep], prefix[keep]
            memory, memory_bias = memory[keep], memory_bias[keep]
            if cache is not None:
                cache = _select(cache, keep)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
    return out


@torch.inference_mode()
def beam_search(model: Seq2Seq, src: Tensor, beam: int = 4, max_new_tokens: int | None = None,
                length_penalty: float = 1.0, src_mask: Tensor | None = None) -> list[list[int]]:
    """Beam search of a padded source batch `[batch, source]` -> the best token list per row.

    Hypotheses are ranked by log-probability / length**length_penalty. Each step keeps, per sentence,
    the `beam` best continuations that do not end; those that end go to the finished list, and a
    sentence stops when it has `beam` finished ones (or at the length limit). With beam=1 this is
    exactly greedy decoding.
    """
    if not 1 <= beam <= 64:
        raise SlimformerError(f"beam must be in 1..64, got {beam}")
    steps = _check(model, src, max_new_tokens)
    c = model.config
    memory, memory_bias = model.encode(src, src_mask)
    batch, k = src.shape[0], beam
    # Row b*k + j holds beam j of sentence b; the sentences still searching shrink as they finish.
    expand = torch.arange(batch, device=src.device).repeat_interleave(k)
    memory, memory_bias = memory[expand], memory_bias[expand]
    live = list(range(batch))  # sentence ids still searching, in row-block order
    scores = torch.zeros(batch, k, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((batch * k, 1), c.bos_id, dtype=torch.long, device=src.device)
    hyps: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(batch)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    cache: list[LayerCache] | None = None

    def norm(score: float, length: int) -> float:
        return score / max(length, 1) ** length_penalty

    for step in range(steps):
        logits, cache = model.decode(tokens, memory, memory_bias, cache)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # [live*k, vocab]
        vocab = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).reshape(len(live), k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=-1)  # 2k: room for k that do not end
        next_rows, next_tokens, next_scores, still = [], [], [], []
        new_hyps = []
        for i, b in enumerate(live):
            kept: list[tuple[int, int, float]] = []
            for rank, (s, idx) in enumerate(zip(top_scores[i].tolist(), top_idx[i].tolist(), strict=True)):
                j, t = divmod(idx, vocab)
                if t == c.eos_id:
                    if rank < k and s > float("-inf"):  # an ending only counts among the k best
                        finished[b].append((norm(s, len(hyps[b][j]) + 1), hyps[b][j]))
                elif s > float("-inf"):
                    kept.append((j, t, s))
                if len(kept) == k:
                    break
            if len(finished[b]) >= k or not kept:
                continue
            if step == steps - 1:  # length limit: the live beams count as finished
                finished[b].extend((norm(s, len(hyps[b][j]) + 1), hyps[b][j] + [t]) for j, t, s in kept)
                continue
            kept += [(kept[0][0], kept[0][1], float("-inf"))] * (k - len(kept))  # pad with dead beams
            still.append(b)
            new_hyps.append([hyps[b][j] + [t] for j, t, _ in kept])
            next_rows += [i * k + j for j, _, _ in kept]
            next_tokens += [t for _, t, _ in kept]
            next_scores += [s for _, _, s in kept]
        if not still:
            break
        for b, h in zip(still, new_hyps, strict=True):
            hyps[b] = h
        index = torch.tensor(next_rows, device=src.device)
        cache = _select(cache, index)
        memory, memory_bias = memory[index], memory_bias[index]
        tokens = torch.tensor(next_tokens, device=src.device)[:, None]
        scores = torch.tensor(next_scores, device=src.device).reshape(len(still), k)
        live = still
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def pad_batch(sequences: list[list[int]], pad_id: int) -> Tensor:
    """Right-pad token lists into `[batch, longest]` (long)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out
