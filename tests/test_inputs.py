"""Bad inputs and impossible requests at the boundary (`slimformer.guard`): a clear error, or the
documented behaviour of the model code, never silent garbage.

Model code itself does not validate (it is the math, and stays readable): an empty batch, a wrong image
size or an out-of-vocabulary id raise low-level torch errors there, and NaN in gives NaN out. Those are
documented here as tests so a change is noticed; the guard is what users meet first.
"""

from __future__ import annotations

import contextlib
import io as stdio
import time

import pytest
import torch

from slimformer import guard
from slimformer.bench.inputs import example_inputs
from slimformer.errors import SlimformerError
from slimformer.models import build_builtin, build_model

TINY_ENC = {"vocab_size": 64, "max_len": 16, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32}


@pytest.fixture(scope="module")
def vit():
    return build_builtin("vit-tiny").eval()


@pytest.fixture(scope="module")
def encoder():
    return build_model("encoder", TINY_ENC).eval()


def test_valid_inputs_pass(vit, encoder):
    seq2seq = build_model("seq2seq", {"vocab_size": 64, "max_len": 16, "d_model": 16, "n_enc_layers": 1,
                                      "n_dec_layers": 1, "n_heads": 2, "d_ff": 32})
    for model in (vit, encoder, build_model("decoder", TINY_ENC), seq2seq):
        args, kwargs = example_inputs(model, batch=2, seq_len=8)
        guard.check_inputs(model, args, kwargs)


def test_empty_batch(vit, encoder):
    with pytest.raises(SlimformerError, match="empty batch"):
        guard.check_inputs(vit, (torch.zeros(0, 1, 16, 16),))
    with pytest.raises(SlimformerError, match=r"empty batch: tokens have shape \(0, 5\)"):
        guard.check_inputs(encoder, (torch.zeros(0, 5, dtype=torch.long),))
    with pytest.raises(SlimformerError, match="batch must be an integer >= 1, got 0"):
        example_inputs(vit, batch=0)
    with pytest.raises(RuntimeError):  # documented: the model itself raises a low-level error
        vit(torch.zeros(0, 1, 16, 16))


def test_sequence_longer_than_positions(encoder):
    with pytest.raises(SlimformerError, match="sequence length 17 exceeds the model's 16 positions"):
        guard.check_inputs(encoder, (torch.zeros(2, 17, dtype=torch.long),))
    with pytest.raises(SlimformerError, match="sequence length 129 exceeds the model's 128 positions"):
        example_inputs(build_builtin("encoder-small"), batch=1, seq_len=129)
    with pytest.raises(IndexError):  # documented: the position table has 16 rows
        encoder(torch.zeros(2, 17, dtype=torch.long))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_images(vit, value):
    x = torch.randn(2, 1, 16, 16)
    x[1, 0, 3, 4] = value
    with pytest.raises(SlimformerError, match=r"images contain 1 NaN/Inf value\(s\) out of 512"):
        guard.check_inputs(vit, (x,))
    with torch.inference_mode():  # documented: the model propagates it (row 1 is garbage, row 0 is not)
        out = vit(x)
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1]).all()


def test_wrong_image_size_and_channels(vit):
    with pytest.raises(SlimformerError, match=r"images are \(1, 20, 20\) \(channels, H, W\); the model takes "
                                              r"\(1, 16, 16\): resize them first"):
        guard.check_inputs(vit, (torch.zeros(2, 1, 20, 20),))
    with pytest.raises(SlimformerError, match=r"images are \(3, 16, 16\)"):
        guard.check_inputs(vit, (torch.zeros(2, 3, 16, 16),))
    with pytest.raises(SlimformerError, match=r"images must be a tensor \[batch, 1, 16, 16\], got \(16, 16\)"):
        guard.check_inputs(vit, (torch.zeros(16, 16),))
    with pytest.raises(SlimformerError, match="must be floating point"):
        guard.check_inputs(vit, (torch.zeros(2, 1, 16, 16, dtype=torch.uint8),))
    with pytest.raises(RuntimeError):  # documented: positions do not match 100 patches
        vit(torch.zeros(2, 1, 20, 20))


