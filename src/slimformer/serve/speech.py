"""Whisper: OpenAI-compatible `POST /v1/audio/transcriptions` (multipart `file`, `model`, `response_format`
json | text | verbose_json, `language` "en"), answering `{"text": ...}` as OpenAI does.

The front end reads the upload exactly as `slimformer transcribe` reads a file (`tasks.speech.read_audio`:
soundfile, channels averaged, polyphase resampling to 16 kHz, and the same refusals: unreadable, empty,
NaN, longer than the 30 s window), so a clip gets the same transcript over HTTP as from the CLI or
`slimformer.transcribe`. A worker decodes a batch with `tasks.speech.transcribe` (greedy, the same code
path). Every clip is padded to the full window, so its cost in the token budget is the encoder's
`max_source_positions` tokens, whatever its length.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from torch import nn

from ..errors import SlimformerError
from ..families import find_family
from ..parallel.serve import Handler
from ..tasks import speech
from .http import FastJSON, HTTPError
from .kinds import Kind, Limits
from .upload import read_form

MAX_UPLOAD_BYTES = 25 * 2**20  # OpenAI's own limit on an audio upload
FORMATS = ("json", "text", "verbose_json")
LANGUAGES = ("en",)  # the decoding prompt carries no language token: English models only


class AudioHandler(Handler):
    """An item is one checked clip, float32 16 kHz mono; a worker answers one transcript per clip."""

    def __init__(self, window_tokens: int):
        self.window_tokens = window_tokens

    def cost(self, item: np.ndarray) -> int:
        return self.window_tokens

    def collate(self, items: list[np.ndarray]) -> list[np.ndarray]:
        return items  # clips differ in length; the feature extractor pads each to the window

    def run(self, state: nn.Module, batch: list[np.ndarray]) -> list[str]:
        return speech.transcribe(state, batch, batch=len(batch))


def read_upload(data: bytes, filename: str) -> np.ndarray:
    """The upload as `read_audio` reads a file (it takes a path, so the bytes go to a private temp file);
    413 past the 30 s window, 422 for anything else `read_audio` refuses, the message naming `file`."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="slimformer-upload-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        named = f"file ({filename!r})" if filename else "file"
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
            info = None  # read_audio names the problem
        if info is not None and info.samplerate > 0 and info.frames / info.samplerate > speech.WINDOW_SECONDS:
            raise HTTPError(413, f"{named}: audio is {info.frames / info.samplerate:.1f} s long; at most "
                                 f"{speech.WINDOW_SECONDS:.0f} s (one Whisper window): split it first", "file")
        try:
            return speech.read_audio(path)
        except SlimformerError as e:
            raise HTTPError(422, str(e).replace(str(path), named), "file") from None


class SpeechRecognizer(Kind):
    name = "speech-recognizer"

    def __init__(self, ref: str, model: nn.Module, limits: Limits):
        super().__init__(ref, model, limits)
        speech.tokenizer()  # the packaged Whisper tokenizer: refused here, at start, when it is missing
        self.handler = AudioHandler(int(model.config.max_source_positions))

    @staticmethod
    def matches(model: nn.Module) -> bool:
        """A Whisper speech encoder-decoder (its family says so)."""
        family = find_family(model)
        return family is not None and family.kind == "speech"

    def routes(self, service: Any) -> list[Route]:
        async def transcriptions(request: Request) -> Response:
            return await service.answer("/v1/audio/transcriptions", request, self.transcribe)

        return [Route("/v1/audio/transcriptions", transcriptions, methods=["POST"])]

    def info(self) -> dict[str, Any]:
        return {"sample_rate": speech.SAMPLE_RATE, "max_audio_seconds": speech.WINDOW_SECONDS,
                "max_upload_bytes": MAX_UPLOAD_BYTES, "response_formats": list(FORMATS), "languages": list(LANGUAGES)}

    async def transcribe(self, service: Any, request: Request) -> Response:
        form = await read_form(request, MAX_UPLOAD_BYTES)
        fmt = form.get("response_format", "json", FORMATS)
        form.get("language", "en", LANGUAGES)
        form.get("model")
        clip = await run_in_threadpool(read_upload, form.data, form.filename)
        (text,) = await service.infer("/v1/audio/transcriptions", [clip])
        if fmt == "text":
            return PlainTextResponse(text)
        if fmt == "json":
            return FastJSON({"text": text})
        seconds = round(len(clip) / speech.SAMPLE_RATE, 3)
        return FastJSON({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                         "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text}]})
