"""English -> Spanish translation on real Bible verses (WEB 2015 -> Reina-Valera 1909), held-out books.

The tokenizer is one byte-level BPE vocabulary shared by both languages (so the tied embedding serves
source, target and output), trained on the training books only. Byte-level means every character has
an encoding: unknown characters become byte tokens instead of an error or a silent <unk>.

Sequences: source = tokens + EOS, decoder input = BOS + tokens, decoder target = tokens + EOS. A source
longer than the model's positions is truncated (documented in `encode_sources`); the metric is
sacrebleu BLEU / chrF of greedy (or beam) output on the test books of `data.bible`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import atomic, io, paths
from ..data import bible
from ..errors import SlimformerError
from ..generate import beam_search, greedy, pad_batch
from ..models import build_model
from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
from .training import progress_bar

log = logging.getLogger(__name__)

VOCAB_SIZE = 8000
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 = Seq2SeqConfig pad/bos/eos
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CACHE = "translation-tokenizer-v1.json"
DEFAULT_OUT = "translation-s2s"
# Sized for 45 minutes on 2 CPU cores: ~2,500-4,000 target tokens/s on a quiet machine, i.e. about 7-10
# passes over the 29k training pairs. At that compute a narrow model learns faster than a wide one, and
# the 8k-vocabulary output layer is already half the cost. It underfits, so no dropout; label smoothing stays.
MODEL_CONFIG = Seq2SeqConfig(vocab_size=VOCAB_SIZE, max_len=128, d_model=128, n_enc_layers=3, n_dec_layers=2,
                             n_heads=4, d_ff=512, dropout=0.0)


# --- tokenizer ---------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE over `texts` (both languages), specials first so their ids are 0, 1, 2."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def tokenizer(data_dir: str | Path | None = None):
    """The task's tokenizer, trained once on the training books and cached (deterministic)."""
    from tokenizers import Tokenizer

    path = paths.cache_dir() / TOKENIZER_CACHE
    if path.exists():
        return Tokenizer.from_file(str(path))
    train = bible.split_pairs(bible.load_pairs(data_dir))["train"]
    tok = train_tokenizer([p.en for p in train] + [p.es for p in train])
    atomic.write_text(path, tok.to_str())
    return tok


def load_tokenizer(model_dir: str | Path | None):
    """The tokenizer saved in a model dir, else the task's canonical one."""
    from tokenizers import Tokenizer

    if model_dir is not None and (Path(model_dir) / TOKENIZER_FILE).exists():
        return Tokenizer.from_file(str(Path(model_dir) / TOKENIZER_FILE))
    return tokenizer()


