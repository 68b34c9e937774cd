"""Structured pruning: the scores match a naive version, ratio 0 is exact, pruning really shrinks the
Linears and equals masking the removed heads / neurons, and a pruned model dir reloads identically."""

import copy

import pytest
import torch
from hf_tiny import bert_inputs, tiny_bert, tiny_hf_vit, vit_inputs  # noqa: F401

from slimformer import io
from slimformer.api import compress_model
from slimformer.compress.prune import group_contribution, head_index, keep_top, n_to_keep
from slimformer.compress.registry import StepContext
from slimformer.errors import SlimformerError
from slimformer.families import family_of
from slimformer.models import build_builtin

pytestmark = pytest.mark.usefixtures("one_thread")


def head_sites(model):
    return family_of(model).head_sites(model)


def ffn_sites(model):
    return family_of(model).ffn_sites(model)


BOTH = "prune-heads:ratio=0.25+prune-ffn:ratio=0.25"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def out_tensor(out):
    return out if torch.is_tensor(out) else out[0]


def vit_calib():
    g = torch.Generator().manual_seed(5)
    return lambda: iter([(torch.randn(8, 1, 16, 16, generator=g),) for _ in range(2)])


def test_group_contribution_matches_naive():
    x, w = torch.randn(50, 12), torch.randn(7, 12)
    for group in (1, 3, 4):
        naive = torch.tensor([sum(float((x[t, g * group:(g + 1) * group] @ w[:, g * group:(g + 1) * group].T).norm())
                                  for t in range(50)) for g in range(12 // group)])
        torch.testing.assert_close(group_contribution(x, w, group), naive, rtol=1e-4, atol=1e-4)


def test_helpers():
    assert head_index([0, 2], 3) == [0, 1, 2, 6, 7, 8]
    assert keep_top(torch.tensor([0.5, 3.0, 1.0, 2.0]), 2) == [1, 3]  # original order kept
    assert n_to_keep(4, 0.25) == 3 and n_to_keep(4, 0.99) == 1 and n_to_keep(192, 0.25, 16) == 144
    assert n_to_keep(100, 0.3, 16) == 80


def test_ratio_zero_is_exact():
    model = build_builtin("vit-tiny")
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    pruned, _ = compress_model(model, "prune-heads:ratio=0+prune-ffn:ratio=0")
    with torch.no_grad():
        assert torch.equal(pruned(x), ref)


@pytest.mark.parametrize("score", ["activation", "weight"])
def test_pruning_equals_masking_removed_groups(score):
    """The shrunk model computes exactly what the full one computes with the removed heads' outputs and
    the removed neurons' activations zeroed (checked by hooks on the full model): tolerance 1e-5."""
    model = build_builtin("vit-tiny")
    full = copy.deepcopy(model)
    before = n_params(model)
    ctx = StepContext(calib=vit_calib())
    from slimformer.compress.recipe import apply_recipe, parse_recipe

    pruned, record = apply_recipe(model, parse_recipe(f"prune-heads:ratio=0.5,score={score}+prune-ffn:ratio=0.25,"
                                                      f"score={score}"), ctx)
    heads, neurons = record[0]["state"]["heads"], record[1]["state"]["neurons"]
    for site in head_sites(pruned):
        assert site.n_heads == 2 and site.q.get().out_features == 48 and site.o.get().in_features == 48
    for site in ffn_sites(pruned):
        assert site.fc1.get().out_features == 144 and site.fc2.get().in_features == 144
    assert n_params(pruned) < before
    # masks on the full model: zero removed heads (input of o) and removed neurons (input of fc2)
    hooks = []
    for site in head_sites(full):
        keep = torch.zeros(96, dtype=torch.bool)
        keep[head_index(heads[site.name], site.head_dim)] = True
        hooks.append(site.o.get().register_forward_pre_hook(lambda m, a, k=keep: (a[0] * k,)))
    # which neurons survived: compare fc1 rows of the pruned model with the full one
    for fs, ps in zip(ffn_sites(full), ffn_sites(pruned), strict=True):
        w_full, w_kept = fs.fc1.get().weight, ps.fc1.get().weight
        idx = [int((w_full == row).all(1).nonzero()[0]) for row in w_kept]
        assert len(idx) == neurons[fs.name]
        keep = torch.zeros(192, dtype=torch.bool)
        keep[idx] = True
        hooks.append(fs.fc2.get().register_forward_pre_hook(lambda m, a, k=keep: (a[0] * k,)))
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), full(x), rtol=1e-5, atol=1e-5)


def test_activation_score_keeps_the_heads_that_matter():
    """A head whose output projection is zeroed contributes nothing: it must be the one removed."""
    model = build_builtin("vit-tiny")
    with torch.no_grad():
        for site in head_sites(model):
            site.o.get().weight[:, 24:48] = 0  # head 1 of 4 (head_dim 24)
    from slimformer.compress.recipe import apply_recipe, parse_recipe

    _, record = apply_recipe(model, parse_recipe("prune-heads:ratio=0.25"), StepContext(calib=vit_calib()))
    assert all(kept == [0, 2, 3] for kept in record[0]["state"]["heads"].values())


@pytest.mark.parametrize("family", ["reference-encoder", "hf-bert", "hf-vit"])
def test_save_load_identical(tmp_path, family):
    if family == "hf-bert":
        model, inputs = tiny_bert(), bert_inputs()
    elif family == "hf-vit":
        model, inputs = tiny_hf_vit(), vit_inputs()
    else:
        from slimformer.models import EncoderConfig, build_model

        model = build_model("encoder", EncoderConfig(vocab_size=100, max_len=16, d_model=32, n_layers=2, n_heads=4,
                                                     d_ff=64))
        ids, mask = bert_inputs()
        inputs = (ids, mask.bool())
    before = n_params(model)
    pruned, record = compress_model(model, "prune-heads:ratio=0.5+prune-ffn:ratio=0.5")
    assert n_params(pruned) < before
    assert all(site.n_heads == 2 and site.q.get().out_features == 16 for site in head_sites(pruned))
    with torch.no_grad():
        expected = out_tensor(pruned(*inputs))
    loaded = io.load_model_dir(io.save_model(pruned, tmp_path / "m", recipe=record))
    assert all(site.n_heads == 2 for site in head_sites(loaded))
    with torch.no_grad():
        assert torch.equal(out_tensor(loaded(*inputs)), expected)


def test_real_minilm_prunes_and_reloads(tmp_path):
    model = io.load("minilm")
    ids, mask = bert_inputs(seq=16)
    ids = ids + 1000
    calib = lambda: iter([(ids, mask)])  # noqa: E731
    from slimformer.compress.recipe import apply_recipe, parse_recipe

    before = n_params(model)
    pruned, record = apply_recipe(model, parse_recipe("prune-heads:ratio=0.25+prune-ffn:ratio=0.25,multiple_of=16"),
                                  StepContext(calib=calib))
    assert n_params(pruned) < 0.93 * before
    assert all(s.n_heads == 9 and s.q.get().out_features == 288 for s in head_sites(pruned))
    assert all(s.fc1.get().out_features == 1152 for s in ffn_sites(pruned))
    with torch.no_grad():
        expected = pruned(ids, mask).last_hidden_state
    loaded = io.load_model_dir(io.save_model(pruned, tmp_path / "m", recipe=record))
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).last_hidden_state, expected)


def test_errors_name_option_and_order():
    with pytest.raises(SlimformerError, match=r"'ratio' of step 'prune-heads' must be in \[0, 1\), got 1.0"):
        compress_model(build_builtin("vit-tiny"), "prune-heads:ratio=1")
    with pytest.raises(SlimformerError, match="put 'prune-ffn' before"):
        compress_model(build_builtin("vit-tiny"), "lowrank:rank=8,layers=mlp+prune-ffn:ratio=0.5")
