"""Static int8 (`int8:activations=static`): calibrated per-layer activation scales with SmoothQuant
migration. Checked against fp32 on fresh inputs (not the calibration batches), for exact save -> load,
compiled against eager, and for the errors a user can trigger."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hf_tiny import bert_inputs, tiny_bert

from slimformer import io
from slimformer.bench.baselines import first_output
from slimformer.bench.inputs import example_inputs
from slimformer.compress.calibrate import smoothing
from slimformer.compress.quantize import Int8Linear
from slimformer.compress.recipe import apply_recipe, parse_recipe
from slimformer.compress.registry import StepContext
from slimformer.errors import SlimformerError

pytestmark = pytest.mark.usefixtures("one_thread")

# Same stated tolerance as dynamic int8 in test_quantize.py: relative L2 error and per-sample cosine.
MAX_REL, MIN_COS = 0.05, 0.995


def _calibrated(model, recipe: str, calib):
    steps = parse_recipe(recipe)
    out, record = apply_recipe(model, steps, StepContext(calib=calib))
    return out, record


def _out(model, args, kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return first_output(model(*args, **kwargs)).float()


def _reference_case(name: str):
    model = io.load(name)
    calib = [example_inputs(model, batch=4, seq_len=12, seed=s)[0] for s in range(3)]
    args, kwargs = example_inputs(model, batch=3, seq_len=12, seed=11)  # fresh: not a calibration batch
    return model, (lambda: iter(calib)), args, kwargs


def _bert_case():
    calib = [{"input_ids": i, "attention_mask": m} for i, m in (bert_inputs(seed=s) for s in range(3))]
    ids, mask = bert_inputs(seed=7)
    return tiny_bert(), (lambda: iter(calib)), (), {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", ["vit-tiny", "encoder-small", "tiny-bert"])
def test_static_close_to_fp32_and_reloads_identically(name, tmp_path):
    model, calib, args, kwargs = _bert_case() if name == "tiny-bert" else _reference_case(name)
    ref = _out(model, args, kwargs)
    q, record = _calibrated(copy.deepcopy(model), "int8:activations=static", calib)
    y = _out(q, args, kwargs)
    rel = float((y - ref).norm() / ref.norm())
    cos = float(F.cosine_similarity(y.flatten(1), ref.flatten(1)).min())
    assert rel <= MAX_REL and cos >= MIN_COS, f"{name}: rel {rel:.4f}, cosine {cos:.5f}"
    assert not torch.equal(y, ref)
    linears = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert linears and all(m.static for m in linears)

    saved = io.save_model(q, tmp_path / "m", recipe=record)
    tensors = io.read_weights(saved / io.WEIGHTS)
    assert any(k.endswith("input_smooth") for k in tensors) and any(k.endswith("input_scale") for k in tensors)
    again = io.load_model_dir(saved)
    assert torch.equal(_out(again, args, kwargs), y), "save -> load changed the outputs"


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    """One input channel 50x larger than the rest: per-tensor static scales crush the others to a few
    levels; SmoothQuant's migration recovers most of the accuracy. The product x W^T is unchanged by
    smoothing itself (checked exactly in float)."""
    torch.manual_seed(5)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 3] *= 50
    x_range = x.abs().amax(0)
    s = smoothing(x_range, lin.weight, 0.75)
    torch.testing.assert_close((x / s) @ (lin.weight * s).T, x @ lin.weight.T, rtol=1e-4, atol=1e-4)
    assert torch.equal(smoothing(x_range, lin.weight, 0.0), torch.ones(64))
    ref = lin(x).detach()
    errs = {}
    for alpha in (0.0, 0.75):
        q = Int8Linear.from_linear(lin, dynamic=True, x_range=x_range, alpha=alpha)
        with torch.inference_mode():
            errs[alpha] = float((q(x) - ref).norm() / ref.norm())
    assert errs[0.75] < 0.5 * errs[0.0], errs
    assert errs[0.75] < 0.02, errs


def test_compiled_static_matches_eager():
    model, calib, args, kwargs = _reference_case("encoder-small")
    eager, _ = _calibrated(copy.deepcopy(model), "int8:activations=static", calib)
    compiled, _ = _calibrated(copy.deepcopy(model), "int8:activations=static,compile=true", calib)
    a, b = _out(eager, args, kwargs), _out(compiled, args, kwargs)
    # the same integer GEMMs; only float rounding order in the fused elementwise work differs
    assert float((a - b).norm() / a.norm()) < 1e-3


def test_static_refuses_what_it_cannot_do():
    model = io.load("encoder-small")
    with pytest.raises(SlimformerError, match="calibration data"):
        apply_recipe(copy.deepcopy(model), parse_recipe("int8:activations=static"), StepContext())
    with pytest.raises(SlimformerError, match="int8-weight"):
        _calibrated(copy.deepcopy(model), "int8-weight:activations=static", lambda: iter([]))
    with pytest.raises(SlimformerError) as e:
        parse_recipe("int8:activations=fixed")
    assert "dynamic" in str(e.value) and "static" in str(e.value)
    with pytest.raises(SlimformerError, match="smoothing"):
        parse_recipe("int8:activations=static,smoothing=1.5")


def test_smoothing_benchmark_tiny(tmp_path):
    """benchmarks/smoothing.py --tiny on the real MiniLM (32 verses): runs, writes, and static int8 with
    the default migration stays close to dynamic int8."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "smoothing.py"
    spec = importlib.util.spec_from_file_location("smoothing_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--tiny", "--threads", "1", "--out", str(tmp_path)])
    cos = {r["recipe"]: r["cosine"] for r in report["rows"]}
    assert cos["int8:activations=static,smoothing=0.75"] > 0.99 and cos["int8"] > 0.99
    assert (tmp_path / "smoothing.md").exists() and report["layers"]
