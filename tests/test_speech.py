"""Speech task pieces at tiny size: espeak data + cache, noise, WER, audio-trim, `slimformer transcribe`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from test_ct2format import tiny_whisper

from slimformer.compress.audio_trim import AudioTrimOptions, kept_frames, trim
from slimformer.data import speech as data
from slimformer.errors import SlimformerError
from slimformer.tasks import speech

pytestmark = pytest.mark.usefixtures("one_thread")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")


@needs_espeak
def test_synthesized_clips_are_cached_and_reread_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path))
    texts = ["In the beginning God created the heavens.", "Jonah rose up to flee.", "Let her glean."]
    clips = data.cached("unit", texts)
    assert [c.text for c in clips] == texts and [c.voice for c in clips] == ["en-us", "en-gb", "en-us"]
    assert all(0.5 < c.seconds < 10 and c.audio.dtype == np.float32 and np.abs(c.audio).max() > 0.05 for c in clips)
    path = next(tmp_path.glob("speech-unit-*.safetensors"))
    again = data.cached("unit", texts)  # from the file now
    assert all(np.abs(a.audio - b.audio).max() <= 1 / 32767 for a, b in zip(clips, again, strict=True))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SlimformerError, match="unreadable speech cache"):
        data.cached("unit", texts)


def test_resample_and_noise():
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = data.resample(tone, 22050)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 16 kHz: bin = Hz
    noisy = data.add_noise(out, 10.0, seed=3)
    snr = 10 * np.log10(np.mean(out.astype(np.float64) ** 2) / np.mean((noisy - out).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.3
    assert np.array_equal(noisy, data.add_noise(out, 10.0, seed=3))
    assert not np.array_equal(noisy, data.add_noise(out, 10.0, seed=4))


def test_error_rates_use_whisper_normalization():
    refs = ["When she had risen up, Boaz said: “Don’t reproach her.”", "Mr. Smith has 2 sheep."]
    same = speech.error_rates(refs, ["when she had risen up boaz said don't reproach her", "mister smith has 2 sheep"])
    assert same == {"wer": 0.0, "cer": 0.0}
    one_wrong = speech.error_rates(refs[:1], ["when she had risen up both said don't reproach her"])
    assert one_wrong["wer"] == pytest.approx(1 / 11)  # "don't" counts as "do not": 11 words
    with pytest.raises(SlimformerError, match="no non-empty reference"):
        speech.error_rates([""], ["x"])


def test_check_audio_errors():
    with pytest.raises(SlimformerError, match="empty"):
        speech.check_audio(np.zeros(0))
    with pytest.raises(SlimformerError, match="31.0 s long"):
        speech.check_audio(np.zeros(31 * 16000))
    with pytest.raises(SlimformerError, match="mono"):
        speech.check_audio(np.zeros((2, 100)))


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def test_kept_frames_follow_the_audio():
    feats = speech.features([_speechlike(2.0), _speechlike(4.3)])
    assert kept_frames(feats[:1], 0.0, 0.02) in range(200, 204)
    assert kept_frames(feats, 0.5, 1.0) == 500  # longest row 4.3 s + 0.5 s -> 4.8 s -> bucket 5 s
    assert kept_frames(speech.features([_speechlike(29.9)]), 1.0, 1.0) == 3000


def test_audio_trim_equals_full_window_when_nothing_is_cut_and_shrinks_otherwise():
    model = tiny_whisper()
    feats = speech.features([_speechlike(1.5), _speechlike(3.0)])
    with torch.inference_mode():
        full = model.model.encoder(feats).last_hidden_state
        trim(model, AudioTrimOptions(margin_s=30.0))
        same = model.model.encoder(feats).last_hidden_state
        trim(model, AudioTrimOptions(margin_s=0.5, bucket_s=0.5))
        short = model.model.encoder(feats).last_hidden_state
    assert torch.equal(full, same)
    # 3.0 s = 300 frames (+2 of the STFT's centre padding) + 0.5 s -> 352 -> bucket 0.5 s -> 400 -> 200 after
    # the strided conv
    assert short.shape == (2, 200, 32)
    assert not torch.allclose(short, full[:, :200], atol=1e-3)  # attention no longer sees the padding


def test_audio_trim_survives_save_and_load(tmp_path):
    from slimformer import api, io

    model = tiny_whisper()
    small, record = api.compress_model(model, "audio-trim:margin_s=0.5", task=None)
    io.save_model(small, tmp_path / "m", recipe=record)
    loaded = io.load(tmp_path / "m")
    feats = speech.features([_speechlike(2.0)])
    with torch.inference_mode():
        a = small.model.encoder(feats).last_hidden_state
        b = loaded.model.encoder(feats).last_hidden_state
    assert a.shape[1] == 150 and torch.equal(a, b)
    assert speech.greedy(small, feats, max_length=8) == speech.greedy(loaded, feats, max_length=8)


def test_audio_trim_refuses_other_models():
    from slimformer import api, io

    with pytest.raises(SlimformerError, match="not a Hugging Face Whisper model"):
        api.compress_model(io.load("vit-tiny"), "audio-trim")


@pytest.fixture
def tiny_dir(tmp_path):
    from slimformer import io

    return io.save_model(tiny_whisper(positions=16), tmp_path / "tiny")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (a subprocess would pay the heavy imports again on a shared 2-core machine)."""
    from slimformer.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


