"""`slimformer serve` of a Whisper model over real HTTP on 127.0.0.1: OpenAI's `/v1/audio/transcriptions`
(multipart upload) answers the transcript `slimformer.transcribe` gives for the same file, in each
response format; bad audio and bad fields get a JSON error naming the field. One server subprocess (a
tiny random Whisper, 1 worker) serves the module."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import soundfile as sf
from test_ct2format import tiny_whisper
from test_serve_http import assert_error, free_port, wait_healthy

import slimformer

ROUTE = "/v1/audio/transcriptions"


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def encoded(audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random Whisper (std 0.15, so a wrong feature or prompt changes the tokens); 16 decoder positions
    bound the decoding of a model that never ends a transcript by itself."""
    from slimformer import io as model_io

    return model_io.save_model(tiny_whisper(std=0.15, positions=16), tmp_path_factory.mktemp("whisper") / "tiny")


@pytest.fixture(scope="module")
def base(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer", "serve", str(model_dir), "--port", str(port),
                             "--workers", "1", "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 120)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def upload(base: str, data: bytes, name: str = "clip.wav", **fields: str) -> httpx.Response:
    return httpx.post(f"{base}{ROUTE}", files={"file": (name, data)}, data={"model": "whisper-1", **fields},
                      timeout=60)


def test_transcript_equals_the_python_api_in_every_format(base, model_dir, tmp_path):
    wav, flac = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(wav, speechlike(1.0), 16000)
    sf.write(flac, speechlike(2.0, rate=8000, seed=1), 8000)  # another rate: resampled as the CLI does
    expected = [r["text"] for r in slimformer.transcribe(str(model_dir), [wav, flac])]
    assert all(expected) and expected[0] != expected[1], expected  # distinct clips, distinct transcripts
    for path, text in zip((wav, flac), expected, strict=True):
        r = upload(base, path.read_bytes(), path.name)
        assert r.status_code == 200, r.text
        assert r.json() == {"text": text}
    data = wav.read_bytes()
    plain = upload(base, data, response_format="text", language="en")
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/plain")
    assert plain.text == expected[0]
    verbose = upload(base, data, response_format="verbose_json").json()
    assert verbose["text"] == expected[0] and verbose["duration"] == 1.0 and verbose["language"] == "english"
    assert verbose["segments"][0]["end"] == 1.0
    info = httpx.get(f"{base}/info", timeout=10).json()
    assert info["kind"] == "speech-recognizer" and info["max_audio_seconds"] == 30
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert f'slimformer_requests_total{{route="{ROUTE}",status="200"}}' in metrics


def test_bad_audio_and_fields_get_a_json_error_naming_the_field(base):
    wav = encoded(speechlike(0.5), 16000, "WAV")
    cases = [  # (file bytes, form fields, status, param, part of the message)
        (encoded(np.zeros(0, dtype=np.float32), 16000, "WAV"), {}, 422, "file", "audio is empty"),
        (b"not audio at all", {}, 422, "file", "not a readable audio file"),
        (b"", {}, 422, "file", "'file' is empty"),
        (encoded(np.zeros(31 * 8000, dtype=np.float32), 8000, "FLAC"), {}, 413, "file", "31.0 s long"),
        (encoded(np.full(1600, np.nan, dtype=np.float32), 16000, "WAV", "FLOAT"), {}, 422, "file", "NaN"),
        (wav, {"response_format": "srt"}, 422, "response_format", "'json', 'text', 'verbose_json'"),
        (wav, {"language": "fr"}, 422, "language", "'en'"),
    ]
    for data, fields, status, param, text in cases:
        assert_error(upload(base, data, **fields), status, param, text)
    r = httpx.post(f"{base}{ROUTE}", data={"model": "whisper-1"}, files={"other": ("x.wav", wav)}, timeout=30)
    assert_error(r, 422, "file", "'file' is required")
    r = httpx.post(f"{base}{ROUTE}", json={"file": "clip.wav"}, timeout=30)
    assert_error(r, 422, "body", "multipart/form-data")
    r = httpx.post(f"{base}{ROUTE}", content=b"--x\r\nbroken", timeout=30,
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422 and r.json()["error"]["param"] in ("body", "file"), r.text
    big = httpx.post(f"{base}{ROUTE}", files={"file": ("big.wav", b"\0" * (26 * 2**20))}, timeout=60)
    assert_error(big, 413, "body", "bytes")
    assert upload(base, wav).status_code == 200  # and it still answers
