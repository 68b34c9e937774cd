"""Quantization steps (int8, int8-weight, bf16): fidelity to fp32 on fresh inputs, exact save -> load,
plain-tensor artifacts, the eager oneDNN path against torchao's own, recipe ordering."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import model_and_inputs

from slimformer import io
from slimformer.api import compress_model
from slimformer.bench.baselines import first_output
from slimformer.compress.quantize import Int8Embedding, Int8Linear
from slimformer.compress.recipe import parse_recipe
from slimformer.errors import SlimformerError

pytestmark = pytest.mark.usefixtures("one_thread")

# Stated tolerances vs fp32 on fresh random inputs (per-sample cosine of the flattened output, relative
# L2 error of the whole output). int8 rounds weights and activations to 8 bits: ~1 % error on these
# random-weight models; bf16 has an 8-bit mantissa: ~0.5 %.
TOL = {"int8": (0.05, 0.995), "int8-weight": (0.05, 0.995), "bf16": (0.03, 0.998)}


def _out(model, args, kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return first_output(model(*args, **kwargs)).float()


MODELS = ["vit-tiny", "encoder-small", "tiny-bert", "tiny-hf-vit"]


@pytest.mark.parametrize("step", list(TOL))
@pytest.mark.parametrize("name", MODELS)
def test_close_to_fp32_and_reloads_identically(name, step, tmp_path):
    model, args, kwargs = model_and_inputs(name)
    ref = _out(model, args, kwargs)
    q, record = compress_model(copy.deepcopy(model), step)
    y = _out(q, args, kwargs)
    max_rel, min_cos = TOL[step]
    rel = float((y - ref).norm() / ref.norm())
    cos = float(F.cosine_similarity(y.flatten(1), ref.flatten(1)).min())
    assert rel <= max_rel and cos >= min_cos, f"{name} {step}: rel {rel:.4f}, cosine {cos:.5f}"
    assert not torch.equal(y, ref), "quantization changed nothing"
    if step != "bf16":
        assert any(isinstance(m, Int8Linear) for m in q.modules())

    saved = io.save_model(q, tmp_path / "m", recipe=record)
    tensors = io.read_weights(saved / io.WEIGHTS)
    assert all(type(t) is torch.Tensor for t in tensors.values())
    if step != "bf16":
        assert any(t.dtype == torch.int8 for t in tensors.values())
    again = io.load_model_dir(saved)
    assert torch.equal(_out(again, args, kwargs), y), "save -> load changed the outputs"


def test_int8_artifact_is_about_a_quarter(tmp_path):
    """Linears and embedding tables in int8: the file is ~1/4 of fp32 (scales, biases, norms stay fp32)."""
    model = io.load("encoder-small")
    fp32 = (io.save_model(model, tmp_path / "fp32") / io.WEIGHTS).stat().st_size
    q, record = compress_model(copy.deepcopy(model), "int8")
    int8 = (io.save_model(q, tmp_path / "int8", recipe=record) / io.WEIGHTS).stat().st_size
    assert any(isinstance(m, Int8Embedding) for m in q.modules())
    assert int8 / fp32 <= 0.28, f"int8 file is {int8 / fp32:.3f}x fp32"
    q2, record2 = compress_model(copy.deepcopy(model), "int8:embeddings=false")
    assert not any(isinstance(m, Int8Embedding) for m in q2.modules())


def test_eager_onednn_path_matches_torchao():
    """The eager fast path (oneDNN u8 x s8 GEMM) computes what torchao's Int8Tensor linear computes."""
    torch.manual_seed(3)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin, dynamic=True)
    x = torch.randn(5, 7, 64)
    with torch.inference_mode():
        fast = q(x)
        ao = F.linear(x, q.weight, q.bias)  # torchao's dispatch on its Int8Tensor
        ref = lin(x)
    assert fast.shape == ao.shape == (5, 7, 48)
    assert float((fast - ao).norm() / ao.norm()) < 5e-3
    assert float((fast - ref).norm() / ref.norm()) < 0.03
    with torch.inference_mode():  # a copy made after the first call (prepacked weight cached) still works
        assert torch.equal(copy.deepcopy(q)(x), fast)


