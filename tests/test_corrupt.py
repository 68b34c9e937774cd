"""Corrupt model dirs: every kind of damage ends in a `SlimformerError` that names the file and the tensor.

`slimformer.json` stores the SHA-256 of the weights, so any damaged byte is first caught by the checksum.
To reach the layers behind it (the safetensors parser, the shape/dtype checks, the size guard) most
cases also rewrite the checksum to match the damaged file, or drop it, as a hand-edited or hostile dir
would.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from _hardening import flush, record, record_error
from safetensors.torch import save_file

from slimformer import io
from slimformer.errors import SlimformerError
from slimformer.models import build_builtin

SECTION = "corrupt"


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    flush(SECTION)


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    return io.save_model(build_builtin("vit-tiny"), tmp_path / "m", extra={"task": "digits"})


def meta_of(d: Path) -> dict:
    return json.loads((d / io.META).read_text())


def write_meta(d: Path, meta: dict) -> None:
    (d / io.META).write_text(json.dumps(meta))


def set_checksum(d: Path, mode: str) -> None:
    """mode "match": store the SHA-256 of the (damaged) weights; "drop": remove it."""
    meta = meta_of(d)
    if mode == "match":
        meta["sha256"] = io.sha256(d / io.WEIGHTS)
    else:
        meta.pop("sha256", None)
    write_meta(d, meta)


def expect_error(d: Path, pattern: str) -> str:
    with pytest.raises(SlimformerError, match=pattern) as info:
        io.load_model_dir(d)
    message = str(info.value)
    assert "\n" not in message
    record_error(SECTION, message)
    return message


def raw_safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file byte by byte: 8-byte little-endian header length, JSON header, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


def tensors_of(d: Path) -> dict[str, torch.Tensor]:
    return io.read_weights(d / io.WEIGHTS)


# ------------------------------------------------------------------------------------ damaged bytes

@pytest.mark.parametrize("checksum", ["stored", "match", "drop"])
def test_truncated(model_dir, checksum):
    weights = model_dir / io.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if checksum != "stored":
        set_checksum(model_dir, checksum)
    pattern = "checksum does not match" if checksum == "stored" else "model.safetensors: not a readable safetensors"
    expect_error(model_dir, pattern)


@pytest.mark.parametrize("cut", [0, 7, 8, 100])
def test_truncated_inside_header(model_dir, cut):
    weights = model_dir / io.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:cut])
    set_checksum(model_dir, "match")
    expect_error(model_dir, "model.safetensors: not a readable safetensors file")


def test_bit_flip_in_data_is_caught_by_checksum(model_dir):
    weights = model_dir / io.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    expect_error(model_dir, r"model.safetensors: checksum does not match slimformer.json")


def test_bit_flip_to_nan_without_checksum_is_named(model_dir):
    """Without the checksum, a flip that makes a NaN is still caught by the finite-weights check."""
    weights = model_dir / io.WEIGHTS
    tensors = tensors_of(model_dir)
    tensors["head.bias"][3] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    set_checksum(model_dir, "drop")
    expect_error(model_dir, r"tensor 'head.bias' holds 1 NaN/Inf value")


def test_many_header_bit_flips(model_dir):
    """Random single-bit flips inside the header, checksum rewritten: each is refused or (when it hits
    padding) harmless; never a crash or a silently different model."""
    weights = model_dir / io.WEIGHTS
    original = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", original[:8])
    reference = {k: v.clone() for k, v in tensors_of(model_dir).items()}
    rng = random.Random(0)
    outcomes = {"refused": 0, "harmless": 0}
    for _ in range(60):
        data = bytearray(original)
        pos = rng.randrange(0, 8 + header_len)
        data[pos] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(data))
        set_checksum(model_dir, "match")
        try:
            model = io.load_model_dir(model_dir)
        except SlimformerError as e:
            record_error(SECTION, str(e))
            outcomes["refused"] += 1
            continue
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items()), f"flip at byte {pos} changed weights"
        record(SECTION, "ok")
        outcomes["harmless"] += 1
    assert outcomes["refused"] > 30, outcomes


# ------------------------------------------------------------------------------------ crafted files

@pytest.mark.parametrize("checksum", ["match", "drop"])
def test_wrong_dtype_is_named(model_dir, checksum):
    tensors = tensors_of(model_dir)
    tensors["blocks.1.mlp.fc1.weight"] = tensors["blocks.1.mlp.fc1.weight"].half()
    save_file(tensors, model_dir / io.WEIGHTS)
    set_checksum(model_dir, checksum)
    expect_error(model_dir, r"tensor 'blocks.1.mlp.fc1.weight' has dtype torch.float16, expected torch.float32")


def test_wrong_shape_is_named(model_dir):
    tensors = tensors_of(model_dir)
    tensors["blocks.2.attn.q.weight"] = tensors["blocks.2.attn.q.weight"][:48].contiguous()
    save_file(tensors, model_dir / io.WEIGHTS)
    set_checksum(model_dir, "match")
    expect_error(model_dir, r"tensor 'blocks.2.attn.q.weight' has shape \(48, 96\), the config expects \(96, 96\)")


def test_missing_and_extra_tensors_are_named(model_dir):
    tensors = tensors_of(model_dir)
    del tensors["norm.weight"]
    save_file(tensors, model_dir / io.WEIGHTS)
    set_checksum(model_dir, "match")
    expect_error(model_dir, r"tensor 'norm.weight' missing \(1 missing in all\)")
    tensors = tensors_of(model_dir) | {"norm.weight": torch.ones(96), "evil": torch.zeros(3)}
    save_file(tensors, model_dir / io.WEIGHTS)
    set_checksum(model_dir, "match")
    expect_error(model_dir, r"unexpected tensor 'evil'")


@pytest.mark.parametrize("case", ["length-2^63", "length-past-eof", "not-json", "offsets-past-eof",
                                  "overlapping-offsets", "huge-shape", "bad-dtype", "many-entries"])
def test_header_bombs(model_dir, case):
    """Hand-made headers that lie about sizes: refused by the parser before any big allocation."""
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    files = {
        "length-2^63": raw_safetensors(b"{}", length=2**63),
        "length-past-eof": raw_safetensors(b"{}", length=90_000_000),
        "not-json": raw_safetensors(b"{" * 64),
        "offsets-past-eof": raw_safetensors({"x": {**f32, "data_offsets": [0, 10**12]}}, b"\0" * 8),
        "overlapping-offsets": raw_safetensors({"x": f32, "y": {**f32, "data_offsets": [4, 12]}}, b"\0" * 12),
        "huge-shape": raw_safetensors({"x": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}},
                                      b"\0" * 8),
        "bad-dtype": raw_safetensors({"x": {**f32, "dtype": "PICKLE"}}, b"\0" * 8),
        "many-entries": raw_safetensors({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                                         for i in range(20_000)}),
    }
    (model_dir / io.WEIGHTS).write_bytes(files[case])
    set_checksum(model_dir, "match")
    expect_error(model_dir, r"model.safetensors: (not a readable safetensors file|tensor )")


# ------------------------------------------------------------------------------------ config vs weights

@pytest.mark.parametrize("change, pattern", [
    ({"n_classes": 11}, r"tensor 'head.weight' has shape \(10, 96\), the config expects \(11, 96\)"),
    ({"n_layers": 5}, r"tensor 'blocks.4.norm1.weight' missing"),
    ({"n_layers": 3}, r"unexpected tensor 'blocks\.3\.[\w.]+' \(16 unexpected in all\)"),
    ({"image_size": 32}, r"tensor 'pos_emb' has shape \(1, 65, 96\), the config expects \(1, 257, 96\)"),
    ({"d_model": 10**6}, r"parameters\) needs about [\d.]+ GiB, more than"),
    ({"d_model": 4096, "n_heads": 4, "d_ff": 16384}, r"config describes [\d,]+ parameters but model.safetensors holds "
                                                     r"only 307,114"),
    ({"n_heads": 0}, r"config 'n_heads' must be an integer >= 1, got 0"),
    ({"dropout": 2.0}, r"config 'dropout' must be a number in \[0, 1\)"),
    ({"colour": "red"}, r"config key\(s\) colour not valid for architecture 'vit'"),
])
def test_config_disagrees_with_weights(model_dir, change, pattern):
    meta = meta_of(model_dir)
    meta["config"].update(change)
    write_meta(model_dir, meta)
    expect_error(model_dir, pattern)


def test_recipe_dropped_from_compressed_model(tmp_path):
    """A low-rank model whose recipe was deleted from slimformer.json: its factors do not fit the plain
    architecture, and the first one is named."""
    from slimformer.api import compress_model

    model, recipe = compress_model(build_builtin("vit-tiny"), "lowrank:rank=8")
    d = io.save_model(model, tmp_path / "lr", recipe=recipe)
    io.load_model_dir(d)  # intact: loads
    meta = meta_of(d)
    meta["recipe"] = []
    write_meta(d, meta)
    expect_error(d, r"tensor 'blocks.0.mlp.fc1.weight' missing")


@pytest.mark.parametrize("damage, pattern", [
    ("no-meta", r"slimformer.json: missing; not a slimformer model dir"),
    ("no-weights", r"model.safetensors: missing"),
    ("meta-not-json", r"slimformer.json: not valid JSON"),
    ("meta-binary", r"slimformer.json: not valid JSON"),
    ("meta-wrong-format", r"format is not 'slimformer-model/1'"),
    ("meta-huge", r"slimformer.json: [\d,]+ bytes, more than any real"),
    ("weights-is-dir", r"model.safetensors: not a readable safetensors file"),
])
def test_damaged_dir(model_dir, damage, pattern):
    meta_path, weights = model_dir / io.META, model_dir / io.WEIGHTS
    if damage == "no-meta":
        meta_path.unlink()
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "meta-not-json":
        meta_path.write_text(meta_path.read_text()[:-40])
    elif damage == "meta-binary":
        meta_path.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "meta-wrong-format":
        write_meta(model_dir, {**meta_of(model_dir), "format": "pytorch-pickle"})
    elif damage == "meta-huge":
        with open(meta_path, "ab") as f:
            f.truncate(io.MAX_META_BYTES + 1)
    elif damage == "weights-is-dir":
        weights.unlink()
        weights.mkdir()
        set_checksum(model_dir, "drop")
    expect_error(model_dir, pattern)
