"""English speech with exact transcripts: real sentences (World English Bible) spoken by espeak-ng.

Why synthesized: no real recorded English speech installs offline, but espeak-ng (Debian) speaks
any text, so the reference transcript is exact and the sentences are real ones from books held out
of every training split (`bible.TEST_BOOKS` for the test set, `bible.DEV_BOOKS` for calibration).
Clips cycle through voices and speeds (en-us / en-gb, 130-170 words per minute), so a compressed
model is not tuned to one voice. espeak writes 22.05 kHz; clips are resampled to Whisper's 16 kHz
with a polyphase filter (`scipy.signal.resample_poly`, 320/441). The noisy set is the clean set plus
white noise at a fixed SNR, seeded per clip, computed on load (it costs milliseconds).

Synthesis takes ~0.1 s of CPU a clip, so a set is built once, in parallel, and cached in the user
cache dir as safetensors (int16 audio concatenated, transcripts in the metadata). A file lock makes
a second process wait for the first one's cache instead of synthesizing the same set again.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic, paths
from ..errors import SlimformerError

log = logging.getLogger(__name__)

PACKAGE = "espeak-ng"
SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050
MAX_SECONDS = 29.0  # Whisper's window is 30 s; leave room for the conv stride at the end
VOICES: tuple[tuple[str, int], ...] = (("en-us", 140), ("en-gb", 150), ("en-us", 170),
                                       ("en-gb", 130), ("en-us", 130), ("en-gb", 160))
N_TEST = 320
N_CALIBRATION = 32
MIN_WORDS, MAX_WORDS = 6, 40
SNR_DB = 10.0
NOISE_SEED = 1234
VERSION = 1  # bump when synthesis or selection changes: it is part of the cache name


@dataclass(frozen=True)
class Clip:
    text: str
    voice: str
    speed: int
    audio: np.ndarray  # float32 mono at SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float audio with a polyphase anti-aliasing filter (exact rational ratio)."""
    from math import gcd

    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    if rate == target:
        return audio
    g = gcd(int(rate), int(target))
    return resample_poly(audio, target // g, int(rate) // g).astype(np.float32)


def _check_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SlimformerError(f"the `espeak-ng` program is missing; install: apt-get install {PACKAGE}")
    return exe


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """`text` spoken by espeak-ng with `voice` at `speed` words/min, as float32 16 kHz mono."""
    import soundfile as sf

    result = subprocess.run([_check_espeak(), "-v", voice, "-s", str(speed), "--stdout"], input=text.encode(),
                            capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SlimformerError(f"espeak-ng failed for voice {voice!r} (exit {result.returncode}): "
                              f"{result.stderr.decode(errors='replace').strip()[:200]}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return resample(audio if audio.ndim == 1 else audio.mean(1), rate)


def sentences(split: str, n: int) -> list[str]:
    """`n` verses of the held-out books of `split` ("test" or "dev"), evenly spaced, MIN..MAX words."""
    from .bible import split_pairs

    verses = [p.en for p in split_pairs()[split] if MIN_WORDS <= len(p.en.split()) <= MAX_WORDS]
    if len(verses) < n:
        raise SlimformerError(f"only {len(verses)} {split} verses of {MIN_WORDS}-{MAX_WORDS} words, asked for {n}")
    step = len(verses) / n
    return [verses[int(i * step)] for i in range(n)]


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


def build(texts: Sequence[str], workers: int | None = None) -> list[Clip]:
    """Speak every text (voice and speed cycling through `VOICES`), in parallel, with a progress bar."""
    _check_espeak()
    jobs = [(t, *VOICES[i % len(VOICES)]) for i, t in enumerate(texts)]
    workers = workers or min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    clips: list[Clip] = []
    with _progress() as bar, ThreadPoolExecutor(workers) as pool:  # espeak runs as a process: threads suffice
        task = bar.add_task("synthesizing speech", total=len(jobs))
        for (text, voice, speed), audio in zip(jobs, pool.map(lambda j: synthesize(*j), jobs), strict=True):
            if len(audio) / SAMPLE_RATE > MAX_SECONDS:
                raise SlimformerError(f"synthesized clip of {len(audio) / SAMPLE_RATE:.1f} s is longer than "
                                      f"{MAX_SECONDS} s: {text[:60]!r}")
            clips.append(Clip(text, voice, speed, audio))
            bar.advance(task)
    log.info("synthesized %d clips (%.0f s of audio) in %.1f s with %d workers", len(clips),
             sum(c.seconds for c in clips), time.perf_counter() - start, workers)
    return clips


def _to_bytes(clips: Sequence[Clip]) -> bytes:
    import torch
    from safetensors.torch import save

    pcm = np.concatenate([np.clip(np.round(c.audio * 32767), -32768, 32767).astype(np.int16) for c in clips])
    meta = {"version": str(VERSION), "texts": json.dumps([c.text for c in clips]),
            "voices": json.dumps([[c.voice, c.speed] for c in clips])}
    return save({"audio": torch.from_numpy(pcm), "lengths": torch.tensor([len(c.audio) for c in clips])}, meta)


def _from_file(path: Path) -> list[Clip]:
    from safetensors import safe_open

    try:
        with safe_open(path, "np") as f:
            meta = f.metadata() or {}
            pcm, lengths = f.get_tensor("audio"), f.get_tensor("lengths")
        texts, voices = json.loads(meta["texts"]), json.loads(meta["voices"])
    except Exception as e:  # a damaged cache is named, never trusted
        raise SlimformerError(f"{path}: unreadable speech cache ({type(e).__name__}); delete it to rebuild") from e
    if len(texts) != len(lengths) or len(voices) != len(lengths) or int(lengths.sum()) != len(pcm):
        raise SlimformerError(f"{path}: inconsistent speech cache; delete it to rebuild")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [Clip(t, v, int(s), pcm[a:b].astype(np.float32) / 32767)
            for t, (v, s), a, b in zip(texts, voices, bounds[:-1], bounds[1:], strict=True)]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached(name: str, texts: Sequence[str]) -> list[Clip]:
    """The clips of `texts`, synthesized once and cached as `<cache>/speech-<name>-v<VERSION>.safetensors`."""
    path = paths.cache_dir() / f"speech-{name}-v{VERSION}.safetensors"
    with _locked(path):
        if path.exists():
            clips = _from_file(path)
            if [c.text for c in clips] == list(texts):
                return clips
            log.info("%s holds other sentences; rebuilding it", path)
        clips = build(texts)
        atomic.write_bytes(path, _to_bytes(clips))
    return clips


_MEMO: dict[tuple[str, int], list[Clip]] = {}


def load(split: str = "test", n: int | None = None) -> list[Clip]:
    """The clean clips of a split: "test" (N_TEST clips) or "dev" (N_CALIBRATION, for calibration)."""
    if split not in ("test", "dev"):
        raise SlimformerError(f"speech split must be 'test' or 'dev', got {split!r}")
    n = n or (N_TEST if split == "test" else N_CALIBRATION)
    if (split, n) not in _MEMO:
        _MEMO[(split, n)] = cached(f"{split}-{n}", sentences(split, n))
    return _MEMO[(split, n)]


def add_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """`audio` plus white Gaussian noise at `snr_db` relative to the clip's mean power (seeded)."""
    power = float(np.mean(audio.astype(np.float64) ** 2)) or 1e-10
    noise = np.random.default_rng(seed).standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def noisy(clips: Sequence[Clip], snr_db: float = SNR_DB, seed: int = NOISE_SEED) -> list[Clip]:
    """The noisy counterpart of `clips`: same speech, fixed SNR, one fixed noise draw per clip."""
    return [Clip(c.text, c.voice, c.speed, add_noise(c.audio, snr_db, seed + i)) for i, c in enumerate(clips)]


if __name__ == "__main__":  # pragma: no cover - `python -m slimformer.data.speech` prebuilds the cache
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    load("dev")
    load("test")