def encode_sources(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """Source ids (+ EOS) per text; a text longer than `max_len` positions keeps its first
    `max_len - 1` tokens (then EOS): truncation, logged, never an error."""
    eos = tok.token_to_id("</s>")
    out = []
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        ids = enc.ids
        if len(ids) > max_len - 1:
            log.warning("source of %d tokens truncated to the model's %d positions: %.40r...",
                        len(ids) + 1, max_len, text)
            ids = ids[:max_len - 1]
        out.append(ids + [eos])
    return out


def check_tokenizer(model: nn.Module, tok) -> Seq2Seq:
    if not isinstance(model, Seq2Seq):
        raise SlimformerError(f"the translation task needs a seq2seq model, got {type(model).__name__}")
    if tok.get_vocab_size() != model.config.vocab_size:
        raise SlimformerError(f"tokenizer has {tok.get_vocab_size()} tokens but the model's vocabulary is "
                              f"{model.config.vocab_size}: not a model trained for this task")
    return model


def translate(model: Seq2Seq, tok, texts: list[str], beam: int = 1, batch: int = 32,
              compiled: bool | str = False) -> list[str]:
    """Translate `texts` (any length, any characters); empty texts give empty translations.

    Sources are sorted by length so each padded batch wastes little; the output keeps input order.
    compiled=True decodes on the static cache with the step compiled (same tokens; pays off past a
    few hundred sentences, as compiling takes tens of seconds): a short last batch is filled up with
    copies of its first source, so one graph serves every batch.
    """
    check_tokenizer(model, tok)
    model.eval()
    out = [""] * len(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    srcs = encode_sources(tok, [texts[i] for i in todo], model.config.max_len)
    order = sorted(range(len(todo)), key=lambda j: len(srcs[j]))
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        rows = [srcs[j] for j in chunk]
        if compiled and len(order) > batch:
            rows += [rows[0]] * (batch - len(rows))
        src = pad_batch(rows, model.config.pad_id)
        ids = (greedy(model, src, static=compiled, compiled=compiled) if beam == 1
               else beam_search(model, src, beam=beam, static=compiled, compiled=compiled))
        for j, seq in zip(chunk, ids, strict=False):
            out[todo[j]] = tok.decode(seq, skip_special_tokens=True).strip()
    return out


# --- data ---------------------------------------------------------------------------------------------

def encoded_split(split: str, tok, max_len: int, limit: int | None = None,
                  data_dir: str | Path | None = None) -> list[tuple[list[int], list[int]]]:
    """(source ids + EOS, target ids) for the (first `limit`) pairs of `split` that fit `max_len` positions
    on both sides."""
    pairs = bible.split_pairs(bible.load_pairs(data_dir))[split][:limit]
    eos = tok.token_to_id("</s>")
    src = tok.encode_batch([p.en for p in pairs], add_special_tokens=False)
    tgt = tok.encode_batch([p.es for p in pairs], add_special_tokens=False)
    return [(s.ids + [eos], t.ids) for s, t in zip(src, tgt, strict=True)
            if len(s.ids) + 1 <= max_len and len(t.ids) + 1 <= max_len]


def token_batches(data: list[tuple[list[int], list[int]]], max_tokens: int, seed: int, config: Seq2SeqConfig):
    """epoch -> batches of ((src, tgt_in), tgt_out), similar lengths together, at most `max_tokens`
    padded target tokens each; order is shuffled per epoch and reproducible from `seed`."""

    def batches_of(epoch: int) -> list[list[int]]:
        rng = random.Random(seed * 1000 + epoch)
        idx = list(range(len(data)))
        rng.shuffle(idx)
        out = []
        for c in range(0, len(idx), 4096):  # sort within large chunks: similar lengths, still random
            chunk = sorted(idx[c:c + 4096], key=lambda i: (len(data[i][1]), len(data[i][0])))
            batch: list[int] = []
            longest = 0
            for i in chunk:
                longest_new = max(longest, len(data[i][1]) + 1, len(data[i][0]))
                if batch and longest_new * (len(batch) + 1) > max_tokens:
                    out.append(batch)
                    batch, longest_new = [], max(len(data[i][1]) + 1, len(data[i][0]))
                batch.append(i)
                longest = longest_new
            if batch:
                out.append(batch)
        rng.shuffle(out)
        return out

    def epoch_batches(epoch: int) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        for b in batches_of(epoch):
            src = pad_batch([data[i][0] for i in b], config.pad_id)
            tgt_in = pad_batch([[config.bos_id] + data[i][1] for i in b], config.pad_id)
            tgt_out = pad_batch([data[i][1] + [config.eos_id] for i in b], config.pad_id)
            yield (src, tgt_in), tgt_out

    return epoch_batches, len(batches_of(0))


def token_loss(label_smoothing: float, pad_id: int):
    """Cross-entropy over real target tokens, with label smoothing; counts tokens for the progress bar."""

    def loss_fn(logits: Tensor, targets: Tensor) -> tuple[Tensor, int, int]:
        mask = targets != pad_id
        loss = nn.functional.cross_entropy(logits[mask], targets[mask], label_smoothing=label_smoothing)
        return loss, int((logits[mask].argmax(-1) == targets[mask]).sum()), int(mask.sum())

    return loss_fn


def init_weights(model: Seq2Seq) -> None:
    """Small-normal init: the tied embedding doubles as the output layer, and PyTorch's default N(0, 1)
    embedding would start with logits of std ~sqrt(d_model)."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.02 if "emb" not in name else model.config.d_model ** -0.5)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


# --- task interface -------------------------------------------------------------------------------------

def lr_at(progress: float, step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up over the first steps, then cosine decay to 0 over the *time* budget (progress 0..1)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(out: str | Path | None = None, epochs: int = 100, seed: int = 0, minutes: float = 45.0,
          lr: float = 2.5e-3, max_tokens: int = 1500, label_smoothing: float = 0.1,
          config: Seq2SeqConfig | None = None, limit: int | None = None, checkpoint_minutes: float = 5.0,
          warmup_steps: int = 100, tok=None, data_dir: str | Path | None = None) -> nn.Module:
    """Train the Seq2Seq translator from scratch on the training books for `minutes` of wall time
    (or `epochs`, whichever ends first).

    The learning-rate schedule follows elapsed time, not steps, so the run decays properly and ends on
    time whatever the CPU's speed or load. A model dir (with tokenizer.json) is written atomically every
    `checkpoint_minutes` and at the end: stopping the run keeps the last checkpoint. `limit` trains on
    the first N pairs only and `tok` replaces the task's tokenizer (smoke tests). `data_dir`: a SWORD
    data path instead of the Debian packages' (see `data.bible.load_pairs`).
    """
    if minutes <= 0 or epochs < 1:
        raise SlimformerError(f"minutes must be > 0 and epochs >= 1, got {minutes} and {epochs}")
    config = config or MODEL_CONFIG
    tok = tok or tokenizer(data_dir)
    if tok.get_vocab_size() != config.vocab_size:
        raise SlimformerError(f"config vocab_size {config.vocab_size} != tokenizer's {tok.get_vocab_size()}")
    data = encoded_split("train", tok, config.max_len, limit, data_dir)
    torch.manual_seed(seed)
    model = build_model("seq2seq", config)
    init_weights(model)
    epoch_batches, steps_per_epoch = token_batches(data, max_tokens, seed, config)
    loss_fn = token_loss(label_smoothing, config.pad_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    budget = minutes * 60
    start = last_save = time.perf_counter()
    step, tokens, history = 0, 0, []

    def save(record: dict) -> None:
        if out is not None:
            io.save_model(model, out, extra={"task": "translation", "train": record},
                          files={TOKENIZER_FILE: tok.to_str().encode()})

    model.train()
    with progress_bar() as progress:
        bar = progress.add_task("train translation", total=budget, info="")
        for epoch in range(epochs):
            total, n_tok = 0.0, 0
            for inputs, targets in epoch_batches(epoch):
                elapsed = time.perf_counter() - start
                if elapsed >= budget:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(elapsed / budget, step, lr, warmup_steps)
                loss, _, n = loss_fn(model(*inputs), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step, tokens, total, n_tok = step + 1, tokens + n, total + loss.item() * n, n_tok + n
                now = time.perf_counter()
                progress.update(bar, completed=min(now - start, budget),
                                info=f"epoch {epoch + 1} step {step} loss {total / n_tok:.3f} "
                                     f"{tokens / (now - start):.0f} tok/s")
                if now - last_save >= checkpoint_minutes * 60:
                    model.eval()
                    save({"epochs": round(step / steps_per_epoch, 2), "steps": step,
                          "minutes": round((now - start) / 60, 2), "loss": round(total / n_tok, 4)})
                    model.train()
                    last_save = now
            history.append({"epoch": epoch + 1, "loss": total / max(n_tok, 1), "tokens": n_tok})
            log.info("epoch %d: loss %.4f, %d target tokens", epoch + 1, total / max(n_tok, 1), n_tok)
            if time.perf_counter() - start >= budget:
                break
    model.eval()
    minutes_used = (time.perf_counter() - start) / 60
    save({"steps": step, "target_tokens": tokens, "minutes": round(minutes_used, 2), "history": history,
          "steps_per_epoch": steps_per_epoch, "lr": lr, "max_tokens": max_tokens, "seed": seed})
    return model


@torch.inference_mode()
def evaluate(model: nn.Module, split: str = "test", beam: int = 1, limit: int | None = None,
             tok=None, data_dir: str | Path | None = None) -> dict[str, float]:
    """sacrebleu BLEU and chrF of the model's translations of the held-out `split` books."""
    import sacrebleu

    tok = tok or tokenizer(data_dir)
    check_tokenizer(model, tok)
    if split not in ("train", "dev", "test"):
        raise SlimformerError(f"split must be train, dev or test, got {split!r}")
    pairs = bible.split_pairs(bible.load_pairs(data_dir))[split][:limit]
    hyps = translate(model, tok, [p.en for p in pairs], beam=beam)
    refs = [p.es for p in pairs]
    return {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}


def calibration(n: int = 256, batch: int = 32) -> Iterator[tuple[Tensor, Tensor]]:
    """Training pairs (never held-out ones) as `(src, tgt_in)` model inputs, for steps that need data."""
    tok = tokenizer()
    c = MODEL_CONFIG
    data = encoded_split("train", tok, c.max_len)
    data = data[:: max(1, len(data) // n)][:n]
    for i in range(0, len(data), batch):
        chunk = data[i:i + batch]
        yield (pad_batch([s for s, _ in chunk], c.pad_id),
               pad_batch([[c.bos_id] + t for _, t in chunk], c.pad_id))

