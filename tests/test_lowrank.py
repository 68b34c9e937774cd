"""Low-rank factorization: SVD factors are the best rank-r approximation, full rank is exact, the
factorized model is smaller, and a factorized model dir reloads identically."""

import pytest
import torch
from hf_tiny import bert_inputs, tiny_bert

from slimformer import io
from slimformer.api import compress_model
from slimformer.compress.lowrank import LowRankLinear, rank_for_energy, svd_factors
from slimformer.errors import SlimformerError
from slimformer.models import build_builtin

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_svd_factors_are_the_best_rank_r_approximation():
    w = torch.randn(20, 12, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 12):
        up, down = svd_factors(w, r)
        assert up.shape == (20, r) and down.shape == (r, 12)
        # Eckart-Young: the Frobenius error of the best rank-r approximation is the norm of the dropped values
        err = torch.linalg.matrix_norm(w - up @ down)
        torch.testing.assert_close(err, s[r:].norm(), rtol=1e-8, atol=1e-8)


def test_rank_for_energy_matches_naive():
    w = torch.randn(16, 10)
    s2 = torch.linalg.svdvals(w.double()) ** 2
    for energy in (0.1, 0.5, 0.9, 0.999, 1.0):
        naive = next(r for r in range(1, 11) if s2[:r].sum() / s2.sum() >= energy - 1e-12)
        assert rank_for_energy(w, energy) == naive


def test_full_rank_is_exact():
    """Every attention and FFN Linear factorized at full rank: outputs within 1e-5 of the original."""
    model = build_builtin("vit-tiny")
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    lr, record = compress_model(model, "lowrank:rank=1000,layers=all,skip_if_larger=false")
    assert sum(isinstance(m, LowRankLinear) for m in lr.modules()) == 4 * 6
    assert set(record[0]["state"]["ranks"].values()) == {96}
    with torch.no_grad():
        torch.testing.assert_close(lr(x), ref, rtol=1e-5, atol=1e-5)


def test_low_rank_shrinks_and_skips_layers_it_would_grow():
    model = build_builtin("vit-tiny")
    before = n_params(model)
    small, record = compress_model(model, "lowrank:rank=16,layers=mlp")
    assert n_params(small) < before
    fc1 = small.blocks[0].mlp.fc1
    assert isinstance(fc1, LowRankLinear) and fc1.down.weight.shape == (16, 96) and fc1.up.weight.shape == (192, 16)
    assert isinstance(small.blocks[0].attn.q, torch.nn.Linear)  # layers=mlp leaves attention alone
    # rank 90 of a 96x96 or 96x192 matrix would add parameters: nothing would change, which is refused
    with pytest.raises(SlimformerError, match="rank=90 factorizes no layer"):
        compress_model(build_builtin("vit-tiny"), "lowrank:rank=90,layers=all")


@pytest.mark.parametrize("family", ["vit", "hf-bert"])
def test_save_load_identical(tmp_path, family):
    if family == "hf-bert":
        model, inputs = tiny_bert(), bert_inputs()
    else:
        model, inputs = build_builtin("vit-tiny"), (torch.randn(3, 1, 16, 16),)
    small, record = compress_model(model, "prune-ffn:ratio=0.25,score=weight+lowrank:energy=0.5,layers=all")
    with torch.no_grad():
        expected = small(*inputs)
    loaded = io.load_model_dir(io.save_model(small, tmp_path / "m", recipe=record))
    assert sum(isinstance(m, LowRankLinear) for m in loaded.modules()) == len(record[1]["state"]["ranks"]) > 0
    with torch.no_grad():
        got = loaded(*inputs)
    if not torch.is_tensor(got):
        got, expected = got.last_hidden_state, expected.last_hidden_state
    assert torch.equal(got, expected)


def test_option_errors():
    with pytest.raises(SlimformerError, match="'rank' or option 'energy', not both"):
        compress_model(build_builtin("vit-tiny"), "lowrank:rank=4,energy=0.5")
    with pytest.raises(SlimformerError, match=r"'energy' of step 'lowrank' must be in \(0, 1\]"):
        compress_model(build_builtin("vit-tiny"), "lowrank:energy=1.5")
    with pytest.raises(SlimformerError, match="'layers' of step 'lowrank' must be one of 'mlp', 'attn', 'all'"):
        compress_model(build_builtin("vit-tiny"), "lowrank:layers=conv")
