"""Model dirs: bit-exact round trip, clear one-line errors for every kind of bad file, no lost data."""

import json
import os

import pytest
import torch

from slimformer import io
from slimformer.errors import SlimformerError
from slimformer.models import build_builtin


@pytest.fixture()
def saved(tmp_path):
    model = build_builtin("seq2seq-small").eval()
    out = io.save_model(model, tmp_path / "m")
    return model, out


def test_round_trip_is_bit_exact(saved):
    model, out = saved
    loaded = io.load_model_dir(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    src, tgt = torch.randint(3, 8000, (2, 10)), torch.randint(3, 8000, (2, 6))
    assert torch.equal(model(src, tgt), loaded(src, tgt))
    # tied weights stay tied after loading
    assert loaded.decoder.lm_head.weight is loaded.encoder.tok_emb.weight


def test_missing_weights(saved):
    _, out = saved
    (out / "model.safetensors").unlink()
    with pytest.raises(SlimformerError, match="model.safetensors: missing"):
        io.load_model_dir(out)


def test_truncated_weights(saved):
    _, out = saved
    path = out / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SlimformerError, match="model.safetensors"):
        io.load_model_dir(out)


def test_corrupt_weights_without_checksum(saved):
    _, out = saved
    meta = json.loads((out / "slimformer.json").read_text())
    meta.pop("sha256")
    (out / "slimformer.json").write_text(json.dumps(meta))
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(SlimformerError, match="not a readable safetensors file"):
        io.load_model_dir(out)


def test_unknown_architecture(saved):
    _, out = saved
    meta = json.loads((out / "slimformer.json").read_text())
    meta["architecture"] = "mamba"
    (out / "slimformer.json").write_text(json.dumps(meta))
    with pytest.raises(SlimformerError, match="unknown architecture 'mamba'"):
        io.load_model_dir(out)


def test_shape_mismatch_names_the_tensor(saved):
    _, out = saved
    meta = json.loads((out / "slimformer.json").read_text())
    meta["config"]["d_ff"] = 512
    (out / "slimformer.json").write_text(json.dumps(meta))
    with pytest.raises(SlimformerError, match=r"tensor 'encoder.blocks.0.mlp.fc1.weight' has shape"):
        io.load_model_dir(out)


def test_failed_save_keeps_previous_dir(saved, monkeypatch):
    model, out = saved
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", boom)
    with pytest.raises(OSError):
        io.save_model(build_builtin("seq2seq-small"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no staging dir left behind


def test_overwrite_replaces_whole_dir(saved):
    _, out = saved
    new = build_builtin("seq2seq-small")
    io.save_model(new, out)
    assert torch.equal(io.load_model_dir(out).encoder.tok_emb.weight, new.encoder.tok_emb.weight)
    assert sorted(os.listdir(out.parent)) == ["m"]


def test_pickles_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(SlimformerError, match="safetensors only"):
        io.load(tmp_path)
    with pytest.raises(SlimformerError, match="pickled weights are refused"):
        io.load(tmp_path / "pytorch_model.bin")
