"""Speech recognition systems as `benchmarks/speech.py` runs them, each built from a small picklable spec.

Why a spec: the benchmark times every system in a process of its own (`bench.isolated`), so the
worker must be able to build the system itself from a description, not receive a live model. The same
spec builds the in-process transcriber of the WER pass, so both passes run exactly the same system.

Systems (all greedy, `beam_size=1`, prompt without timestamps):
- `hf`: our converted model through transformers' decoder forward and its cache (the reference);
- `ours`: our model with a slimformer recipe ("" = plain fp32) through `whisper_decode.LeanDecoder`;
- `ct2`: CTranslate2's own `models.Whisper` on the model dir (option: compute type);
- `faster-whisper`: faster-whisper's `WhisperModel` (CTranslate2 inside, its own features), int8, no VAD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..api import compress_model
from ..models import whisper_ct2
from ..tasks import speech

Transcriber = Callable[[Sequence[np.ndarray]], list[str]]
KINDS = ("hf", "ours", "ct2", "faster-whisper")


@dataclass(frozen=True)
class AsrSystem:
    kind: str                 # one of KINDS
    model_dir: str            # a CTranslate2 Whisper dir (the packaged tiny.en, or the benchmark's tiny one)
    option: str = ""          # ours: the recipe; ct2: the compute type
    threads: int = 2
    batch: int = 1
    max_length: int = 448

    def build(self) -> Transcriber:
        """The transcriber, with torch's threads set for this process."""
        torch.set_num_threads(self.threads)
        if self.kind in ("hf", "ours"):
            model = self.model()
            return lambda audios: speech.transcribe(model, audios, batch=self.batch, max_length=self.max_length,
                                                    lean=self.kind == "ours")
        if self.kind == "ct2":
            return _ct2(Path(self.model_dir), self.option, self.threads, self.batch, self.max_length)
        if self.kind == "faster-whisper":
            return _faster_whisper(Path(self.model_dir), self.threads, self.max_length)
        raise ValueError(f"AsrSystem.kind: {self.kind!r}; one of {', '.join(KINDS)}")

    def model(self) -> torch.nn.Module:
        """Our model for this system: the dir converted to transformers, with the recipe applied."""
        model = whisper_ct2.load_dir(Path(self.model_dir))
        return compress_model(model, self.option, task=None)[0] if self.option else model

    def call_one(self) -> Callable[[np.ndarray], object]:
        """One clip per call (the timing pass: batch 1)."""
        run = self.build()
        return lambda audio: run([audio])


def _ct2(model_dir: Path, compute_type: str, threads: int, batch: int, max_length: int) -> Transcriber:
    import ctranslate2

    peer = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type=compute_type,
                                      intra_threads=threads, inter_threads=1)
    prompt = [speech.tokenizer().convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]

    def run(audios: Sequence[np.ndarray]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(audios), batch):
            feats = speech.features(audios[i:i + batch]).numpy()
            result = peer.generate(ctranslate2.StorageView.from_array(feats), [prompt] * len(feats), beam_size=1,
                                   max_length=max_length)
            out += speech.decode([r.sequences_ids[0] for r in result])
        return out
    return run


def faster_whisper_available() -> bool:
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        return False
    return True


def _faster_whisper(model_dir: Path, threads: int, max_length: int) -> Transcriber:
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(audios: Sequence[np.ndarray]) -> list[str]:
        out = []
        for a in audios:
            segments, _ = fw.transcribe(a, language="en", beam_size=1, best_of=1, temperature=0.0, vad_filter=False,
                                        without_timestamps=True, condition_on_previous_text=False,
                                        max_new_tokens=max_length - 2)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out
    return run