def test_transcribe_cli_and_json(tmp_path, tiny_dir, capsys):
    wav, flac = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(wav, _speechlike(1.0), 16000)
    sf.write(flac, _speechlike(2.0)[::2], 8000)  # another rate: resampled, not refused
    out = tmp_path / "out.json"
    rc, stdout, stderr = _cli(capsys, "transcribe", str(tiny_dir), str(wav), str(flac), "--json", str(out))
    assert rc == 0, stderr
    assert stdout.count("\n") == 2 and stdout.startswith(f"{wav}: ")
    files = json.loads(out.read_text())["files"]
    assert [f["path"] for f in files] == [str(wav), str(flac)]
    assert all(f["seconds"] > 0 and isinstance(f["text"], str) for f in files)
    assert files[1]["audio_seconds"] == pytest.approx(2.0, abs=0.01)


def test_transcribe_cli_bad_audio_is_one_line(tmp_path, tiny_dir, capsys):
    empty, text, long = tmp_path / "empty.wav", tmp_path / "notes.wav", tmp_path / "long.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    text.write_text("not audio at all")
    sf.write(long, np.zeros(31 * 8000, dtype=np.float32), 8000)
    for path, message in ((empty, "empty"), (text, "not a readable audio file"), (long, "31.0 s long"),
                          (tmp_path / "missing.wav", "no such audio file")):
        rc, _, stderr = _cli(capsys, "transcribe", str(tiny_dir), str(path))
        assert rc == 2 and stderr.count("\n") == 1 and message in stderr and str(path) in stderr, stderr


def test_speech_benchmark_tiny_smoke(tmp_path):
    """benchmarks/speech.py --tiny runs every system on the same clips and writes JSON + a table."""
    import importlib.util
    from pathlib import Path

    if shutil.which("espeak-ng") is None:
        pytest.skip("apt-get install espeak-ng")
    path = Path(__file__).parent.parent / "benchmarks" / "speech.py"
    spec = importlib.util.spec_from_file_location("speech_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tiny", "--threads", "1", "--recipe", "audio-trim", "--out", str(tmp_path)])
    names = {r["name"] for r in rows}
    assert {"hf-fp32", "ct2-float32", "ct2-int8", "audio-trim"} <= names
    assert all(r["seconds_mean"] > 0 and r["metrics"]["wer_clean"] >= 0 for r in rows)
    doc = json.loads((tmp_path / "speech.json").read_text())
    assert doc["env"]["cpu_features"] and "| ct2-int8 |" in (tmp_path / "speech.md").read_text()


def test_lean_decoder_matches_the_transformers_forward():
    """The lean greedy loop gives the same tokens as transformers' own decoder + cache, also when rows
    finish at different steps (end-of-text set to a token only row 0 emits, so that row leaves early)."""
    model = tiny_whisper(positions=40, std=0.5)  # std 0.5: varied tokens, not one repeated
    feats = speech.features([_speechlike(1.0, 1), _speechlike(2.0, 2), _speechlike(0.5, 3)])
    ref = speech.greedy(model, feats, lean=False)
    assert speech.greedy(model, feats) == ref and all(len(t) == 38 for t in ref)
    model.config.eos_token_id = next(t for t in ref[0][3:] if t not in ref[1] + ref[2])
    ref = speech.greedy(model, feats, lean=False)
    assert speech.greedy(model, feats) == ref
    assert len(ref[0]) < 38 and len(ref[1]) == 38, [len(t) for t in ref]


@needs_espeak
def test_evaluate_and_calibration_shapes(monkeypatch):
    clips = data.build(["Hello there, my friend.", "Go home now and rest."])
    monkeypatch.setattr(data, "load", lambda split="test", n=None: clips)
    model = tiny_whisper(positions=12)
    result = speech.evaluate(model, batch=2)
    assert set(result) == {"wer_clean", "cer_clean", "wer_noisy", "cer_noisy", "word_accuracy",
                           "word_accuracy_clean", "word_accuracy_noisy"}
    assert result["word_accuracy"] == pytest.approx(1 - (result["wer_clean"] + result["wer_noisy"]) / 2)
    assert set(speech.GUARDED) <= set(result)
    for name in ("clean", "noisy"):
        assert result[f"word_accuracy_{name}"] == pytest.approx(1 - result[f"wer_{name}"])
    (feats, mask, ids), = list(speech.calibration(n=2, batch=2))
    assert feats.shape == (2, 80, 3000) and mask is None and ids.shape[0] == 2 and ids[0, 0] == 50257
    with torch.inference_mode():
        logits = model(feats, None, ids[:, :12]).logits
    assert logits.shape[:2] == (2, min(12, ids.shape[1]))