def test_skip_leaves_layers_in_float():
    model = io.load("vit-tiny")
    q, record = compress_model(copy.deepcopy(model), "int8:skip=head")
    assert type(q.head) is torch.nn.Linear
    assert "head" not in record[-1]["state"]["modules"]


@pytest.mark.parametrize("recipe, words", [("int8+prune-heads", ["prune-heads", "int8"]),
                                           ("int8+bf16", ["int8", "bf16"]),
                                           ("int8:bits=4", ["bits", "compile"])])
def test_bad_recipes_are_refused(recipe, words):
    with pytest.raises(SlimformerError) as e:
        parse_recipe(recipe)
    assert all(w in str(e.value) for w in words)


def test_benchmark_tiny(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "compress.py"
    spec = importlib.util.spec_from_file_location("compress_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--tiny", "--out", str(tmp_path)])
    names = [r["name"] for r in report["results"]]
    assert names == ["fp32", "int8"]
    assert report["results"][1]["metrics"]["cosine"] > 0.99
    assert (tmp_path / "compress.md").exists() and (tmp_path / "compress.json").exists()


@pytest.mark.parametrize("name", ["whisper", "t5"])
def test_decoder_scope_leaves_the_encoder_in_float(name):
    """scope=decoder: every projection under the encoder stays float, every decoder / head one is int8,
    and the model still runs close to fp32; an encoder-only model is refused with the valid value."""
    from slimformer.families import example_inputs
    from slimformer.families.zoo import tiny

    model = tiny(name)
    args, kwargs = example_inputs(model, batch=2, seq_len=16)
    ref = _out(model, args, kwargs)
    q, record = compress_model(copy.deepcopy(model), "int8:scope=decoder")
    modules = record[-1]["state"]["modules"]
    assert modules and not any(".encoder." in f".{m}" for m in modules)
    assert any(".decoder." in f".{m}" for m in modules)
    for n, m in q.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert "encoder" in n, n  # nothing on the decoder side was left in float
    out = _out(q, args, kwargs)
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > TOL["int8"][1]
    with pytest.raises(SlimformerError, match="scope.*encoder-decoder.*valid here: all"):
        compress_model(io.load("encoder-small"), "int8:scope=decoder")


@pytest.mark.parametrize("name", ["whisper", "t5"])
def test_bf16_encoder_scope_with_int8_decoder(name):
    """bf16:scope=encoder casts the encoder alone (its output back to fp32 for the decoder), and composes
    with int8:scope=decoder, each side set by one step; close to fp32, not equal to it (bf16 did run)."""
    from slimformer.families import example_inputs
    from slimformer.families.zoo import tiny

    model = tiny(name)
    args, kwargs = example_inputs(model, batch=2, seq_len=16)
    ref = _out(model, args, kwargs)
    from slimformer.families import family_of

    b, _ = compress_model(copy.deepcopy(model), "bf16:scope=encoder")
    stacks = family_of(b).stacks(b)
    in_encoder = {id(p) for p in stacks["encoder"].parameters()}
    assert in_encoder and not in_encoder & {id(p) for p in stacks["decoder"].parameters()}
    for n, p in b.named_parameters():
        assert (p.dtype == torch.bfloat16) == (id(p) in in_encoder), n
    out = _out(b, args, kwargs)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > TOL["bf16"][1]
    both, record = compress_model(copy.deepcopy(model), "int8:scope=decoder+bf16:scope=encoder")
    assert [e["step"] for e in record] == ["int8", "bf16"]
    out = _out(both, args, kwargs)
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > TOL["int8"][1]
    with pytest.raises(SlimformerError, match="both set the precision of the same part"):
        compress_model(copy.deepcopy(model), "int8+bf16:scope=encoder")
