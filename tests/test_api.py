"""The Python API mirrors the CLI: compress keeps what a text model needs to stay usable."""

import torch

import slimformer
from slimformer import io
from slimformer.models import build_builtin


def test_compress_carries_tokenizer_files_and_recipe(tmp_path):
    src = io.save_model(build_builtin("vit-tiny"), tmp_path / "src", files={"tokenizer.json": b'{"v": 1}'})
    out = slimformer.compress(src, "prune-ffn:ratio=0.5", tmp_path / "out")
    assert (out / "tokenizer.json").read_bytes() == b'{"v": 1}'
    meta = io.read_meta(out)
    assert [e["step"] for e in meta["recipe"]] == ["prune-ffn"]
    small, x = io.load_model_dir(out), torch.randn(2, 1, 16, 16)
    assert small.blocks[0].mlp.fc1.out_features < build_builtin("vit-tiny").blocks[0].mlp.fc1.out_features
    assert small(x).shape == (2, 10)
