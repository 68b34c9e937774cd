"""English speech recognition with Whisper: held-out Bible sentences spoken by espeak-ng (clean + noisy).

Metric: word error rate (and character error rate) after Whisper's English text normalization
(transformers' `EnglishTextNormalizer`, the one the Whisper paper scores with; no British->American
spelling map ships offline, so that one table is empty), computed by `jiwer` over the whole set.
`word_accuracy` = 1 - mean(WER clean, WER noisy) is the single higher-is-better number the search
ranks by; a drop of 0.005 in it is half a WER point.

Decoding is Whisper's greedy recipe, as CTranslate2 runs it with `beam_size=1`: prompt
`<|startoftranscript|><|notimestamps|>`, the model's suppressed tokens at every step and its
begin-suppressed ones (blank, end of text) at the first, up to 448 positions, on the 30 s log-mel
window. The decoder runs on a key/value cache, one token per step; rows that end leave the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data import speech as data
from ..errors import SlimformerError

log = logging.getLogger(__name__)

SAMPLE_RATE = data.SAMPLE_RATE
WINDOW_SECONDS = 30.0
BATCH = 8


@cache
def tokenizer():
    """The Whisper tokenizer of the packaged tiny.en (offline, from its tokenizer.json)."""
    from transformers import WhisperTokenizerFast

    from ..models.whisper_ct2 import packaged_dir

    eot = "<|endoftext|>"
    return WhisperTokenizerFast(tokenizer_file=str(packaged_dir() / "tokenizer.json"), unk_token=eot,
                                bos_token=eot, eos_token=eot, pad_token=eot)


@cache
def feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)


@cache
def normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def check_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Mono float32 16 kHz audio that fits one Whisper window, or one clear error naming `name`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise SlimformerError(f"{name}: audio must be mono [samples], got shape {audio.shape}")
    if audio.size == 0:
        raise SlimformerError(f"{name}: audio is empty (0 samples)")
    if not np.isfinite(audio).all():
        raise SlimformerError(f"{name}: audio holds NaN/Inf samples")
    seconds = audio.size / SAMPLE_RATE
    if seconds > WINDOW_SECONDS:
        raise SlimformerError(f"{name}: audio is {seconds:.1f} s long; at most {WINDOW_SECONDS:.0f} s "
                              "(one Whisper window) is supported: split it first")
    return audio


def features(audios: Sequence[np.ndarray]) -> Tensor:
    """Log-mel features `[B, 80, 3000]` of 16 kHz clips, each padded to the 30 s window."""
    out = feature_extractor()([check_audio(a) for a in audios], sampling_rate=SAMPLE_RATE, return_tensors="np")
    return torch.from_numpy(out["input_features"])


def _suppress_masks(model: nn.Module) -> tuple[Tensor, Tensor]:
    cfg = model.config
    vocab = model.proj_out.out_features
    always = torch.zeros(vocab, dtype=torch.bool)
    always[[i for i in (cfg.suppress_tokens or []) if i < vocab]] = True
    begin = always.clone()
    begin[[i for i in (cfg.begin_suppress_tokens or []) if i < vocab]] = True
    return always, begin


def prompt(model: nn.Module) -> list[int]:
    cfg = model.config
    return [cfg.decoder_start_token_id, getattr(cfg, "no_timestamps_token_id", 50362)]


@torch.inference_mode()
def greedy(model: nn.Module, feats: Tensor, max_length: int | None = None, lean: bool = True) -> list[list[int]]:
    """Greedy token ids (prompt and end-of-text removed) for log-mel features `[B, 80, frames]`.

    lean: decode with `whisper_decode.LeanDecoder` (same modules, own KV buffers); False runs the
    transformers decoder forward with its cache, the reference the lean loop must match.
    """
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from ..models.whisper_decode import LeanDecoder

    cfg = model.config
    max_length = max_length or cfg.max_target_positions
    # the encoder is called directly (not through the model's forward, where the bf16 step casts its
    # inputs), so the features take the weights' dtype here; logits come back as fp32 either way
    encoder = model.model.encoder
    memory = encoder(input_features=feats.to(encoder.conv1.weight.dtype)).last_hidden_state
    always, begin = _suppress_masks(model)
    batch = feats.shape[0]
    step_input = torch.tensor([prompt(model)] * batch)
    if lean:
        state = LeanDecoder(model, memory, max_length)
        forward, select = state.step, state.select
    else:
        hf_cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        kept = {"memory": memory}

        def forward(ids: Tensor) -> Tensor:
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=kept["memory"], cache=hf_cache,
                                         use_cache=True).last_hidden_state
            return model.proj_out(hidden[:, -1]).float()

        def select(rows: Tensor) -> None:
            kept["memory"] = kept["memory"][rows]
            hf_cache.reorder_cache(rows)
    out: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.arange(batch)
    for step in range(max_length - step_input.shape[1]):
        logits = forward(step_input)
        logits[:, begin if step == 0 else always] = -torch.inf
        nxt = logits.argmax(-1)
        done = nxt == cfg.eos_token_id
        for r, t, d in zip(rows.tolist(), nxt.tolist(), done.tolist(), strict=True):
            if not d:
                out[r].append(t)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows, nxt = rows[keep], nxt[keep]
            select(keep)
        step_input = nxt[:, None]
    return out


def decode(ids: Sequence[Sequence[int]]) -> list[str]:
    return [t.strip() for t in tokenizer().batch_decode(ids, skip_special_tokens=True)]


def transcribe(model: nn.Module, audios: Sequence[np.ndarray], batch: int = BATCH,
               max_length: int | None = None, lean: bool = True) -> list[str]:
    """One transcript per 16 kHz mono clip (<= 30 s each), greedy, in batches of `batch`."""
    model.eval()
    texts: list[str] = []
    for i in range(0, len(audios), batch):
        texts += decode(greedy(model, features(audios[i:i + batch]), max_length, lean))
    return texts


# The World English Bible writes typographic quotes ("don’t"); Whisper's normalizer knows only ASCII
# apostrophes and would split "don’t" into "don t" while the model's "don't" becomes "do not".
_ASCII_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER after Whisper's English normalization (empty references are skipped)."""
    import jiwer

    norm = normalizer()
    pairs = [(norm(r.translate(_ASCII_QUOTES)), norm(h.translate(_ASCII_QUOTES)))
             for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise SlimformerError("no non-empty reference transcripts to score")
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def evaluate(model: nn.Module, n: int | None = None, batch: int = BATCH) -> dict[str, float]:
    """WER / CER of `model` on the clean and the noisy test clips (`n` clips each, default all 320)."""
    clean = data.load("test", n)
    results: dict[str, float] = {}
    for name, clips in (("clean", clean), ("noisy", data.noisy(clean))):
        hyps = transcribe(model, [c.audio for c in clips], batch)
        for metric, value in error_rates([c.text for c in clips], hyps).items():
            results[f"{metric}_{name}"] = value
    for name in ("clean", "noisy"):
        results[f"word_accuracy_{name}"] = 1 - results[f"wer_{name}"]
    results["word_accuracy"] = 1 - (results["wer_clean"] + results["wer_noisy"]) / 2
    return results


# Metrics that must each stay within a search's budget, not only the mean (`word_accuracy`): a recipe
# that gains on noisy audio must not buy that with clean-audio WER (int8 on the whole of Whisper did).
GUARDED = ("word_accuracy_clean", "word_accuracy_noisy")
SCREEN_CLIPS = 96  # test clips (each clean and noisy) a search scores a candidate on
WORKLOAD_CLIPS = 2  # dev clips one timed search call transcribes


def screen(model: nn.Module) -> dict[str, float]:
    """The metrics on the first SCREEN_CLIPS test clips: what `slimformer search` ranks candidates by,
    since scoring every candidate on all 640 clips would take most of a search's time."""
    return evaluate(model, n=SCREEN_CLIPS)


def workload(model: nn.Module) -> Callable[[], list[str]]:
    """One timed call in `slimformer search`: dev clips transcribed one at a time (batch 1, greedy).
    A forward on example inputs would time one decoder step on the full window, which measures
    neither the trimmed encoder nor the token-by-token decoding that make up a transcription."""
    audios = [c.audio for c in data.load("dev")[:WORKLOAD_CLIPS]]
    return lambda: [transcribe(model, [a], batch=1)[0] for a in audios]


def calibration(n: int = 16, batch: int = 8) -> Iterator[tuple]:
    """(input_features, None, decoder_input_ids) batches from held-out dev clips (never the test books):
    the decoder is teacher-forced on the reference transcript, so both stacks see real activations."""
    clips = data.load("dev")[:max(n, 1)]
    tok = tokenizer()
    start, eot = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"]), tok.eos_token_id
    for i in range(0, len(clips), batch):
        part = clips[i:i + batch]
        ids = [[*start, *tok.encode(" " + c.text, add_special_tokens=False), eot][:448] for c in part]
        width = max(map(len, ids))
        dec = torch.tensor([x + [eot] * (width - len(x)) for x in ids])
        yield (features([c.audio for c in part]), None, dec)


def read_audio(path: str | Path) -> np.ndarray:
    """A wav/flac/ogg file as float32 16 kHz mono (channels averaged, resampled by `data.resample`);
    anything unreadable, empty or longer than one window is one clear error naming the file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise SlimformerError(f"{path}: no such audio file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise SlimformerError(f"{path}: not a readable audio file (wav, flac, ogg): {str(e).splitlines()[0]}") from e
    if audio.shape[0] == 0:
        raise SlimformerError(f"{path}: audio is empty (0 samples)")
    if audio.shape[0] / rate > WINDOW_SECONDS:
        raise SlimformerError(f"{path}: audio is {audio.shape[0] / rate:.1f} s long; at most "
                              f"{WINDOW_SECONDS:.0f} s (one Whisper window) is supported: split it first")
    return check_audio(data.resample(audio.mean(axis=1), rate), str(path))
