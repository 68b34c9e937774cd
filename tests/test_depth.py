"""Depth pruning (`prune-layers`): it removes the blocks that change the hidden states least, the
pruned model equals running only the kept blocks, and a saved model dir reloads identically."""

import pytest
import torch
from hf_tiny import bert_inputs, tiny_bert, tiny_hf_vit, vit_inputs

from slimformer import io
from slimformer.api import compress_model
from slimformer.compress.prune_layers import block_list
from slimformer.compress.recipe import apply_recipe, parse_recipe
from slimformer.compress.registry import StepContext
from slimformer.errors import SlimformerError
from slimformer.models import ViTConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def small_vit():
    torch.manual_seed(0)
    return build_model("vit", ViTConfig(image_size=16, patch_size=4, in_channels=1, n_classes=10, d_model=32,
                                        n_layers=4, n_heads=4, d_ff=64)).eval()


def calib():
    g = torch.Generator().manual_seed(3)
    return lambda: iter([(torch.randn(8, 1, 16, 16, generator=g),) for _ in range(2)])


def silence(block) -> None:
    """Make a block an exact identity: both residual branches output zero."""
    for linear in (block.attn.o, block.mlp.fc2):
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)


def test_removes_the_blocks_that_change_least_and_output_is_unchanged():
    model = small_vit()
    silence(model.blocks[1])
    silence(model.blocks[3])
    images = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        expected = model(images)
    kept = [model.blocks[0], model.blocks[2]]
    pruned, record = apply_recipe(model, parse_recipe("prune-layers:ratio=0.5"), StepContext(calib=calib()))
    assert record[0]["state"]["removed"] == [1, 3]
    assert list(pruned.blocks) == kept
    with torch.no_grad():
        assert torch.allclose(pruned(images), expected, atol=1e-6)


@pytest.mark.parametrize("family", ["vit", "hf-bert", "hf-vit"])
def test_save_load_identical_and_tokens_follow(tmp_path, family):
    model, inputs = {"vit": (small_vit(), (torch.randn(3, 1, 16, 16),)), "hf-bert": (tiny_bert(), bert_inputs()),
                     "hf-vit": (tiny_hf_vit(), vit_inputs())}[family]
    n = len(block_list(model))
    recipe = "prune-layers:ratio=0.5" + ("+tome:r=2" if family == "vit" else "")
    pruned, record = compress_model(model, recipe)
    assert len(block_list(pruned)) == n - round(n * 0.5)
    with torch.no_grad():
        expected = pruned(*inputs)
    loaded = io.load_model_dir(io.save_model(pruned, tmp_path / "m", recipe=record))
    assert len(block_list(loaded)) == len(block_list(pruned))
    with torch.no_grad():
        got = loaded(*inputs)
    expected, got = (x if torch.is_tensor(x) else x[0] for x in (expected, got))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("recipe, words", [("prune-layers:ratio=0", "'ratio'"), ("prune-layers:ratio=1", "'ratio'"),
                                           ("prune-layers:ratio=0.05", "removes none")])
def test_bad_ratio_names_the_option(recipe, words):
    with pytest.raises(SlimformerError, match=words):
        compress_model(small_vit(), recipe)


def test_order_and_unknown_models_are_refused():
    with pytest.raises(SlimformerError, match="before token merging"):
        compress_model(small_vit(), "tome:r=2+prune-layers:ratio=0.25")
    with pytest.raises(SlimformerError, match="Sequential is not a layout slimformer knows; supported: slimformer ViT"):
        compress_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "prune-layers:ratio=0.5")


def test_saved_state_is_checked(tmp_path):
    pruned, record = compress_model(small_vit(), "prune-layers:ratio=0.25")
    record[0]["state"]["removed"] = [0, 1, 2, 3]
    with pytest.raises(SlimformerError, match="'removed'"):
        io.load_model_dir(io.save_model(pruned, tmp_path / "m", recipe=record))