def test_token_ids_and_mismatched_tokenizer(encoder):
    from slimformer.models.hf import load_tokenizer, minilm_dir

    tok = load_tokenizer(minilm_dir())  # 30,522 tokens: made for MiniLM, not for a 64-token model
    with pytest.raises(SlimformerError, match="tokenizer has 30522 tokens but the model's vocabulary has 64"):
        guard.check_tokenizer(encoder, tok)
    ids = torch.tensor([tok("a stranger's tokenizer")["input_ids"]])
    with pytest.raises(SlimformerError, match=r"token ids span \[\d+, \d+\] but the model's vocabulary is "
                                              r"\[0, 64\); was the text encoded with another model's tokenizer"):
        guard.check_inputs(encoder, (ids,))
    with pytest.raises(SlimformerError, match="tokens must be integer ids, got torch.float32"):
        guard.check_inputs(encoder, (torch.zeros(1, 4),))
    with pytest.raises(SlimformerError, match=r"mask has shape \(1, 3\), tokens \(1, 4\)"):
        guard.check_inputs(encoder, (torch.ones(1, 4, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)))


def test_huge_request_refused_before_allocating():
    model = build_builtin("encoder-small")
    start = time.perf_counter()
    with pytest.raises(SlimformerError, match=r"batch 1000000 x sequence 128 on Encoder \(d_model 256, 4 layers\) "
                                              r"needs about [\d.]+ GiB, more than the [\d.]+ GiB available"):
        example_inputs(model, batch=1_000_000, seq_len=128)
    assert time.perf_counter() - start < 2.0  # an estimate, not an attempt
    estimate = guard.estimate_request_bytes(model, 1_000_000, 128)
    assert estimate > 2**40  # ~TiB: attention scores alone are 1e6 x 4 x 128 x 128 x 4 bytes x 2


def test_memory_limit_from_environment(monkeypatch, vit):
    example_inputs(vit, batch=64)
    monkeypatch.setenv("SLIMFORMER_MAX_MEMORY_GB", "0.001")
    with pytest.raises(SlimformerError, match=r"batch 64 x sequence 65 on ViT .* more than the 0.0 GiB available"):
        example_inputs(vit, batch=64)
    monkeypatch.setenv("SLIMFORMER_MAX_MEMORY_GB", "lots")
    with pytest.raises(SlimformerError, match="SLIMFORMER_MAX_MEMORY_GB must be a number"):
        guard.available_memory()


def test_estimate_scales_like_a_transformer():
    """Linear in batch, superlinear in sequence length (attention scores), and never below the weights plus
    the hidden states a forward pass must hold."""
    model = build_builtin("encoder-small")
    weights = guard.tensor_bytes(model)[1]
    act = {(b, s): guard.estimate_request_bytes(model, b, s) - weights for b, s in [(1, 64), (2, 64), (1, 128)]}
    assert act[(2, 64)] == 2 * act[(1, 64)]
    assert act[(1, 128)] > 2 * act[(1, 64)]
    assert act[(1, 64)] >= 4 * 64 * (256 * 2 + 1024)  # residual + attention output + MLP hidden, fp32


def test_threads_checked():
    assert guard.check_threads(1) == 1
    for bad in (0, -1, 10**8, True):
        with pytest.raises(SlimformerError, match=r"--threads must be an integer in \[1, \d+\]"):
            guard.check_threads(bad)


def test_bench_cli_refuses_huge_batch_in_one_line():
    from slimformer.cli import main

    err = stdio.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(stdio.StringIO()):
        main(["bench", "vit-tiny", "--batch", "100000000", "--json", "never-written.json"])
    assert info.value.code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "GiB" in lines[0] and lines[0].startswith("error: "), lines
