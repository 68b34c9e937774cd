"""Attention against an independent naive implementation: softmax(Q K^T / sqrt(d) + bias) V."""

import math

import pytest
import torch

from slimformer.models.attention import Attention, causal_bias, padding_bias


def naive_attention(attn: Attention, x, context=None, key_mask=None, causal=False):
    context = x if context is None else context
    b, tq, _ = x.shape
    tk = context.shape[1]
    h, d = attn.n_heads, attn.head_dim
    q = (x @ attn.q.weight.T + attn.q.bias).view(b, tq, h, d).permute(0, 2, 1, 3)
    k = (context @ attn.k.weight.T + attn.k.bias).view(b, tk, h, d).permute(0, 2, 1, 3)
    v = (context @ attn.v.weight.T + attn.v.bias).view(b, tk, h, d).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    if causal:
        allowed &= torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ v
    out = out.permute(0, 2, 1, 3).reshape(b, tq, h * d)
    return out @ attn.o.weight.T + attn.o.bias


@pytest.mark.parametrize("n_heads", [1, 4])
def test_self_attention_matches_naive(n_heads):
    attn = Attention(32, n_heads).eval()
    x = torch.randn(3, 7, 32)
    out, _ = attn(x)
    torch.testing.assert_close(out, naive_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_padding_mask_matches_naive():
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out, _ = attn(x, bias=padding_bias(mask))
    torch.testing.assert_close(out, naive_attention(attn, x, key_mask=mask), atol=1e-5, rtol=1e-5)


def test_causal_mask_matches_naive():
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    out, _ = attn(x, causal=True)
    torch.testing.assert_close(out, naive_attention(attn, x, causal=True), atol=1e-5, rtol=1e-5)


def test_cross_attention_with_padding_matches_naive():
    attn = Attention(32, 2).eval()
    x, memory = torch.randn(2, 4, 32), torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    out, _ = attn(x, context=memory, bias=padding_bias(mask))
    torch.testing.assert_close(out, naive_attention(attn, x, memory, key_mask=mask), atol=1e-5, rtol=1e-5)


def test_causal_bias_with_offset():
    # Two new queries after three cached keys: query 0 sees keys 0..3, query 1 sees 0..4.
    allowed = causal_bias(2, 5) == 0
    assert allowed.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_fully_masked_rows_stay_finite():
    attn = Attention(16, 2).eval()
    x = torch.randn(1, 3, 16)
    out, _ = attn(x, bias=padding_bias(torch.zeros(1, 3, dtype=torch.bool)), causal=True)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("keys", [12, 130])
def test_compiled_attention_matches_naive_on_both_kernels(keys):
    """Under torch.compile, short key sequences take the explicit form and long ones SDPA: both equal
    the naive attention on fresh random inputs, with a padding bias (tolerance 1e-5)."""
    from slimformer.models.attention import SHORT_KEYS, scaled_dot_product

    assert 12 <= SHORT_KEYS < 130  # the two cases cover both kernels
    torch.manual_seed(keys)
    attn = Attention(32, 4).eval()
    x = torch.randn(2, keys, 32)
    mask = torch.ones(2, keys, dtype=torch.bool)
    mask[1, keys // 2:] = False
    bias = padding_bias(mask)
    compiled = torch.compile(lambda q, k, v, b: scaled_dot_product(q, k, v, b), dynamic=False)
    with torch.inference_mode():
        q, kv = attn.split_heads(attn.q(x)), attn.project_kv(x)
        got = attn.o(compiled(q, kv.k, kv.v, bias).transpose(1, 2).reshape(2, keys, 32))
    expected = naive_attention(attn, x, key_mask=mask)
    torch._dynamo.reset()
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_attention_benchmark_runs_tiny(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tiny", "--out", str(tmp_path)])
    assert len(rows) == 4 and all(r["max_abs_err"] < 1e-4 for r in rows)
    assert "rule picks" in (tmp_path / "attention.md").read_text()
