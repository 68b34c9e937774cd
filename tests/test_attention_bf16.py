"""`bf16-attention`: the bf16 kernel against fp32 attention on fresh inputs and masks, the step on
reference and Hugging Face models (padding respected, save -> load, compiled == eager), gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import model_and_inputs

from slimformer import io
from slimformer.api import compress_model
from slimformer.bench.baselines import first_output
from slimformer.compress.attention_bf16 import bf16_attention
from slimformer.errors import SlimformerError
from slimformer.models.attention import padding_bias, scaled_dot_product

pytestmark = pytest.mark.usefixtures("one_thread")

# bf16 keeps 8 bits of mantissa: attention outputs (averages of values ~N(0, 1)) within 2e-2 absolute.
ATOL = 2e-2


def _out(model, args, kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return first_output(model(*args, **kwargs)).float()


@pytest.mark.parametrize("mask", ["none", "padding", "bool", "causal"])
def test_kernel_matches_fp32_attention(mask):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 4, 9, 16, generator=g) for _ in range(3))
    keep = torch.ones(3, 9, dtype=torch.bool)
    keep[1, 5:] = False
    bias = {"none": None, "padding": padding_bias(keep), "bool": keep[:, None, None, :],
            "causal": torch.ones(9, 9, dtype=torch.bool).tril()}[mask]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = bf16_attention(q, k, v, bias)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = float((out - ref).abs().max())
    assert err < ATOL, f"max error {err}"
    assert err > 0, "bf16 changed nothing: the fp32 kernel ran"


def test_kernel_is_differentiable():
    q, k, v = (torch.randn(2, 2, 5, 8, requires_grad=True) for _ in range(3))
    bf16_attention(q, k, v).sum().backward()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    scaled_dot_product(q2, k2, v2).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert float((a.grad - b.grad).abs().max()) < 5e-2


@pytest.mark.parametrize("name", ["vit-tiny", "encoder-small", "seq2seq-small", "tiny-bert", "tiny-hf-vit"])
def test_step_close_to_fp32_and_reloads(name, tmp_path):
    model, args, kwargs = model_and_inputs(name, pad_row=True)
    ref = _out(model, args, kwargs)
    m, record = compress_model(copy.deepcopy(model), "bf16-attention")
    y = _out(m, args, kwargs)
    cos = float(F.cosine_similarity(y.flatten(1), ref.flatten(1)).min())
    assert cos > 0.9995 and not torch.equal(y, ref), f"{name}: cosine {cos}"
    again = io.load_model_dir(io.save_model(m, tmp_path / "m", recipe=record))
    assert torch.equal(_out(again, args, kwargs), y), "save -> load lost the kernel"


def test_padding_is_respected_on_bert():
    """A padded row gives the same embeddings for its real tokens as the row alone, unpadded."""
    model, _, kwargs = model_and_inputs("tiny-bert")
    m, _ = compress_model(copy.deepcopy(model), "bf16-attention")
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    n = int(mask[0].sum())
    full = _out(m, (), kwargs)[0, :n]
    alone = _out(m, (), {"input_ids": ids[:1, :n], "attention_mask": mask[:1, :n]})[0]
    assert float((full - alone).abs().max()) < 1e-4


def test_compiled_matches_eager():
    model, args, kwargs = model_and_inputs("encoder-small", pad_row=True)
    eager, _ = compress_model(copy.deepcopy(model), "bf16-attention")
    compiled, _ = compress_model(copy.deepcopy(model), "bf16-attention+int8:compile=true")
    plain, _ = compress_model(copy.deepcopy(model), "bf16-attention+int8")
    assert float((_out(compiled, args, kwargs) - _out(plain, args, kwargs)).abs().max()) < 2e-2
    assert _out(eager, args, kwargs).shape == _out(compiled, args, kwargs).shape


def test_refuses_a_model_without_attention():
    with pytest.raises(SlimformerError, match="bf16-attention"):
        compress_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "bf16-attention")


@pytest.mark.parametrize("name", ["encoder-small", "tiny-bert"])
def test_joins_token_merging(name):
    """With ToMe the merged tokens' log-size bias reaches the bf16 kernel: same result as ToMe in fp32
    attention, within bf16's tolerance."""
    model, args, kwargs = model_and_inputs(name, pad_row=True)
    fp32, _ = compress_model(copy.deepcopy(model), "tome:r=2")
    both, _ = compress_model(copy.deepcopy(model), "tome:r=2+bf16-attention")
    a, b = _out(fp32, args, kwargs), _out(both, args, kwargs)
    assert a.shape == b.shape
    cos = float(F.cosine_similarity(a.flatten(1), b.flatten(1)).min())
    assert cos > 0.999 and not torch.equal(a, b), f"cosine {cos}"
